// Python's multiprocessing.process: Process.
#pragma once

#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "context.hpp"
#include "detail/callable.hpp"
#include "detail/popen_fork.hpp"
#include "detail/process_state.hpp"
#include "detail/remote_exception.hpp"
#include "errors.hpp"

namespace multiprocessing {

class Process {
public:
    // For subclasses that override run().
    Process() : Process(Unnamed{}) {}

    // Process(target=f, args=(args...)). The target and the arguments are checked at
    // compile time: they must be able to cross a process boundary (see API.md).
    template <class F, class... Args>
        requires(!std::is_base_of_v<Process, std::decay_t<F>>)
    explicit Process(F&& target, Args&&... args) : Process(Unnamed{}) {
        using Fn = detail::stored_callable_t<F>;
        detail::require_transferable_callable<Fn>();
        (detail::require_process_argument<detail::stored_arg_t<Args>>(), ...);
        static_assert(std::is_invocable_v<Fn&, detail::stored_arg_t<Args>&...>,
                      "multiprocessing::Process: the target cannot be called with these arguments");
        target_ = [fn = Fn(std::forward<F>(target)),
                   stored = std::tuple<detail::stored_arg_t<Args>...>(std::forward<Args>(args)...)]() mutable {
            std::apply([&](auto&... a) { std::invoke(fn, a...); }, stored);
        };
    }

    Process(Process&&) noexcept = default;
    Process& operator=(Process&&) noexcept = default;
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;
    // Does not stop the process: a non-daemon child is still joined at exit.
    virtual ~Process() = default;

    // What the child runs; by default the target with its arguments.
    virtual void run() {
        if (target_) target_();
    }

    void start() {
        check_open();
        if (child_) throw ValueError("Process.start: cannot start a process twice");
        if (current_process().daemon())
            throw ValueError("Process.start: daemonic processes are not allowed to have children");
        detail::ForkOptions options{name_, daemon_, identity_, false};
        const pid_t pid = detail::fork_child(std::move(options), [this] { return bootstrap(); });
        child_ = std::make_shared<detail::ChildRecord>(pid, name_, daemon_);
        detail::register_child(child_);
    }

    void join() {
        check_started("join");
        child_->wait(std::nullopt);
        detail::forget_child(child_.get());
    }
    // Waits at most `timeout`; returns whether the process has exited.
    bool join(Timeout timeout) {
        check_started("join");
        if (!child_->wait(timeout.count())) return false;
        detail::forget_child(child_.get());
        return true;
    }

    bool is_alive() {
        check_open();
        if (!child_) return false;
        return !child_->poll_exitcode().has_value();
    }

    void terminate() { send(SIGTERM, "terminate"); }
    void kill() { send(SIGKILL, "kill"); }

    // Releases the resources of a finished process; any later use throws ValueError.
    void close() {
        if (closed_) return;
        if (child_ && !child_->poll_exitcode())
            throw ValueError("Process.close: cannot close a process while it is still running; "
                             "join() or terminate() it first");
        if (child_) detail::forget_child(child_.get());
        child_.reset();
        closed_ = true;
    }

    std::optional<pid_t> pid() const {
        check_open();
        if (!child_) return std::nullopt;
        return child_->pid();
    }

    // Empty while running (or before start); 0 ok; 1 when the target threw; -N when
    // killed by signal N.
    std::optional<int> exitcode() {
        check_open();
        if (!child_) return std::nullopt;
        return child_->poll_exitcode();
    }

    // An fd that becomes readable when the process exits (a pidfd).
    int sentinel() const {
        check_started("sentinel");
        return child_->pidfd();
    }

    const std::string& name() const noexcept { return name_; }
    void set_name(std::string name) { name_ = std::move(name); }
    bool daemon() const noexcept { return daemon_; }
    void set_daemon(bool daemon) {
        if (child_) throw ValueError("Process.set_daemon: the process has already started");
        daemon_ = daemon;
    }

private:
    struct Unnamed {};
    explicit Process(Unnamed) : identity_(detail::next_child_identity()) {
        name_ = "Process-" + detail::identity_suffix(identity_);
        daemon_ = current_process().daemon();
    }

    // In the child: run() and turn its outcome into an exit code, as Python does.
    int bootstrap() {
        try {
            run();
            return 0;
        } catch (...) {
            auto info = detail::describe_current_exception();
            detail::flush_standard_streams();
            std::fprintf(stderr, "Process %s:\n%s: %s\n", name_.c_str(), info.type.c_str(), info.what.c_str());
            std::fflush(stderr);
            return 1;
        }
    }

    void send(int sig, const char* what) {
        check_open();
        if (!child_) throw ValueError(std::string("Process.") + what + ": the process has not been started");
        child_->signal(sig);
    }
    void check_open() const {
        if (closed_) throw ValueError("process object is closed");
    }
    void check_started(const char* what) const {
        check_open();
        if (!child_)
            throw ValueError(std::string("Process.") + what + ": can only be used on a started process");
    }

    std::function<void()> target_;  // type-checked at construction; lives in the parent
    std::string name_;
    bool daemon_ = false;
    bool closed_ = false;
    std::vector<int> identity_;
    std::shared_ptr<detail::ChildRecord> child_;
};

// Context's factory for processes (declared in context.hpp).
template <class F, class... A>
auto Context::Process(F&& target, A&&... args) const {
    return multiprocessing::Process(std::forward<F>(target), std::forward<A>(args)...);
}

}  // namespace multiprocessing
