// Python's multiprocessing.dummy: the same API as the rest of the library, on threads of
// this process.
//
//   mp::dummy::Process p([&](int n) { total += n; }, 5);   // any callable, captures by reference
//   p.start(); p.join();
//   mp::dummy::Queue<std::unique_ptr<Job>> q;               // any movable T, nothing is serialized
//   auto [a, b] = mp::dummy::Pipe<std::string>();
//
// Nothing crosses a process boundary, so nothing is encoded: a queue or a pipe moves the
// very objects it is given, and a target sees the caller's memory. Handles are still
// handles (a copy of a Queue, a Connection, a Value or an Array is the same object), so
// code written for mp:: ports by changing the namespace.
//
// Where a thread cannot do what a process does, or Python's dummy does something else,
// the difference is said at the class; the list is in the summary at the end of this file.
#pragma once

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "context.hpp"
#include "detail/deadline.hpp"
#include "detail/process_state.hpp"
#include "detail/remote_exception.hpp"
#include "detail/shared_object.hpp"
#include "errors.hpp"
#include "pool.hpp"
#include "synchronize.hpp"

namespace multiprocessing {

namespace detail {

// Sleeps on `cv` until pred() holds or the deadline passes; false if it passed first.
template <class Pred>
bool cv_wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, const Deadline& deadline,
                   Pred pred) {
    if (!deadline.timed()) {
        cv.wait(lock, pred);
        return true;
    }
    return cv.wait_until(lock, *deadline.at(), pred);
}

// ---- threads as processes ------------------------------------------------------------------

// A target and its arguments, type-erased. Unlike std::function it takes move-only
// callables and arguments (a lambda owning a unique_ptr), since nothing is copied.
class DummyCall {
public:
    virtual ~DummyCall() = default;
    virtual void operator()() = 0;
};

template <class F, class... A>
class DummyBoundCall final : public DummyCall {
public:
    template <class G, class... B>
    explicit DummyBoundCall(G&& fn, B&&... args) : fn_(std::forward<G>(fn)), args_(std::forward<B>(args)...) {}

    // The call happens once (Python's Thread.run drops the target after it), so the
    // stored arguments are handed over as rvalues when the target takes them that way
    // (a unique_ptr by value), and as lvalues otherwise (a target taking int& gets the
    // stored copy, as std::thread would refuse and mp::Process's child would allow).
    void operator()() override {
        std::apply(
            [this](auto&... a) {
                if constexpr (std::is_invocable_v<F&, A&&...>)
                    std::invoke(fn_, std::move(a)...);
                else
                    std::invoke(fn_, a...);
            },
            args_);
    }

private:
    F fn_;
    std::tuple<A...> args_;
};

// One dummy process: what its handle, its thread and the registry of started threads
// share. The handle may go away while the thread runs, so nothing here points back at it.
struct DummyThread {
    DummyThread(std::string thread_name, bool is_daemon) : name(std::move(thread_name)), daemon(is_daemon) {}
    DummyThread(const DummyThread&) = delete;
    DummyThread& operator=(const DummyThread&) = delete;
    ~DummyThread() {
        // Every started thread is joined before the registry lets go of it, or detached
        // at exit (a daemon still running) and kept there for ever; only a fork child
        // drops threads unjoined, its parent's, which do not exist in it.
        if (thread.joinable()) {
            if (creator == ::getpid())
                thread.detach();
            else
                new std::thread(std::move(thread));  // leaked: no thread to detach or join here
        }
        if (sentinel >= 0) ::close(sentinel);
    }

    std::mutex mutex;
    std::condition_variable changed;
    std::string name;        // guarded by mutex: set_name() may race with the thread reading it
    bool daemon;             // guarded by mutex; fixed once started
    bool started = false;    // guarded by mutex: start() was called
    bool running = false;    // guarded by mutex: the thread has begun (native_id is known)
    bool finished = false;   // guarded by mutex: the body has returned or thrown
    pid_t native_id = 0;     // guarded by mutex
    pid_t pid = 0;           // guarded by mutex; fixed once started
    std::uint64_t parent_token = 0;  // the starting thread (see dummy_thread_token); fixed once started
    std::unique_ptr<DummyCall> target;
    int sentinel = -1;       // an eventfd, written once finished; closed with this object
    const pid_t creator = ::getpid();

    std::mutex join_mutex;   // std::thread::join from two threads at once is undefined
    std::thread thread;      // guarded by join_mutex
};

// The DummyThread the calling thread runs, if it is one.
inline DummyThread*& current_dummy_thread() noexcept {
    thread_local DummyThread* self = nullptr;
    return self;
}

// A number naming the calling thread for as long as the program runs (a std::thread::id
// may be reused once its thread ends): active_children() lists the processes that the
// calling thread started, as Python's (whose current process is the current thread) does.
inline std::uint64_t dummy_thread_token() noexcept {
    // relaxed: the counter only hands out distinct numbers; nothing is published by it.
    static std::atomic<std::uint64_t> next{1};
    thread_local const std::uint64_t token = next.fetch_add(1, std::memory_order_relaxed);
    return token;
}

// Every started dummy process not yet joined: what the exit hook joins (Python's
// threading._shutdown) and what active_children() reaps.
struct DummyRegistry {
    std::mutex mutex;
    std::vector<std::shared_ptr<DummyThread>> threads;
    int next_number = 1;  // behind "Dummy-N"; guarded by mutex
};

inline DummyRegistry& dummy_registry() {
    // Leaked on purpose: daemon threads may still be running while static destructors run.
    static DummyRegistry* registry = new DummyRegistry;
    return *registry;
}

inline std::string next_dummy_name() {
    auto& r = dummy_registry();
    std::lock_guard lock(r.mutex);
    return "Dummy-" + std::to_string(r.next_number++);
}

inline void forget_dummy_thread(const DummyThread* t) {
    auto& r = dummy_registry();
    std::lock_guard lock(r.mutex);
    std::erase_if(r.threads, [&](const auto& p) { return p.get() == t; });
}

// Waits (at most until `deadline`) for the thread to finish, then joins and forgets it.
inline bool dummy_join(const std::shared_ptr<DummyThread>& t, const Deadline& deadline) {
    {
        std::unique_lock lock(t->mutex);
        if (!cv_wait_until(t->changed, lock, deadline, [&] { return t->finished; })) return false;
    }
    {
        // Quick: the body is done, only the thread's last steps are left.
        std::lock_guard lock(t->join_mutex);
        if (t->thread.joinable()) t->thread.join();
    }
    forget_dummy_thread(t.get());
    return true;
}

// Joins the finished threads that nobody joined (their handles were dropped): run at each
// start(), so that fire-and-forget threads do not pile up (each holds a thread and an fd).
inline void reap_finished_dummy_threads() {
    auto& r = dummy_registry();
    std::vector<std::shared_ptr<DummyThread>> done;
    {
        // Lock order: the registry's mutex, then a thread's (never the other way round).
        std::lock_guard lock(r.mutex);
        for (auto& t : r.threads) {
            std::lock_guard thread_lock(t->mutex);
            if (t->finished) done.push_back(t);
        }
    }
    for (auto& t : done) dummy_join(t, Deadline{});
}

// A fork child has only the forking thread: the parent's others are not there to join.
inline void dummy_registry_after_fork() noexcept {
    auto& r = dummy_registry();
    // Another thread may have held the mutex at the fork: rebuild it (as process_state does).
    new (&r.mutex) std::mutex;
    auto* gone = new std::vector<std::shared_ptr<DummyThread>>;  // leaked: see ~DummyThread
    gone->swap(r.threads);
}

// Python's threading._shutdown: at a normal exit, wait for every non-daemon thread
// (including those that start meanwhile); daemon threads are left running, detached.
inline void join_dummy_threads_at_exit() noexcept {
    auto& r = dummy_registry();
    for (;;) {
        std::vector<std::shared_ptr<DummyThread>> waiting;
        {
            std::lock_guard lock(r.mutex);
            for (auto& t : r.threads)
                if (!t->daemon && t.get() != current_dummy_thread()) waiting.push_back(t);
        }
        if (waiting.empty()) break;
        for (auto& t : waiting) {
            try {
                dummy_join(t, Deadline{});
            } catch (...) {
                forget_dummy_thread(t.get());  // cannot join it (out of resources): do not loop on it
            }
        }
    }
    std::vector<std::shared_ptr<DummyThread>> daemons;
    {
        std::lock_guard lock(r.mutex);
        daemons = r.threads;
    }
    for (auto& t : daemons) {
        if (t.get() == current_dummy_thread()) continue;
        bool finished = false;
        {
            std::lock_guard lock(t->mutex);
            finished = t->finished;
        }
        try {
            if (finished) {
                dummy_join(t, Deadline{});
            } else {
                // Detached, not abandoned joinable: the program may end under it, as
                // Python's daemon threads do. Its entry stays, so nobody joins it later.
                std::lock_guard lock(t->join_mutex);
                if (t->thread.joinable()) t->thread.detach();
            }
        } catch (...) {
        }
    }
}

inline void install_dummy_hooks() {
    static std::once_flag once;
    std::call_once(once, [] {
        (void)dummy_registry();
        ::pthread_atfork(nullptr, nullptr, dummy_registry_after_fork);
        // Registered after the hook that joins child processes, so it runs before it
        // (atexit is last in, first out), as Python joins threads before children.
        install_exit_hook();
        std::atexit(join_dummy_threads_at_exit);
        // A forked child's target returning ends in exit_child(), which runs these and
        // not atexit: Python's child also joins its threads (threading._shutdown).
        add_normal_exit_action(join_dummy_threads_at_exit);
    });
}

// ---- queues and pipes ----------------------------------------------------------------------

// A handle's own "closed" mark (close() closes this handle, not the others), readable
// from any thread while another closes it.
class HandleClosedFlag {
public:
    HandleClosedFlag() = default;
    HandleClosedFlag(const HandleClosedFlag& other) noexcept : closed_(other.get()) {}
    HandleClosedFlag& operator=(const HandleClosedFlag& other) noexcept {
        set(other.get());
        return *this;
    }
    // relaxed: the flag guards no data of its own; the queue's state is under its mutex.
    bool get() const noexcept { return closed_.load(std::memory_order_relaxed); }
    void set(bool closed = true) noexcept { closed_.store(closed, std::memory_order_relaxed); }

private:
    std::atomic<bool> closed_{false};
};

template <class T>
struct DummyQueueState {
    explicit DummyQueueState(long max, bool is_joinable)
        : maxsize(max > 0 ? static_cast<std::size_t>(max) : 0), joinable(is_joinable) {}

    std::mutex mutex;
    std::condition_variable not_empty;
    std::condition_variable not_full;
    std::condition_variable all_done;
    std::deque<T> items;          // guarded by mutex
    std::size_t unfinished = 0;   // guarded by mutex: put and not yet task_done (JoinableQueue)
    const std::size_t maxsize;    // 0: unbounded
    const bool joinable;
};

// One direction of a dummy Pipe.
template <class T>
struct DummyChannel {
    std::mutex mutex;
    std::condition_variable changed;  // a message came, or an end closed
    std::deque<T> messages;           // guarded by mutex
    bool sender_closed = false;       // guarded by mutex
    bool receiver_closed = false;     // guarded by mutex
};

// One end of a dummy Pipe, shared by every copy of its Connection. It closes when asked
// or when the last copy goes, as a process's fds close when it exits.
template <class T>
class DummyEndpoint {
public:
    DummyEndpoint(std::shared_ptr<DummyChannel<T>> in, std::shared_ptr<DummyChannel<T>> out)
        : in_(std::move(in)), out_(std::move(out)) {}
    DummyEndpoint(const DummyEndpoint&) = delete;
    DummyEndpoint& operator=(const DummyEndpoint&) = delete;
    ~DummyEndpoint() { close(); }

    void close() noexcept {
        // relaxed: the exchange only elects one closer; what the other side sees is set
        // under the channels' mutexes below.
        if (closed_.exchange(true, std::memory_order_relaxed)) return;
        if (in_) {
            std::deque<T> unread;  // never to be read: destroyed outside the lock
            {
                std::lock_guard lock(in_->mutex);
                in_->receiver_closed = true;
                unread.swap(in_->messages);
            }
            in_->changed.notify_all();  // a recv() of ours blocked meanwhile gives up
        }
        if (out_) {
            {
                std::lock_guard lock(out_->mutex);
                out_->sender_closed = true;
            }
            out_->changed.notify_all();  // the other end's recv() sees EOF once drained
        }
    }
    // relaxed: a query; the channels hold the state that matters, under their mutexes.
    bool closed() const noexcept { return closed_.load(std::memory_order_relaxed); }

    DummyChannel<T>* in() const noexcept { return in_.get(); }
    DummyChannel<T>* out() const noexcept { return out_.get(); }

private:
    const std::shared_ptr<DummyChannel<T>> in_;   // null: this end only sends
    const std::shared_ptr<DummyChannel<T>> out_;  // null: this end only receives
    std::atomic<bool> closed_{false};
};

// ---- shared values -------------------------------------------------------------------------

// The lock of a dummy Value or Array, made on first use: Python's dummy Value has no lock
// at all, so most never need one, and a library lock costs a shared-memory block.
template <class L>
class LazyLock {
public:
    LazyLock() = default;
    explicit LazyLock(L lock) : lock_(std::move(lock)) {
        std::call_once(made_, [] {});
    }
    L& get() {
        std::call_once(made_, [this] { lock_.emplace(); });
        return *lock_;
    }

private:
    std::once_flag made_;
    std::optional<L> lock_;  // written once, inside call_once
};

// get_lock() and Python's `with v:` as `std::lock_guard g(v);`, as mp::Value has.
template <class L>
class DummySynchronized {
public:
    L& get_lock() const { return lock_->get(); }
    void acquire() { get_lock().acquire(); }
    void release() { get_lock().release(); }
    void lock() { get_lock().acquire(); }
    void unlock() { get_lock().release(); }
    bool try_lock() { return get_lock().acquire(false); }

protected:
    explicit DummySynchronized(std::shared_ptr<LazyLock<L>> lock) : lock_(std::move(lock)) {}

private:
    std::shared_ptr<LazyLock<L>> lock_;  // points into the Value's or Array's shared state
};

// A fixed number of T, constructed in place: contiguous, so span() is a real span (a
// std::vector<bool> would not be), and any T works, default-constructible or not.
template <class T>
class DummyElements {
public:
    explicit DummyElements(std::size_t n) : data_(allocate(n)), size_(n) {
        try {
            std::uninitialized_value_construct_n(data_, n);
        } catch (...) {
            deallocate();
            throw;
        }
    }
    template <class It>
    DummyElements(It first, std::size_t n) : data_(allocate(n)), size_(n) {
        try {
            std::uninitialized_copy_n(first, n, data_);
        } catch (...) {
            deallocate();
            throw;
        }
    }
    DummyElements(const DummyElements&) = delete;
    DummyElements& operator=(const DummyElements&) = delete;
    ~DummyElements() {
        std::destroy_n(data_, size_);
        deallocate();
    }

    T* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }

private:
    static T* allocate(std::size_t n) { return std::allocator<T>{}.allocate(std::max<std::size_t>(n, 1)); }
    void deallocate() noexcept { std::allocator<T>{}.deallocate(data_, std::max<std::size_t>(size_, 1)); }

    T* data_;
    std::size_t size_;
};

}  // namespace detail

namespace dummy {

// ---- locks ---------------------------------------------------------------------------------

// The library's locks are process-shared, which includes the threads of one process: a
// Lock or RLock is owned by the thread that acquired it (RLock::release by another
// thread throws ValueError, as Python's threading.RLock raises RuntimeError). One
// difference from Python's threading.Lock: a Lock whose holder thread has ended is taken
// over by the next acquire() (after up to 100 ms), where Python's would stay locked until
// some thread released it. See synchronize.hpp.
using Lock = multiprocessing::Lock;
using RLock = multiprocessing::RLock;
using Semaphore = multiprocessing::Semaphore;
using BoundedSemaphore = multiprocessing::BoundedSemaphore;
using Condition = multiprocessing::Condition;
using Event = multiprocessing::Event;
using Barrier = multiprocessing::Barrier;

// ---- current_process, active_children --------------------------------------------------

// Python's dummy.current_process is threading.current_thread(): in a dummy Process, that
// process (its name and daemon flag); in the main thread, "MainThread" (not
// "MainProcess"); in any other thread (a std::thread, a pool's worker), "Thread-<tid>",
// daemonic, as Python's stand-in for a thread it did not start is. pid() is always this
// process's pid: every dummy process lives in it.
inline ProcessInfo current_process() {
    const pid_t pid = detail::current_pid();
    if (auto* self = detail::current_dummy_thread()) {
        std::lock_guard lock(self->mutex);
        return ProcessInfo(self->name, pid, self->daemon);
    }
    const pid_t tid = detail::current_tid();
    if (tid == pid) return ProcessInfo("MainThread", pid, false);
    return ProcessInfo("Thread-" + std::to_string(tid), pid, true);
}

// The live dummy processes that the calling thread started (Python's: the children of
// current_process(), which is the current thread), reaping the finished ones.
inline std::vector<ProcessInfo> active_children() {
    auto& registry = detail::dummy_registry();
    const auto me = detail::dummy_thread_token();
    std::vector<std::shared_ptr<detail::DummyThread>> mine;
    {
        std::lock_guard lock(registry.mutex);
        for (auto& t : registry.threads)
            if (t->parent_token == me) mine.push_back(t);
    }
    std::vector<ProcessInfo> alive;
    for (auto& t : mine) {
        std::unique_lock lock(t->mutex);
        if (!t->finished) {
            alive.emplace_back(t->name, t->pid, t->daemon);
            continue;
        }
        lock.unlock();
        detail::dummy_join(t, detail::Deadline{});
    }
    return alive;
}

// ---- Process -------------------------------------------------------------------------------

// Python's DummyProcess: mp::Process's API on a std::thread. The target may be any
// callable with any arguments (captures by reference are fine: it runs in this memory);
// the arguments are stored as std::thread stores them (decayed copies; std::ref to share).
//
// Differences from mp::Process, each as Python's DummyProcess has it:
// - exitcode() is empty until the thread has finished, then 0, also when the target
//   threw; the exception is printed to stderr ("Process Dummy-1:", then its type and
//   what()), and goes no further.
// - Default names are "Dummy-1", "Dummy-2", ...; daemon() defaults to the starting
//   thread's (see current_process()), and a daemon may start children.
// - pid() is this process's pid (empty before start()); native_id() is the thread's id.
// - terminate() and kill() cannot stop a thread: on a running one they throw ValueError
//   (ask the target to return instead, e.g. through an Event); on a finished one they do
//   nothing, as on a process that has exited.
// - sentinel() is an eventfd that becomes readable when the thread finishes.
// - join() from the process's own thread throws ValueError.
// - Non-daemon threads are joined at a normal exit (return from main, exit()), daemon
//   threads are not, as Python's threading does; objects with static storage that a
//   daemon thread still uses are destroyed under it, as in Python, so do not let one
//   outlive what it uses.
//
// A handle may be destroyed (or moved) while its thread runs: the target lives with the
// thread, not in the handle. A class derived from Process is different: its thread runs
// run() on that very object, so the object must stay where it is until its thread has
// finished; join() it before it goes. Destroying it earlier is a bug that the destructor
// reports and ends the program for, as std::thread's does (std::terminate).
class Process {
public:
    // For subclasses that override run().
    Process() : Process(Unnamed{}) {}

    // Process(target=f, args=(args...)).
    template <class F, class... Args>
        requires(!std::is_base_of_v<Process, std::decay_t<F>>)
    explicit Process(F&& target, Args&&... args) : Process(Unnamed{}) {
        using Fn = std::decay_t<F>;
        static_assert(std::is_invocable_v<Fn&, std::decay_t<Args>&&...> ||
                          std::is_invocable_v<Fn&, std::decay_t<Args>&...>,
                      "multiprocessing::dummy::Process: the target cannot be called with these arguments");
        state_->target = std::make_unique<detail::DummyBoundCall<Fn, std::decay_t<Args>...>>(
            std::forward<F>(target), std::forward<Args>(args)...);
    }

    Process(Process&&) noexcept = default;
    Process& operator=(Process&&) noexcept = default;
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;

    // Does not stop the thread: a non-daemon one is still joined at exit.
    virtual ~Process() {
        if (!state_ || !runs_itself_) return;
        std::lock_guard lock(state_->mutex);
        if (state_->finished) return;
        std::fprintf(stderr,
                     "multiprocessing::dummy::Process %s: an object of a class derived from Process was "
                     "destroyed while its thread was still running run() on it; join() it first\n",
                     state_->name.c_str());
        std::terminate();
    }

    // What the thread runs; by default the target with its arguments, once (as Python's
    // Thread.run drops its target after calling it).
    virtual void run() {
        if (!state_) return;
        if (auto target = std::move(state_->target)) (*target)();
    }

    void start() {
        check_open();
        auto& s = *state_;
        {
            std::lock_guard lock(s.mutex);
            if (s.started) throw ValueError("Process.start: cannot start a process twice");
            s.started = true;
            s.pid = detail::current_pid();
            s.parent_token = detail::dummy_thread_token();
        }
        try {
            launch();
        } catch (...) {
            std::lock_guard lock(s.mutex);
            s.started = false;
            throw;
        }
    }

    void join() { join_until("join", detail::Deadline{}); }
    // Waits at most `timeout`; returns whether the thread has finished.
    bool join(Timeout timeout) { return join_until("join", detail::Deadline(timeout)); }

    bool is_alive() const {
        check_open();
        std::lock_guard lock(state_->mutex);
        return state_->started && !state_->finished;
    }

    void terminate() { refuse_to_stop("terminate"); }
    void kill() { refuse_to_stop("kill"); }

    // Releases a finished thread; any later use throws ValueError.
    void close() {
        if (closed_) return;
        if (state_) {
            bool started = false;
            {
                std::lock_guard lock(state_->mutex);
                if (state_->started && !state_->finished)
                    throw ValueError("Process.close: cannot close a process while it is still running; join() it first");
                started = state_->started;
            }
            if (started) detail::dummy_join(state_, detail::Deadline{});
        }
        closed_ = true;
    }

    // This process's pid once started (every dummy process runs in it); empty before.
    std::optional<pid_t> pid() const {
        check_open();
        std::lock_guard lock(state_->mutex);
        if (!state_->started) return std::nullopt;
        return state_->pid;
    }
    // The thread's id (Python's Thread.native_id), once started.
    std::optional<pid_t> native_id() const {
        check_open();
        std::lock_guard lock(state_->mutex);
        if (!state_->running) return std::nullopt;
        return state_->native_id;
    }

    // Empty before start and while running; then 0 (also when the target threw).
    std::optional<int> exitcode() const {
        check_open();
        std::lock_guard lock(state_->mutex);
        if (!state_->finished) return std::nullopt;
        return 0;
    }

    // An eventfd that becomes readable when the thread finishes (and stays so); owned
    // by the Process.
    int sentinel() const {
        check_started("sentinel");
        return state_->sentinel;
    }

    std::string name() const {
        check_state("name");
        std::lock_guard lock(state_->mutex);
        return state_->name;
    }
    void set_name(std::string name) {
        check_state("set_name");
        std::lock_guard lock(state_->mutex);
        state_->name = std::move(name);
    }
    bool daemon() const {
        check_state("daemon");
        std::lock_guard lock(state_->mutex);
        return state_->daemon;
    }
    void set_daemon(bool daemon) {
        check_state("set_daemon");
        std::lock_guard lock(state_->mutex);
        if (state_->started) throw ValueError("Process.set_daemon: the process has already started");
        state_->daemon = daemon;
    }

private:
    struct Unnamed {};
    explicit Process(Unnamed)
        : state_(std::make_shared<detail::DummyThread>(detail::next_dummy_name(), current_process().daemon())) {}

    // start()'s work once `started` is claimed; throws before any thread exists.
    void launch() {
        auto& s = *state_;
        detail::install_dummy_hooks();
        detail::reap_finished_dummy_threads();
        if (s.sentinel < 0) {
            s.sentinel = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
            if (s.sentinel < 0)
                throw std::system_error(errno, std::generic_category(),
                                        "Process.start: eventfd for the sentinel (out of file descriptors?)");
        }
        // A derived class may override run(), and then the thread must call it on this
        // object; the base class runs its target, which lives in the shared state.
        runs_itself_ = typeid(*this) != typeid(Process);
        Process* self = runs_itself_ ? this : nullptr;

        // Registered before the thread exists, so that neither the exit hook nor
        // active_children() can miss it (Python adds to _children before starting too).
        auto& registry = detail::dummy_registry();
        {
            std::lock_guard lock(registry.mutex);
            registry.threads.push_back(state_);
        }
        try {
            std::lock_guard lock(s.join_mutex);
            s.thread = std::thread([state = state_, self] { bootstrap(state, self); });
        } catch (...) {
            detail::forget_dummy_thread(&s);
            throw;
        }
        // As Python's start() does: return once the thread runs (native_id is known).
        std::unique_lock lock(s.mutex);
        s.changed.wait(lock, [&] { return s.running; });
    }

    static void bootstrap(const std::shared_ptr<detail::DummyThread>& state, Process* self) noexcept {
        detail::current_dummy_thread() = state.get();
        {
            std::lock_guard lock(state->mutex);
            state->native_id = detail::current_tid();
            state->running = true;
        }
        state->changed.notify_all();
        try {
            if (self) {
                self->run();
            } else if (auto target = std::move(state->target)) {
                // Dies here, so what it captured is released before join() returns.
                (*target)();
            }
        } catch (...) {
            report_exception(*state);
        }
        {
            std::lock_guard lock(state->mutex);
            state->finished = true;
        }
        state->changed.notify_all();
        // After `finished`, so that whoever wakes on the sentinel reads exitcode 0. The fd
        // stays open while `state` lives, which this thread's reference guarantees.
        ::eventfd_write(state->sentinel, 1);
        detail::current_dummy_thread() = nullptr;
    }

    // Python's threading excepthook prints the traceback and the thread ends quietly;
    // here the line mp::Process's child prints, "Process <name>:" and "<type>: <what>".
    static void report_exception(detail::DummyThread& state) noexcept {
        try {
            const auto info = detail::describe_current_exception();
            std::string name;
            {
                std::lock_guard lock(state.mutex);
                name = state.name;
            }
            // One call, so the two lines stay together when several threads fail at once.
            std::fprintf(stderr, "Process %s:\n%s: %s\n", name.c_str(), info.type.c_str(), info.what.c_str());
            std::fflush(stderr);
        } catch (...) {
        }
    }

    bool join_until(const char* what, const detail::Deadline& deadline) {
        check_started(what);
        if (detail::current_dummy_thread() == state_.get())
            throw ValueError(std::string("Process.") + what +
                             ": a process cannot join itself (it would wait for ever)");
        return detail::dummy_join(state_, deadline);
    }

    void refuse_to_stop(const char* what) const {
        check_started(what);
        std::lock_guard lock(state_->mutex);
        if (state_->finished) return;
        throw ValueError(std::string("Process.") + what +
                         ": a dummy process is a thread, and a thread cannot be stopped from outside; have its "
                         "target return when asked (for example when a dummy::Event is set), then join() it");
    }

    void check_state(const char* what) const {
        if (!state_)
            throw ValueError(std::string("Process.") + what + ": this Process was moved from; use the one it was moved to");
    }
    void check_open() const {
        if (closed_) throw ValueError("process object is closed");
        check_state("use");
    }
    void check_started(const char* what) const {
        check_open();
        std::lock_guard lock(state_->mutex);
        if (!state_->started)
            throw ValueError(std::string("Process.") + what + ": can only be used on a started process");
    }

    std::shared_ptr<detail::DummyThread> state_;
    bool closed_ = false;
    bool runs_itself_ = false;  // set by start(): the thread runs this object's run()
};

// ---- queues --------------------------------------------------------------------------------

// mp::Queue's API on a deque, for any movable T (a std::unique_ptr too): put() moves the
// item in (or copies an lvalue) and get() moves it out; nothing is serialized. Copies are
// handles to the same queue. close() closes this handle (and copies made of it after),
// whose put() and get() then throw ValueError; other handles still drain the queue.
template <class T>
class Queue {
    static_assert(std::is_move_constructible_v<T>, "multiprocessing::dummy::Queue<T>: T must be movable");

public:
    // Unbounded (maxsize <= 0, as in Python) or holding at most `maxsize` items.
    explicit Queue(long maxsize = 0) : Queue(maxsize, false) {}

    // Blocks while a bounded queue is full; put(x, timeout) throws Full if it stays full.
    // An rvalue is moved from only when it goes in: after Full it is still the caller's.
    void put(const T& item) { put_until(item, detail::Deadline{}); }
    void put(T&& item) { put_until(std::move(item), detail::Deadline{}); }
    void put(const T& item, Timeout timeout) { put_until(item, detail::Deadline(timeout)); }
    void put(T&& item, Timeout timeout) { put_until(std::move(item), detail::Deadline(timeout)); }
    void put(const T& item, bool block) { put_until(item, block_deadline(block)); }
    void put(T&& item, bool block) { put_until(std::move(item), block_deadline(block)); }
    // Python's put(obj, block, timeout): the timeout only counts when blocking.
    void put(const T& item, bool block, Timeout timeout) { put_until(item, block_deadline(block, timeout)); }
    void put(T&& item, bool block, Timeout timeout) { put_until(std::move(item), block_deadline(block, timeout)); }
    void put_nowait(const T& item) { put(item, false); }
    void put_nowait(T&& item) { put(std::move(item), false); }

    // Blocks until an item comes; get(timeout) throws Empty if none comes in time.
    T get() { return get_until(detail::Deadline{}); }
    T get(Timeout timeout) { return get_until(detail::Deadline(timeout)); }
    T get(bool block) { return get_until(block_deadline(block)); }
    T get(bool block, Timeout timeout) { return get_until(block_deadline(block, timeout)); }
    T get_nowait() { return get(false); }

    std::size_t qsize() const {
        std::lock_guard lock(state_->mutex);
        return state_->items.size();
    }
    bool empty() const { return qsize() == 0; }
    bool full() const { return state_->maxsize != 0 && qsize() >= state_->maxsize; }

    void close() noexcept { closed_.set(); }
    // There is no feeder thread to wait for (Python's dummy Queue has neither).
    void join_thread() const {
        if (!closed_.get()) throw ValueError("Queue.join_thread: call close() first");
    }
    void cancel_join_thread() noexcept {}

protected:
    Queue(long maxsize, bool joinable) : state_(std::make_shared<detail::DummyQueueState<T>>(maxsize, joinable)) {}
    detail::DummyQueueState<T>& state() const { return *state_; }

private:
    static detail::Deadline block_deadline(bool block) { return block ? detail::Deadline{} : detail::Deadline::now(); }
    static detail::Deadline block_deadline(bool block, Timeout timeout) {
        return block ? detail::Deadline(timeout) : detail::Deadline::now();
    }

    void check_open(const char* what) const {
        if (closed_.get())
            throw ValueError(std::string("Queue.") + what + ": this queue handle is closed (close() was called on it)");
    }

    template <class U>
    void put_until(U&& item, const detail::Deadline& deadline) {
        check_open("put");
        auto& s = *state_;
        {
            std::unique_lock lock(s.mutex);
            if (s.maxsize != 0 &&
                !detail::cv_wait_until(s.not_full, lock, deadline, [&] { return s.items.size() < s.maxsize; }))
                throw Full("Queue.put: the queue is full");
            s.items.push_back(std::forward<U>(item));
            if (s.joinable) ++s.unfinished;
        }
        s.not_empty.notify_one();
    }

    T get_until(const detail::Deadline& deadline) {
        check_open("get");
        auto& s = *state_;
        std::unique_lock lock(s.mutex);
        if (!detail::cv_wait_until(s.not_empty, lock, deadline, [&] { return !s.items.empty(); }))
            throw Empty("Queue.get: the queue is empty");
        T item = std::move(s.items.front());
        s.items.pop_front();
        lock.unlock();
        s.not_full.notify_one();
        return item;
    }

    std::shared_ptr<detail::DummyQueueState<T>> state_;
    detail::HandleClosedFlag closed_;
};

// A Queue that counts unfinished items: each get() item is marked done with task_done(),
// and join() waits until every item put has been marked done.
template <class T>
class JoinableQueue : public Queue<T> {
public:
    explicit JoinableQueue(long maxsize = 0) : Queue<T>(maxsize, true) {}

    void task_done() {
        auto& s = this->state();
        {
            std::lock_guard lock(s.mutex);
            if (s.unfinished == 0)
                throw ValueError("JoinableQueue.task_done: called more times than items were put");
            if (--s.unfinished != 0) return;
        }
        s.all_done.notify_all();
    }
    void join() { join_until(detail::Deadline{}); }
    // False if items were still unfinished when the timeout ran out.
    bool join(Timeout timeout) { return join_until(detail::Deadline(timeout)); }

private:
    bool join_until(const detail::Deadline& deadline) {
        auto& s = this->state();
        std::unique_lock lock(s.mutex);
        return detail::cv_wait_until(s.all_done, lock, deadline, [&] { return s.unfinished == 0; });
    }
};

// Python's SimpleQueue: put, get, empty, close; unbounded.
template <class T>
class SimpleQueue {
public:
    void put(const T& item) { q_.put(item); }
    void put(T&& item) { q_.put(std::move(item)); }
    T get() { return q_.get(); }
    T get(Timeout timeout) { return q_.get(timeout); }
    bool empty() const { return q_.empty(); }
    void close() noexcept { q_.close(); }

private:
    Queue<T> q_;
};

// ---- Pipe ----------------------------------------------------------------------------------

template <class T>
class Connection;

template <class T>
std::pair<Connection<T>, Connection<T>> Pipe(bool duplex = true);

// One end of a dummy Pipe: mp::Connection's send/recv/poll/close on two deques, for any
// movable T. Copies share the end; close() closes it for every copy, and the other end's
// recv() throws EOFError once this end is closed (or its last copy destroyed) and every
// message it sent has been read. send() to an end that is closed throws
// std::system_error(EPIPE), as the process version's does. No fileno(), send_bytes() or
// recv_bytes(): there is no fd and no byte stream. (Python's dummy Pipe is two queue.Queue
// and has no EOF at all; this one has, so a reader can stop.)
template <class T>
class Connection {
    static_assert(std::is_move_constructible_v<T>, "multiprocessing::dummy::Connection<T>: T must be movable");

public:
    // Never blocks: the other end's backlog is unbounded, as a queue.Queue is.
    void send(const T& obj) { send_value(obj); }
    void send(T&& obj) { send_value(std::move(obj)); }

    // Blocks until a message arrives; EOFError once the other end is closed and drained.
    T recv() { return receive(detail::Deadline{}, std::nullopt); }
    // TimeoutError if no message arrives within `timeout`.
    T recv(Timeout timeout) { return receive(detail::Deadline(timeout), timeout); }

    // Whether a message (or EOF) is waiting; never blocks, as Python's poll() (timeout 0).
    bool poll() { return poll(Timeout::zero()); }
    // Waits at most `timeout` for a message (or EOF).
    bool poll(Timeout timeout) {
        constexpr const char* op = "Connection.poll";
        auto& ch = incoming(op);
        std::unique_lock lock(ch.mutex);
        detail::cv_wait_until(ch.changed, lock, detail::Deadline(timeout),
                              [&] { return !ch.messages.empty() || ch.sender_closed || ch.receiver_closed; });
        if (ch.receiver_closed) throw closed_error(op);
        return !ch.messages.empty() || ch.sender_closed;
    }

    void close() {
        if (endpoint_) endpoint_->close();
    }
    bool closed() const { return !endpoint_ || endpoint_->closed(); }
    bool readable() const noexcept { return endpoint_ && endpoint_->in(); }
    bool writable() const noexcept { return endpoint_ && endpoint_->out(); }

private:
    friend std::pair<Connection<T>, Connection<T>> Pipe<T>(bool);
    explicit Connection(std::shared_ptr<detail::DummyEndpoint<T>> endpoint) : endpoint_(std::move(endpoint)) {}

    detail::DummyEndpoint<T>& endpoint(const char* op) const {
        if (!endpoint_)
            throw ValueError(std::string(op) + ": this Connection was moved from; use the one it was moved to");
        if (endpoint_->closed()) throw closed_error(op);
        return *endpoint_;
    }
    static ValueError closed_error(const char* op) {
        return ValueError(std::string(op) +
                          ": the connection is closed (close() was called on this end); use another end, or "
                          "create a new Pipe");
    }
    detail::DummyChannel<T>& incoming(const char* op) const {
        auto* ch = endpoint(op).in();
        if (!ch)
            throw ValueError(std::string(op) +
                             ": this end of a one-way Pipe(duplex=false) only sends; receive on the first end of "
                             "the pair (auto [r, w] = Pipe<T>(false): r receives)");
        return *ch;
    }
    detail::DummyChannel<T>& outgoing(const char* op) const {
        auto* ch = endpoint(op).out();
        if (!ch)
            throw ValueError(std::string(op) +
                             ": this end of a one-way Pipe(duplex=false) only receives; send on the second end "
                             "of the pair (auto [r, w] = Pipe<T>(false): w sends)");
        return *ch;
    }

    template <class U>
    void send_value(U&& obj) {
        constexpr const char* op = "Connection.send";
        auto& ch = outgoing(op);
        {
            std::lock_guard lock(ch.mutex);
            if (ch.sender_closed) throw closed_error(op);
            if (ch.receiver_closed)
                throw std::system_error(EPIPE, std::generic_category(),
                                        std::string(op) +
                                            ": the other end of the pipe is closed, so nothing more can be sent");
            ch.messages.push_back(std::forward<U>(obj));
        }
        // All: a poll() and a recv() may both be waiting, and only recv() consumes.
        ch.changed.notify_all();
    }

    T receive(const detail::Deadline& deadline, std::optional<Timeout> timeout) {
        constexpr const char* op = "Connection.recv";
        auto& ch = incoming(op);
        std::unique_lock lock(ch.mutex);
        if (!detail::cv_wait_until(ch.changed, lock, deadline,
                                   [&] { return !ch.messages.empty() || ch.sender_closed || ch.receiver_closed; }))
            throw TimeoutError(std::string(op) + ": no message arrived within " +
                               detail::describe_seconds(timeout.value_or(Timeout::zero())));
        if (ch.receiver_closed) throw closed_error(op);
        if (ch.messages.empty())
            throw EOFError(std::string(op) +
                           ": the other end of the pipe is closed (and every message it sent has been read)");
        T obj = std::move(ch.messages.front());
        ch.messages.pop_front();
        return obj;
    }

    std::shared_ptr<detail::DummyEndpoint<T>> endpoint_;
};

// Python's Pipe(duplex=True). With duplex = false the first end only receives and the
// second only sends (Python's dummy Pipe ignores duplex; this one keeps mp::Pipe's rule).
template <class T>
std::pair<Connection<T>, Connection<T>> Pipe(bool duplex) {
    auto forward = std::make_shared<detail::DummyChannel<T>>();  // second end -> first end
    if (!duplex)
        return {Connection<T>(std::make_shared<detail::DummyEndpoint<T>>(forward, nullptr)),
                Connection<T>(std::make_shared<detail::DummyEndpoint<T>>(nullptr, forward))};
    auto backward = std::make_shared<detail::DummyChannel<T>>();  // first end -> second end
    return {Connection<T>(std::make_shared<detail::DummyEndpoint<T>>(forward, backward)),
            Connection<T>(std::make_shared<detail::DummyEndpoint<T>>(backward, forward))};
}

// ---- Value, Array --------------------------------------------------------------------------

// Python's dummy Value is a plain object with .value and no lock; this one has mp::Value's
// surface for any T (a std::string, a struct with pointers): value() is the object itself,
// copies of the handle are the same object, and get_lock() is a lock made on first use
// (an RLock unless L says otherwise) to hold around read-modify-write sequences.
template <class T, class L = RLock>
class Value : public detail::DummySynchronized<L> {
public:
    Value()
        requires std::is_default_constructible_v<T>
        : Value(std::make_shared<State>(T{})) {}
    explicit Value(T initial) : Value(std::make_shared<State>(std::move(initial))) {}
    Value(T initial, L lock) : Value(std::make_shared<State>(std::move(initial), std::move(lock))) {}

    T& value() const noexcept { return state_->value; }

private:
    struct State {
        explicit State(T v) : value(std::move(v)) {}
        State(T v, L l) : value(std::move(v)), lock(std::move(l)) {}
        T value;
        detail::LazyLock<L> lock;
    };
    explicit Value(std::shared_ptr<State> state)
        : detail::DummySynchronized<L>(std::shared_ptr<detail::LazyLock<L>>(state, &state->lock)),
          state_(std::move(state)) {}

    std::shared_ptr<State> state_;
};

// mp::Array's surface for any T: a fixed-size array whose copies are the same array, with
// a lock made on first use (Python's dummy Array is a plain array.array with none).
template <class T, class L = RLock>
class Array : public detail::DummySynchronized<L> {
public:
    using value_type = T;
    using iterator = T*;
    using const_iterator = const T*;

    // n value-initialized elements (0 for numbers, "" for strings).
    explicit Array(std::size_t n) : Array(std::make_shared<State>(n)) {}
    Array(std::size_t n, L lock) : Array(std::make_shared<State>(std::move(lock), n)) {}
    // The given elements.
    Array(std::initializer_list<T> items) : Array(from_range(items)) {}
    Array(std::initializer_list<T> items, L lock) : Array(from_range(items, std::move(lock))) {}
    template <std::ranges::input_range R>
        requires(std::convertible_to<std::ranges::range_reference_t<R>, T> &&
                 !std::is_base_of_v<Array, std::remove_cvref_t<R>>)  // copies share, never clone
    explicit Array(R&& items) : Array(from_range(items)) {}
    template <std::ranges::input_range R>
        requires(std::convertible_to<std::ranges::range_reference_t<R>, T> &&
                 !std::is_base_of_v<Array, std::remove_cvref_t<R>>)
    Array(R&& items, L lock) : Array(from_range(items, std::move(lock))) {}

    T& operator[](std::size_t i) const noexcept { return data()[i]; }
    T& at(std::size_t i) const {
        if (i >= size())
            throw IndexError("Array index " + std::to_string(i) + " out of range (size " + std::to_string(size()) +
                             ")");
        return data()[i];
    }
    std::size_t size() const noexcept { return state_->elements.size(); }
    T* data() const noexcept { return state_->elements.data(); }
    std::span<T> span() const noexcept { return {data(), size()}; }
    T* begin() const noexcept { return data(); }
    T* end() const noexcept { return data() + size(); }

private:
    struct State {
        explicit State(std::size_t n) : elements(n) {}
        State(L l, std::size_t n) : elements(n), lock(std::move(l)) {}
        template <class It>
        State(It first, std::size_t n) : elements(first, n) {}
        template <class It>
        State(L l, It first, std::size_t n) : elements(first, n), lock(std::move(l)) {}
        detail::DummyElements<T> elements;
        detail::LazyLock<L> lock;
    };
    explicit Array(std::shared_ptr<State> state)
        : detail::DummySynchronized<L>(std::shared_ptr<detail::LazyLock<L>>(state, &state->lock)),
          state_(std::move(state)) {}

    // Counts first when it can; a single-pass range is gathered once.
    template <class R, class... Lock>
    static std::shared_ptr<State> from_range(R& items, Lock&&... lock) {
        if constexpr (std::ranges::sized_range<R> || std::ranges::forward_range<R>) {
            const auto n = static_cast<std::size_t>(std::ranges::distance(items));
            return std::make_shared<State>(std::forward<Lock>(lock)..., std::ranges::begin(items), n);
        } else {
            std::vector<T> gathered;
            for (auto&& x : items) gathered.emplace_back(std::forward<decltype(x)>(x));
            return std::make_shared<State>(std::forward<Lock>(lock)..., std::make_move_iterator(gathered.begin()),
                                           gathered.size());
        }
    }

    std::shared_ptr<State> state_;
};

// ---- Pool ----------------------------------------------------------------------------------
// Python's ThreadPool: mp::Pool's own logic (pool.hpp: the same PoolCore, rings and result
// thread) with threads as its workers and a task's address as what its ring carries.
// Any callable, argument and result goes; a move-only result is taken by the first
// get(). What a thread cannot do: be killed, so there is no task_timeout, and
// terminate() lets a running task finish (queued ones fail at once), as Python's does.
// worker_pids() is empty.
using Pool = BasicPool<multiprocessing::detail::ThreadTransport>;
using PoolOptions = multiprocessing::detail::ThreadPoolOptions;

}  // namespace dummy

}  // namespace multiprocessing

// Where mp::dummy differs from mp:: (and from Python's multiprocessing.dummy):
// - Process: exitcode 0 once finished even when the target threw (printed as
//   "Process Dummy-N:"); terminate()/kill() on a running thread throw ValueError;
//   pid() is this process's pid, native_id() the thread's; default names "Dummy-N"
//   (Python 3 names a DummyProcess "Thread-N (target)"); a subclass object must outlive
//   its thread; join() from the thread itself throws ValueError.
// - current_process(): "MainThread" in the main thread, as Python's dummy (threading)
//   says; a thread it did not start is "Thread-<tid>" (Python: "Dummy-N").
// - active_children(): the calling thread's started children, as in Python.
// - Queue: any movable T, moved not copied; close() closes that handle only.
// - Pipe: EOFError and one-way pipes, which Python's dummy Pipe lacks; no fd, no bytes API.
// - Value/Array: any T; the lock is made on first get_lock().
// - Locks: the process-shared ones (owner per thread).
