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
#include "detail/forkserver.hpp"
#include "detail/popen_spawn.hpp"
#include "detail/process_state.hpp"
#include "detail/remote_exception.hpp"
#include "errors.hpp"
#include "functools.hpp"  // mp::partial
#include "util.hpp"

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
        Fn fn(std::forward<F>(target));
        std::tuple<detail::stored_arg_t<Args>...> stored(std::forward<Args>(args)...);
        // Encoded at start(), and only for the spawn and forkserver methods.
        portable_target_ = [fn, stored] {
            return std::apply([&](const auto&... a) { return detail::make_portable_call(0, fn, a...); }, stored);
        };
        target_ = [fn, stored]() mutable { std::apply([&](auto&... a) { std::invoke(fn, a...); }, stored); };
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
        detail::require_takeover("Process.start");
        const auto method = detail::parse_start_method(start_method_ ? *start_method_ : get_start_method());
        detail::ForkOptions options{name_, daemon_, identity_, false};
        pid_t pid = 0;
        int status_fd = -1;  // a fork server child's exit status arrives there
        int pidfd = -1;      // and the pidfd the server opened for it
        if (method == detail::StartMethod::fork) {
            pid = detail::fork_child(std::move(options), [this] { return report_outcome([this] { run(); }); });
        } else {
            const detail::PortableCall call = portable_target_ ? portable_target_() : detail::PortableCall{};
            if (!call)
                throw ValueError("Process.start: this process cannot be started by the '" +
                                 detail::start_method_name(method) +
                                 "' start method: a Process subclass that overrides run() lives in this "
                                 "process's memory, which a fresh process does not share; give it a target "
                                 "function, or use fork");
            const auto payload = detail::encode_values(call.runner, call.payload);
            const auto fds = call.fds.numbers();  // the handles among the arguments
            const auto child =
                detail::start_fresh_child(method, options, detail::address_of_code(&spawned_main), payload, fds);
            pid = child.pid;
            status_fd = child.status_fd;
            pidfd = child.pidfd;
        }
        child_ = std::make_shared<detail::ChildRecord>(pid, name_, daemon_, status_fd, pidfd);
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

    // In the child: runs its body and turns the outcome into an exit code, as Python does.
    template <class Body>
    static int report_outcome(Body&& body) {
        try {
            get_logger().info("child process calling self.run()");
            body();
            get_logger().info("process exiting with exitcode 0");
            return 0;
        } catch (...) {
            auto info = detail::describe_current_exception();
            detail::flush_standard_streams();
            std::fprintf(stderr, "Process %s:\n%s: %s\n", current_process().name().c_str(), info.type.c_str(),
                         info.what.c_str());
            std::fflush(stderr);
            get_logger().info("process exiting with exitcode 1");
            return 1;
        }
    }

    // A spawned child's entry (see detail::spawn_child): the target and its arguments.
    static int spawned_main(detail::ByteReader& in) {
        detail::PortableCall target;
        target.runner = detail::get<detail::code_address>(in);
        target.payload = detail::get<std::vector<std::byte>>(in);
        return report_outcome([&] {
            detail::ByteReader call(target.payload);
            detail::code_at<void(detail::ByteReader&)>(target.runner)(call);
        });
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

    friend class Context;

    std::function<void()> target_;  // type-checked at construction; lives in the parent
    std::function<detail::PortableCall()> portable_target_;  // the same, encoded for a spawned child
    std::optional<std::string> start_method_;  // set by Context::Process; else the default at start()
    std::string name_;
    bool daemon_ = false;
    bool closed_ = false;
    std::vector<int> identity_;
    std::shared_ptr<detail::ChildRecord> child_;
};

// Context's factory for processes (declared in context.hpp).
template <class F, class... A>
auto Context::Process(F&& target, A&&... args) const {
    multiprocessing::Process p(std::forward<F>(target), std::forward<A>(args)...);
    p.start_method_ = method_;
    return p;
}

}  // namespace multiprocessing
