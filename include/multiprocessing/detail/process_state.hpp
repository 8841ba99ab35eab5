// The per-process global state that Python's multiprocessing also has: who this process
// is, who its parent is, and which children it started. Nothing else is global.
#pragma once

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <poll.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../errors.hpp"
#include "deadline.hpp"

namespace multiprocessing {

// What current_process(), parent_process() and active_children() describe.
class ProcessInfo {
public:
    ProcessInfo() = default;
    ProcessInfo(std::string name, pid_t pid, bool daemon) : name_(std::move(name)), pid_(pid), daemon_(daemon) {}
    const std::string& name() const noexcept { return name_; }
    pid_t pid() const noexcept { return pid_; }
    bool daemon() const noexcept { return daemon_; }

private:
    std::string name_;
    pid_t pid_ = 0;
    bool daemon_ = false;
};

}  // namespace multiprocessing

namespace multiprocessing::detail {

inline int pidfd_open(pid_t pid) noexcept { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// One started child: its pid, and its exit status once known. Shared by the Process
// handle that started it and the registry of children, so either may reap it.
//
// A child of this process is reaped with waitpid. A child the fork server made for us
// is the server's child, which reaps it and writes its wait status (an int) to a pipe
// whose read end is `status_fd`; it is still ours to signal and to poll with a pidfd,
// which the server opened (`pidfd`) while the child could not yet have been reaped.
class ChildRecord {
public:
    ChildRecord(pid_t pid, std::string name, bool daemon, int status_fd = -1, int pidfd = -1)
        : pid_(pid),
          pidfd_(pidfd >= 0 ? pidfd : pidfd_open(pid)),
          status_fd_(status_fd),
          info_(std::move(name), pid, daemon) {}
    ChildRecord(const ChildRecord&) = delete;
    ChildRecord& operator=(const ChildRecord&) = delete;
    ~ChildRecord() {
        if (pidfd_ >= 0) ::close(pidfd_);
        if (status_fd_ >= 0) ::close(status_fd_);
    }

    pid_t pid() const noexcept { return pid_; }
    int pidfd() const noexcept { return pidfd_; }
    const ProcessInfo& info() const noexcept { return info_; }

    // The raw wait status once it has exited (reaping it), else empty.
    std::optional<int> poll_status(bool block = false) {
        std::lock_guard lock(mutex_);
        if (status_) return status_;
        if (status_fd_ >= 0) return read_reported_status(block);
        int status = 0;
        pid_t r;
        do {
            r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
        } while (r < 0 && errno == EINTR);
        if (r == pid_) {
            status_ = status;
        } else if (r < 0 && errno == ECHILD) {
            // Reaped elsewhere (someone called waitpid(-1)): the status is lost.
            status_ = lost_status;
        }
        return status_;
    }

    // The exit code in Python's convention (-N for signal N), reaping if it has exited.
    std::optional<int> poll_exitcode(bool block = false) {
        const auto status = poll_status(block);
        if (!status) return std::nullopt;
        return WIFSIGNALED(*status) ? -WTERMSIG(*status) : WEXITSTATUS(*status);
    }

    // Waits for the exit, at most `timeout` seconds (none: forever). True if it exited.
    bool wait(std::optional<double> timeout) {
        if (poll_status()) return true;
        if (!timeout) return poll_status(/*block=*/true).has_value();
        const int fd = status_fd_ >= 0 ? status_fd_ : pidfd_;
        if (fd >= 0) {
            // One deadline for the whole wait: a handled signal (EINTR) must not restart it.
            pollfd p{fd, POLLIN, 0};
            (void)poll_until(&p, 1, Deadline(std::chrono::duration<double>(*timeout)));
        }
        return poll_status().has_value();
    }

    void signal(int sig) {
        std::lock_guard lock(mutex_);
        // Only signal a pid we have not reaped: after reaping, the number may be reused.
        // Through the pidfd when there is one: a fork-server child is reaped by the
        // server, unseen by status_, and its pid may already name another process.
        if (status_) return;
        if (pidfd_ >= 0)
            (void)::syscall(SYS_pidfd_send_signal, pidfd_, sig, nullptr, 0);
        else
            ::kill(pid_, sig);
    }

private:
    // As if it exited with 255: what is reported when the real status cannot be known.
    static constexpr int lost_status = 255 << 8;

    // mutex_ held.
    std::optional<int> read_reported_status(bool block) {
        pollfd p{status_fd_, POLLIN, 0};
        int r;
        do {
            r = ::poll(&p, 1, block ? -1 : 0);
        } while (r < 0 && errno == EINTR);
        if (r <= 0) return std::nullopt;
        int status = 0;
        ssize_t n;
        do {
            n = ::read(status_fd_, &status, sizeof status);
        } while (n < 0 && errno == EINTR);
        // A short read or EOF: the server died before it could report.
        status_ = n == static_cast<ssize_t>(sizeof status) ? status : lost_status;
        return status_;
    }

    pid_t pid_;
    int pidfd_;
    int status_fd_;
    ProcessInfo info_;
    std::mutex mutex_;
    std::optional<int> status_;  // the raw wait status
};

struct ProcessState {
    std::mutex mutex;
    ProcessInfo current{"MainProcess", ::getpid(), false};
    std::optional<ProcessInfo> parent;
    std::vector<int> identity;        // Python's _identity: (1,), (1, 2), ...
    int next_child_number = 1;        // the counter behind "Process-N"
    std::vector<std::shared_ptr<ChildRecord>> children;
    bool exit_hook_installed = false;
    // Run when this process exits normally (returns from main, exit(), or a child's
    // target returns), not when it is killed: see add_normal_exit_action().
    std::vector<void (*)()> normal_exit_actions;
    // The program's key (Python's current_process().authkey): drawn once in the main
    // process, inherited by every child (a spawned one gets it through its bootstrap).
    // A Manager given no authkey uses it, and a proxy that arrives in a message for a
    // server this process has no connection to is presented with it.
    std::string authkey = draw_process_authkey();

private:
    static std::string draw_process_authkey() {
        std::string key(32, '\0');
        for (std::size_t done = 0; done < key.size();) {
            const ssize_t n = ::getrandom(key.data() + done, key.size() - done, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) throw std::system_error(errno, std::generic_category(), "getrandom (the program's authkey)");
            done += static_cast<std::size_t>(n);
        }
        return key;
    }
};

inline ProcessState& process_state() {
    // Deliberately leaked: it must outlive every static destructor and atexit handler
    // that might still look at the children.
    static ProcessState* state = new ProcessState;
    return *state;
}
// Drawn before main(), so a child forked by any thread inherits the same key.
inline const bool process_state_made_before_main = (process_state(), true);

// Python's _exit_function: terminate daemonic children, then join the others.
inline void finish_children() {
    std::vector<std::shared_ptr<ChildRecord>> children;
    {
        auto& st = process_state();
        std::lock_guard lock(st.mutex);
        children.swap(st.children);
    }
    for (auto& c : children)
        if (c->info().daemon()) c->signal(SIGTERM);
    for (auto& c : children) c->wait(std::nullopt);
}

inline void run_normal_exit_actions() noexcept {
    std::vector<void (*)()> actions;
    {
        auto& st = process_state();
        std::lock_guard lock(st.mutex);
        actions = st.normal_exit_actions;
    }
    for (auto action : actions) action();
}

inline void install_exit_hook() {
    auto& st = process_state();
    std::lock_guard lock(st.mutex);
    if (st.exit_hook_installed) return;
    st.exit_hook_installed = true;
    std::atexit([] {
        finish_children();
        run_normal_exit_actions();
    });
}

// Something shared objects must settle when a process ends by exiting rather than by
// being killed (e.g. forget which semaphore units it holds: units kept to the end of a
// normal exit were consumed, not left behind by a crash).
inline void add_normal_exit_action(void (*action)()) {
    install_exit_hook();
    auto& st = process_state();
    std::lock_guard lock(st.mutex);
    if (std::find(st.normal_exit_actions.begin(), st.normal_exit_actions.end(), action) ==
        st.normal_exit_actions.end())
        st.normal_exit_actions.push_back(action);
}

// The next default name suffix ("1", "1:2", ...) for a child of this process.
inline std::vector<int> next_child_identity() {
    auto& st = process_state();
    std::lock_guard lock(st.mutex);
    std::vector<int> id = st.identity;
    id.push_back(st.next_child_number++);
    return id;
}

inline std::string identity_suffix(const std::vector<int>& id) {
    std::string s;
    for (std::size_t i = 0; i < id.size(); ++i) s += (i ? ":" : "") + std::to_string(id[i]);
    return s;
}

inline void register_child(std::shared_ptr<ChildRecord> child) {
    install_exit_hook();
    auto& st = process_state();
    std::lock_guard lock(st.mutex);
    st.children.push_back(std::move(child));
}

// A joined child needs no joining at exit (Python's join discards it from _children).
inline void forget_child(const ChildRecord* child) {
    auto& st = process_state();
    std::lock_guard lock(st.mutex);
    std::erase_if(st.children, [&](const auto& c) { return c.get() == child; });
}

// Right after fork(), in the child: it is now `name`, its parent is the old current
// process, and it has no children yet.
inline void become_child(std::string name, bool daemon, std::vector<int> identity) {
    auto& st = process_state();
    // The fork may have happened while another thread held the mutex: rebuild it.
    new (&st.mutex) std::mutex;
    st.parent = st.current;
    st.current = ProcessInfo(std::move(name), ::getpid(), daemon);
    st.identity = std::move(identity);
    st.next_child_number = 1;
    st.children.clear();
}

inline void flush_standard_streams() noexcept {
    try {
        std::cout.flush();
        std::cerr.flush();
        std::clog.flush();
    } catch (...) {
    }
    std::fflush(nullptr);
}

// How a child ends: its own children are finished as Python finishes them, streams are
// flushed, and no atexit handler or static destructor of the parent's runs twice.
[[noreturn]] inline void exit_child(int code) noexcept {
    try {
        finish_children();
    } catch (...) {
    }
    run_normal_exit_actions();
    flush_standard_streams();
    ::_exit(code);
}

}  // namespace multiprocessing::detail
