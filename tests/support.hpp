// Helpers shared by the test programs (test_pool, test_process, faults/test_pool_faults).
//
// Each test file is its own Catch2 program, so these are `inline` and live in namespace
// mp_test; a file pulls in the ones it uses with using-declarations. Helpers that only
// one file needs stay in that file.
#pragma once

#include <catch2/catch.hpp>

#include <multiprocessing.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstdio>
#include <sstream>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <fstream>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
#include <utility>

// A failed check inside a child process: the child's exit code becomes 1 (the library
// prints the message on the child's stderr), which the parent's join check sees. In the
// parent itself (some tests run the same functions there) Catch2 reports it as an
// unexpected exception.
#define CHILD_REQUIRE(cond)                                                                          \
    do {                                                                                             \
        if (!(cond))                                                                                 \
            throw std::runtime_error(std::string(__FILE__ ":") + std::to_string(__LINE__) +         \
                                     ": check failed: " #cond);                                      \
    } while (0)

namespace mp_test {

// A pipe created before start() / before the Pool: forked children inherit it, so it is
// how a child reports back or how the parent gates a blocked task. Closes both ends on
// scope exit so that a failing test leaks no fds (the fault tests count them).
struct Pipe {
    int r = -1, w = -1;
    Pipe() {
        int fds[2];
        REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
        r = fds[0];
        w = fds[1];
    }
    ~Pipe() {
        if (r >= 0) ::close(r);
        if (w >= 0) ::close(w);
    }
    Pipe(const Pipe&) = delete;
    Pipe& operator=(const Pipe&) = delete;
    // Lets n tasks blocked on reading one byte from `r` go (parent side only).
    void release(int n = 1) {
        for (int i = 0; i < n; ++i) {
            char c = 'g';
            REQUIRE(::write(w, &c, 1) == 1);
        }
    }
    // Closes the parent's write end so that readers see EOF once the children's copies go.
    void close_write() {
        if (w >= 0) ::close(w);
        w = -1;
    }
};

// One end of such a pipe as a Process argument: a fork child inherits the fd; a child
// started by spawn or forkserver is given it (the library's reduction, as for a Pipe
// end), under whatever number it gets there. So the tests that report through raw pipes
// run under every start method. Converts to the fd, for put_int() and the like.
struct ChildFd {
    static constexpr bool is_process_shared_handle = true;
    int fd = -1;
    operator int() const noexcept { return fd; }

    struct reduced_type {
        std::int32_t fd;
    };
    reduced_type reduce(multiprocessing::detail::PassedFds& fds) const { return {fds.add(fd)}; }
    static ChildFd rebuild(const reduced_type& r) { return {r.fd}; }
};

// Writes all n bytes, retrying on EINTR and short writes. Plain POSIX, no Catch2 macro:
// safe to call in a forked child.
inline void put_bytes(int fd, const void* data, std::size_t n) {
    auto* p = static_cast<const char*>(data);
    while (n > 0) {
        ssize_t k = ::write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += k;
        n -= static_cast<std::size_t>(k);
    }
}

// How a child (or a pool task) reports a number to the parent; safe in a child.
inline void put_int(int fd, std::int64_t v) { put_bytes(fd, &v, sizeof v); }

// Parent side: reads one put_int() value, or std::nullopt on EOF or when nothing arrives
// within `timeout` (per poll), so that a dead or stuck child fails a check, not hangs.
inline std::optional<std::int64_t> get_int(
    int fd, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    std::int64_t v = 0;
    char* p = reinterpret_cast<char*>(&v);
    std::size_t n = sizeof v;
    while (n > 0) {
        pollfd pf{fd, POLLIN, 0};
        int r = ::poll(&pf, 1, static_cast<int>(timeout.count()));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return std::nullopt;
        ssize_t k = ::read(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return std::nullopt;
        p += k;
        n -= static_cast<std::size_t>(k);
    }
    return v;
}

// Elapsed seconds since t0, for the "finished within N s" / "took at least N s" checks.
template <class Clock = std::chrono::steady_clock>
double seconds_since(typename Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Gone: no such process, or a zombie (it has exited and its exit is final; only a wait()
// is left, which someone else may do). Used to check that a child or worker really died.
inline bool pid_gone(pid_t pid) {
    if (::kill(pid, 0) == -1 && errno == ESRCH) return true;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    if (!stat) return true;
    std::string line;
    std::getline(stat, line);
    auto close_paren = line.rfind(')');
    if (close_paren == std::string::npos || close_paren + 2 >= line.size()) return true;
    char state = line[close_paren + 2];
    return state == 'Z' || state == 'X';
}

// Polls pid_gone() every 10 ms until it holds or `timeout` passes: deaths are
// asynchronous, and a test must fail rather than hang when one does not happen.
inline bool wait_gone(pid_t pid, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (pid_gone(pid)) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return pid_gone(pid);
}

// Kills and joins a child that a failing test left running, so that a failure is a
// failure and not a hang at exit (non-daemon children are joined at exit).
inline void kill_if_alive(multiprocessing::Process& p) noexcept {
    try {
        if (p.is_alive()) {
            p.kill();
            p.join();
        }
    } catch (...) {
    }
}

struct Reaper {
    multiprocessing::Process& p;
    ~Reaper() { kill_if_alive(p); }
};

// The children of one test, started as they are added; whatever is still running when
// the test ends (a failing test) is killed and reaped.
class Children {
public:
    explicit Children(bool daemon = false) : daemon_(daemon) {}
    Children(const Children&) = delete;
    Children& operator=(const Children&) = delete;
    ~Children() {
        for (auto& p : procs_) kill_if_alive(p);
    }

    template <class F, class... A>
    multiprocessing::Process& start(F&& f, A&&... args) {
        auto& p = procs_.emplace_back(std::forward<F>(f), std::forward<A>(args)...);
        p.set_daemon(daemon_);
        p.start();
        return p;
    }
    multiprocessing::Process& operator[](std::size_t i) { return procs_[i]; }
    std::size_t size() const noexcept { return procs_.size(); }

    // Every child exits within `timeout`, with exit code 0 (its checks passed).
    void join_all(multiprocessing::Timeout timeout = std::chrono::seconds(20)) {
        for (auto& p : procs_) {
            REQUIRE(p.join(timeout));
            CHECK(p.exitcode() == 0);
        }
    }
    // The same as a value, saying what went wrong: true if every child ended with 0.
    bool join_all_ok(multiprocessing::Timeout timeout = std::chrono::seconds(30)) {
        bool ok = true;
        for (auto& p : procs_) {
            if (!p.join(timeout)) {
                UNSCOPED_INFO("a child did not end within the timeout");
                ok = false;
            } else if (p.exitcode() != 0) {
                UNSCOPED_INFO("a child ended with exit code " << p.exitcode().value_or(-999));
                ok = false;
            }
        }
        return ok;
    }

private:
    bool daemon_;
    std::deque<multiprocessing::Process> procs_;  // a deque: references stay valid as it grows
};

// Points fd 2 (a child inherits it) at a temporary file, not a terminal, until stop()
// or the end of the scope. text() reads what was written so far; stop() ends the capture
// and gives it all.
class StderrCapture {
public:
    StderrCapture() {
        fd_ = ::mkstemp(path_);
        REQUIRE(fd_ >= 0);
        std::fflush(stderr);
        saved_ = ::dup(STDERR_FILENO);
        REQUIRE(saved_ >= 0);
        REQUIRE(::dup2(fd_, STDERR_FILENO) == STDERR_FILENO);
    }
    StderrCapture(const StderrCapture&) = delete;
    StderrCapture& operator=(const StderrCapture&) = delete;
    ~StderrCapture() {
        restore();
        ::unlink(path_);
    }

    // What has been written so far (the capture goes on).
    std::string text() const {
        std::ifstream in(path_);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }
    // Waits until the captured text contains `what` (log lines of other processes arrive
    // asynchronously); false if it does not within `timeout`.
    bool wait_for(const std::string& what,
                  std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) const {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (text().find(what) == std::string::npos) {
            if (std::chrono::steady_clock::now() > deadline) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return true;
    }
    std::string stop() {
        restore();
        return text();
    }

private:
    void restore() {
        if (saved_ < 0) return;
        std::fflush(stderr);
        ::dup2(saved_, STDERR_FILENO);
        ::close(saved_);
        ::close(fd_);
        saved_ = -1;
    }
    char path_[32] = "/tmp/mp_test_stderr_XXXXXX";
    int fd_ = -1;
    int saved_ = -1;
};


// Item types the tests send around: a trivially copyable struct (copied as bytes) and
// one with a cereal serialize() (copied through the codec).
struct Point {
    double x, y;
    bool operator==(const Point&) const = default;
};

struct Record {
    std::string name;
    std::vector<double> values;
    int id = 0;
    template <class A>
    void serialize(A& ar) {
        ar(name, values, id);
    }
    bool operator==(const Record&) const = default;
};

// Daemon children; any still running when the test ends (passing or not) are killed.
struct DaemonChildren : Children {
    DaemonChildren() : Children(/*daemon=*/true) {}
};

// True if f() throws an E (and nothing else).
template <class E, class F>
bool throws_as(F&& f) {
    try {
        f();
    } catch (const E&) {
        return true;
    } catch (...) {
        return false;
    }
    return false;
}

// ---- waiting on code that might hang ---------------------------------------------------

// f() running on its own thread; wait(timeout) gives nullopt while it runs (and leaves
// it running, detached, if the test gives up: f must own what it touches), else what it
// threw (null if it returned). So a library bug that hangs fails the test instead.
class Async {
public:
    template <class F>
    explicit Async(F f) : state_(std::make_shared<State>()) {
        std::thread([state = state_, f = std::move(f)]() mutable {
            std::exception_ptr error;
            try {
                f();
            } catch (...) {
                error = std::current_exception();
            }
            std::lock_guard g(state->m);
            state->error = error;
            state->done = true;
            state->cv.notify_all();
        }).detach();
    }
    std::optional<std::exception_ptr> wait(std::chrono::milliseconds timeout) {
        std::unique_lock lock(state_->m);
        if (!state_->cv.wait_for(lock, timeout, [&] { return state_->done; })) return std::nullopt;
        return state_->error;
    }

private:
    struct State {
        std::mutex m;
        std::condition_variable cv;
        bool done = false;
        std::exception_ptr error;
    };
    std::shared_ptr<State> state_;
};

template <class F>
std::optional<std::exception_ptr> run_within(std::chrono::milliseconds timeout, F f) {
    return Async(std::move(f)).wait(timeout);
}

template <class E>
bool is_a(const std::exception_ptr& e) {
    if (!e) return false;
    try {
        std::rethrow_exception(e);
    } catch (const E&) {
        return true;
    } catch (...) {
        return false;
    }
}

inline std::string what_of(const std::exception_ptr& e) {
    if (!e) return "(returned normally)";
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return x.what();
    } catch (...) {
        return "(not a std::exception)";
    }
}

}  // namespace mp_test
