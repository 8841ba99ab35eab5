// The parent's side of a Pool, independent of task types: the shared segment, the
// workers, the scheduling of tasks onto their rings, and the result thread that
// completes results, replaces dead workers and shuts the pool down.
//
// Scheduling: every worker has its own task ring and result ring (single producer,
// single consumer each), so the parent always knows which tasks a worker holds, and a
// worker that dies leaves nobody else's ring half-written. The parent keeps at most
// `prefetch` tasks queued per worker (one running, the rest ready so the worker never
// waits for the parent) and the rest in its own pending queue; when a worker runs dry
// while another still has a task queued behind a running one, the parent takes the
// queued task back (a CAS on its state word) and gives it to the idle worker. That
// makes a deep queue safe: a long task never holds short ones hostage, and small tasks
// flow without waiting for the parent's result thread to hand out each next one.
//
// The pending queue and the per-worker bookkeeping are parent-local and guarded by one
// mutex, taken once per task (never per map item) and never shared with a worker;
// everything that crosses the process boundary is lock-free.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>

#include "deadline.hpp"
#include "../errors.hpp"
#include "popen_fork.hpp"
#include "forkserver.hpp"
#include "popen_spawn.hpp"
#include "process_state.hpp"
#include "shm.hpp"
#include "worker.hpp"
#include "../util.hpp"

namespace multiprocessing::detail {

// An exception_ptr to a new E, made inside a function of its own so that every temporary
// copy of E is gone before the pointer reaches another thread. (libstdc++ shares an
// exception's message between copies by a reference count that ThreadSanitizer cannot
// see; a temporary that outlived the publishing call was reported as a race with the
// reader's what().)
template <class E>
std::exception_ptr exception_ptr_to(std::string message) {
    return std::make_exception_ptr(E(std::move(message)));
}

// One apply call or one map chunk, as the parent tracks it.
class Task {
public:
    virtual ~Task() = default;
    virtual code_address invoker() const = 0;
    // Encodes the body (after the TaskHeader) into exactly `size` bytes.
    virtual void write_body(std::byte* out) = 0;
    // In the result thread, without the pool's lock held.
    virtual void complete(const ResultHeader& header, ByteReader body) = 0;
    virtual void fail(std::exception_ptr error) = 0;
    // The imap job it belongs to, if any (to drop its unsent tasks on cancel).
    virtual const void* job() const noexcept { return nullptr; }
    // A map chunk's first item's index in the input (empty for a single call): with the
    // index in the chunk that the worker recorded, the error for a lost worker names the
    // item it was running.
    virtual std::optional<std::uint64_t> first_input_item() const noexcept { return std::nullopt; }

    std::size_t size = 0;  // body bytes, computed by the submitter
    std::uint64_t seq = 0;

private:
    friend class PoolCore;
    // While queued in a worker's ring: where, so it can be taken back.
    TaskHeader* header_ = nullptr;
    std::uint32_t record_end_ = 0;
    // The encoded record, when it has to move to another worker's ring.
    std::vector<std::byte> spilled_;
};

// Something that feeds tasks lazily (an imap), which the pool must not stop before.
class TaskSource {
public:
    virtual ~TaskSource() = default;
    // Pulls more input into tasks; `unbounded` lifts the window (join() is waiting).
    virtual void refill(bool unbounded) = 0;
    virtual bool exhausted() const = 0;
    virtual void terminate(std::exception_ptr error) = 0;
};

struct CoreOptions {
    std::size_t processes = 1;
    std::size_t maxtasksperchild = 0;  // 0: unlimited
    std::function<void()> initializer;  // for fork workers
    PortableCall portable_initializer;  // the same, for spawned ones
    StartMethod start_method = StartMethod::fork;
    // The executor: worker processes (started by start_method), or threads of this
    // process (multiprocessing.dummy's pool), which share everything else here.
    bool threads = false;
    std::optional<std::chrono::nanoseconds> task_timeout;
    std::uint32_t task_ring_bytes = 32u << 20;
    std::uint32_t result_ring_bytes = 32u << 20;
};

inline std::string signal_name(int sig) {
    switch (sig) {
        case SIGKILL: return "SIGKILL";
        case SIGSEGV: return "SIGSEGV";
        case SIGABRT: return "SIGABRT";
        case SIGTERM: return "SIGTERM";
        case SIGBUS: return "SIGBUS";
        case SIGFPE: return "SIGFPE";
        case SIGILL: return "SIGILL";
        case SIGINT: return "SIGINT";
        case SIGPIPE: return "SIGPIPE";
        case SIGHUP: return "SIGHUP";
        case SIGQUIT: return "SIGQUIT";
        case SIGUSR1: return "SIGUSR1";
        case SIGUSR2: return "SIGUSR2";
        default: return "signal " + std::to_string(sig);
    }
}

inline std::string describe_exit(int status) {
    if (WIFSIGNALED(status)) return "was killed by " + signal_name(WTERMSIG(status));
    return "exited with code " + std::to_string(WEXITSTATUS(status));
}

// What every pool executor shares, whatever carries its tasks (shared-memory rings to
// worker processes or threads here, MPI messages to ranks in mpi.hpp): the pending
// queue, the lazy task sources (imap), the running/closed/terminating life cycle and
// the one background thread that starts the workers, completes results and shuts the
// pool down. A derived executor says how tasks reach its workers (pump) and runs the
// thread's loop.
class PoolExecutor {
public:
    static constexpr std::size_t prefetch = 32;  // tasks queued per worker, the running one included

    PoolExecutor() = default;
    PoolExecutor(const PoolExecutor&) = delete;
    PoolExecutor& operator=(const PoolExecutor&) = delete;
    virtual ~PoolExecutor() = default;

    // Starts the background thread, which starts the workers (so that PR_SET_PDEATHSIG
    // ties them to the pool and not to the caller's thread) and then runs the result
    // loop. Throws if the workers cannot be started; the pool is then already shut down.
    void start() {
        std::promise<void> started;
        auto ready = started.get_future();
        thread_ = std::thread([this, &started] {
            try {
                start_workers();
            } catch (...) {
                state_.store(State::terminating, std::memory_order_release);
                shut_down_now(std::current_exception());
                started.set_exception(std::current_exception());
                return;
            }
            started.set_value();
            try {
                result_loop();
            } catch (...) {
                // Nothing in the loop should throw; if it does (a replacement worker that
                // cannot be started), every waiter gets the reason instead of a hang.
                state_.store(State::terminating, std::memory_order_release);
                shut_down_now(std::current_exception());
            }
            // release: what the loop did (workers reaped) is visible to a timed join.
            finished_.store(1, std::memory_order_release);
            futex_wake(finished_);
        });
        try {
            ready.get();
        } catch (...) {
            thread_.join();
            throw;
        }
    }

    virtual std::size_t processes() const noexcept = 0;
    // The largest task body a worker can be given (fixed at construction).
    virtual std::size_t max_task_size() const noexcept = 0;
    // The pids of the current workers (not in Python's API; handy for tests and tools).
    virtual std::vector<pid_t> worker_pids() = 0;

    bool accepting() const noexcept { return state_.load(std::memory_order_acquire) == State::running; }

    // Queues a task for the workers. `internal` submissions come from an imap already
    // accepted before close(); after terminate() nothing is accepted.
    void submit(std::unique_ptr<Task> task, bool internal = false) {
        if (task->size > max_task_size()) throw ValueError(too_large_message(*task));
        std::lock_guard lock(mutex_);
        check_accepting(internal);
        enqueue(std::move(task));
        pump();
    }

    // Queues several under one lock. A refused batch (terminated pool) throws with every
    // task still in `batch`; a task too large for a worker fails on its own.
    void submit(std::vector<std::unique_ptr<Task>>& batch, bool internal) {
        std::vector<std::unique_ptr<Task>> too_large;
        {
            std::lock_guard lock(mutex_);
            check_accepting(internal);
            for (auto& task : batch) {
                if (task->size > max_task_size())
                    too_large.push_back(std::move(task));
                else
                    enqueue(std::move(task));
            }
            pump();
        }
        for (auto& task : too_large) task->fail(exception_ptr_to<ValueError>(too_large_message(*task)));
    }

    void add_source(std::weak_ptr<TaskSource> source) {
        std::lock_guard lock(mutex_);
        sources_.push_back(std::move(source));
    }

    // Drops the unsent tasks of a cancelled imap.
    void cancel_pending(const void* job) {
        std::vector<std::unique_ptr<Task>> dropped;  // destroyed outside the lock
        std::lock_guard lock(mutex_);
        for (auto it = pending_.begin(); it != pending_.end();) {
            if ((*it)->job() == job) {
                dropped.push_back(std::move(*it));
                it = pending_.erase(it);
            } else {
                ++it;
            }
        }
    }

    void close() {
        if (state_.load(std::memory_order_relaxed) == State::running) get_logger().debug("closing pool");
        State expected = State::running;
        state_.compare_exchange_strong(expected, State::closed, std::memory_order_acq_rel);
        poke();
    }

    // Returns once the background thread has stopped the workers (process workers are
    // killed, so that is at once), as Python's terminate() joins them; called from a
    // callback (the background thread itself) it only asks. The wait has a bound, so a
    // worker that cannot die (a thread running a long task) never hangs the caller.
    void terminate() {
        if (state_.load(std::memory_order_relaxed) != State::terminating) get_logger().debug("terminating pool");
        state_.store(State::terminating, std::memory_order_release);
        poke();
        if (!thread_.joinable() || std::this_thread::get_id() == thread_.get_id()) return;
        (void)await_finished(Deadline(terminate_wait_limit));
    }
    static constexpr std::chrono::seconds terminate_wait_limit{10};

    // Waits until the workers have exited, at most `timeout` (none: no limit); returns
    // whether they have. ValueError while the pool is still running.
    bool join(const Deadline& deadline = Deadline()) {
        if (state_.load(std::memory_order_acquire) == State::running)
            throw ValueError("Pool.join: call close() or terminate() before join()");
        get_logger().debug("joining pool");
        joining_.store(true, std::memory_order_release);
        poke();
        if (deadline.timed() && !await_finished(deadline)) return false;
        join_thread();
        return true;
    }

protected:
    enum class State { running, closed, terminating };

    // In the background thread, before the result loop: starts every worker.
    virtual void start_workers() = 0;
    // The background thread's loop: returns once the pool is shut down.
    virtual void result_loop() = 0;
    // terminate() (or a fatal error): stops every worker now and fails whatever did not
    // finish with `error`.
    virtual void shut_down_now(std::exception_ptr error) = 0;
    // mutex_ held: hands pending tasks to workers with room for them.
    virtual void pump() = 0;
    // Wakes the background thread (a state change, a new task).
    virtual void poke() noexcept = 0;
    virtual std::string too_large_message(const Task& task) const = 0;

    // Whether the background thread finished (workers reaped) before the deadline.
    bool await_finished(const Deadline& deadline) {
        // acquire: pairs with the release store when the background thread finishes.
        while (!finished_.load(std::memory_order_acquire)) {
            if (deadline.expired()) return false;
            futex_wait(finished_, 0, deadline.remaining());
        }
        return true;
    }

    // A derived destructor calls this first: the thread uses the derived object.
    void stop_thread() {
        terminate();
        join_thread();
    }

    // mutex_ held.
    void check_accepting(bool internal) const {
        const State s = state_.load(std::memory_order_relaxed);
        if (s == State::terminating || (s == State::closed && !internal))
            throw ValueError(s == State::closed        ? "Pool not running: it was closed; no new tasks can be submitted"
                             : fatal_reason_.empty() ? "Pool not running: it was terminated"
                                                     : "Pool not running: " + fatal_reason_);
    }

    // mutex_ held.
    void enqueue(std::unique_ptr<Task> task) {
        task->seq = ++next_seq_;
        pending_.push_back(std::move(task));
    }

    void join_thread() {
        std::lock_guard lock(join_mutex_);
        if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
    }

    bool sources_open() {
        std::lock_guard lock(mutex_);
        std::erase_if(sources_, [](auto& s) {
            auto p = s.lock();
            return !p || p->exhausted();
        });
        return !sources_.empty();
    }

    void refill_sources() {
        std::vector<std::shared_ptr<TaskSource>> live;
        {
            std::lock_guard lock(mutex_);
            for (auto& s : sources_)
                if (auto p = s.lock()) live.push_back(std::move(p));
        }
        for (auto& s : live) s->refill(/*unbounded=*/true);
    }

    // Whether every task is done: none pending, none held by any of `workers` (whose
    // `outstanding` lists the tasks each holds).
    template <class Workers>
    bool all_done(const Workers& workers) {
        std::lock_guard lock(mutex_);
        if (!pending_.empty()) return false;
        for (auto& w : workers)
            if (!w.outstanding.empty()) return false;
        return true;
    }

    // Takes every task `workers` hold (to fail them: their workers are stopped).
    template <class Workers>
    std::vector<std::unique_ptr<Task>> take_outstanding(Workers& workers) {
        std::vector<std::unique_ptr<Task>> taken;
        std::lock_guard lock(mutex_);
        for (auto& w : workers) {
            for (auto& t : w.outstanding) taken.push_back(std::move(t));
            w.outstanding.clear();
        }
        return taken;
    }

    // Fails what is left once the workers are stopped: `unfinished` (the tasks they
    // held), every pending task and every imap, all with `error`.
    void fail_everything(std::vector<std::unique_ptr<Task>> unfinished, std::exception_ptr error) {
        std::vector<std::shared_ptr<TaskSource>> sources;
        {
            std::lock_guard lock(mutex_);
            for (auto& t : pending_) unfinished.push_back(std::move(t));
            pending_.clear();
            for (auto& s : sources_)
                if (auto p = s.lock()) sources.push_back(std::move(p));
            sources_.clear();
        }
        for (auto& t : unfinished) t->fail(error);
        for (auto& s : sources) s->terminate(error);
    }

    std::mutex mutex_;  // pending_, sources_, and what a derived executor says
    std::deque<std::unique_ptr<Task>> pending_;
    std::vector<std::weak_ptr<TaskSource>> sources_;
    std::uint64_t next_seq_ = 0;
    std::string fatal_reason_;  // why the pool shut itself down, if it did

    std::atomic<State> state_{State::running};
    std::atomic<bool> joining_{false};

private:
    std::atomic<std::uint32_t> finished_{0};  // the background thread is done (a futex word)
    std::thread thread_;
    std::mutex join_mutex_;
};

class PoolCore final : public PoolExecutor {
public:

    explicit PoolCore(CoreOptions options)
        : options_(std::move(options)),
          layout_{options_.processes, options_.task_ring_bytes, options_.result_ring_bytes} {
        if (options_.threads && options_.task_timeout)
            throw ValueError("Pool: task_timeout needs worker processes: a thread running past it cannot be "
                             "stopped. Use multiprocessing's Pool for tasks that may have to be killed");
        if (options_.threads) options_.start_method = StartMethod::fork;  // nothing to start: no spawn paths
        segment_ = SharedSegment::create(layout_.total(), "multiprocessing-pool");
        // Fork children inherit the mapping; nothing else needs the fd. Spawned workers
        // are given it, replacements included, so those pools keep it.
        if (options_.start_method == StartMethod::fork) segment_.close_fd();
        control_ = new (segment_.data()) PoolControl;
        workers_ = std::vector<Worker>(layout_.processes);  // built in place: a Worker is not copyable
        for (std::size_t i = 0; i < layout_.processes; ++i) {
            auto& w = workers_[i];
            w.index = i;
            w.control = new (layout_.worker(segment_.data(), i)) WorkerControl;
            w.task_data = layout_.task_data(segment_.data(), i);
            w.result_data = layout_.result_data(segment_.data(), i);
            w.tasks = Ring(&w.control->tasks, w.task_data, options_.task_ring_bytes);
            w.results = Ring(&w.control->results, w.result_data, options_.result_ring_bytes);
        }
        max_task_size_ = workers_.front().tasks.max_payload() - sizeof(TaskHeader);
    }

    PoolCore(const PoolCore&) = delete;
    PoolCore& operator=(const PoolCore&) = delete;

    ~PoolCore() override { stop_thread(); }

    std::size_t processes() const noexcept override { return workers_.size(); }
    std::size_t max_task_size() const noexcept override { return max_task_size_; }

    std::vector<pid_t> worker_pids() override {
        std::lock_guard lock(mutex_);
        std::vector<pid_t> pids;
        for (auto& w : workers_)
            if (w.pid > 0 && !options_.threads) pids.push_back(w.pid);
        return pids;
    }

private:
    struct Worker {
        std::size_t index = 0;
        WorkerControl* control = nullptr;
        std::byte* task_data = nullptr;
        std::byte* result_data = nullptr;
        Ring tasks, results;
        pid_t pid = 0;
        std::unique_ptr<ChildRecord> child;  // while pid > 0: waits for it and signals it
        // A thread worker instead: pid is then this process's, as a "running" mark.
        std::thread thread;
        std::atomic<bool> thread_exited{false};
        bool retiring = false;   // said it will exit (maxtasksperchild)
        bool timed_out = false;  // killed by us for task_timeout
        std::deque<std::unique_ptr<Task>> outstanding;  // dispatch order == result order
    };

    std::string too_large_message(const Task& task) const override {
        return "multiprocessing: a task's arguments encode to " + std::to_string(task.size) +
               " bytes, more than the pool's task ring holds (" + std::to_string(max_task_size()) +
               "); pass large data in pieces or through shared memory";
    }

    void poke() noexcept override { poke_doorbell(*control_); }

    static void poke_doorbell(PoolControl& control) noexcept {
        // release: the state change before it is visible to the result thread once it
        // sees the doorbell move.
        control.doorbell.fetch_add(1, std::memory_order_release);
        futex_wake(control.doorbell);
    }

    void start_workers() override {
        std::lock_guard lock(mutex_);
        for (auto& w : workers_) spawn(w);
    }

    // ---- scheduling (mutex_ held) ---------------------------------------------------------

    void spawn(Worker& w) {
        w.control->tasks.reset();
        w.control->results.reset();
        w.control->task_started_ns.store(0, std::memory_order_relaxed);
        w.tasks = Ring(&w.control->tasks, w.task_data, options_.task_ring_bytes);
        w.results = Ring(&w.control->results, w.result_data, options_.result_ring_bytes);
        w.control->started.store(0, std::memory_order_relaxed);
        w.retiring = w.timed_out = false;
        ForkOptions fo;
        const char* kind = options_.start_method == StartMethod::fork    ? "ForkPoolWorker-"
                           : options_.start_method == StartMethod::spawn ? "SpawnPoolWorker-"
                                                                         : "ForkServerPoolWorker-";
        fo.name = kind + std::to_string(++workers_started_);
        fo.daemon = true;
        fo.identity = {static_cast<int>(workers_started_)};
        fo.die_with_parent = true;
        if (options_.threads) {
            WorkerEnv env{control_, w.control, w.tasks, w.results, options_.maxtasksperchild, &options_.initializer};
            // relaxed: the thread's start orders it before the thread's own store.
            w.thread_exited.store(false, std::memory_order_relaxed);
            w.thread = std::thread([env, &w] {
                worker_main(env);
                // release: what the worker did is visible to the parent that sees this.
                w.thread_exited.store(true, std::memory_order_release);
                poke_doorbell(*env.pool);
            });
            w.pid = ::getpid();
            return;
        }
        if (options_.start_method == StartMethod::fork) {
            WorkerEnv env{control_, w.control, w.tasks, w.results, options_.maxtasksperchild, &options_.initializer};
            w.pid = fork_child(fo, [env] { return worker_main(env); });
            w.child = std::make_unique<ChildRecord>(w.pid, fo.name, true);
            get_logger().debug("added worker {} (pid {})", fo.name, w.pid);
            return;
        }
        const auto payload = encode_values(layout_.processes, layout_.task_ring_bytes, layout_.result_ring_bytes,
                                           w.index, options_.maxtasksperchild, options_.portable_initializer.runner,
                                           options_.portable_initializer.payload);
        std::vector<int> fds{segment_.fd()};  // then the initializer's handles (see core_options)
        for (int fd : options_.portable_initializer.fds.numbers()) fds.push_back(fd);
        const auto child =
            start_fresh_child(options_.start_method, fo, address_of_code(&spawned_worker_main), payload, fds);
        w.pid = child.pid;
        w.child = std::make_unique<ChildRecord>(child.pid, fo.name, true, child.status_fd, child.pidfd);
        get_logger().debug("added worker {} (pid {})", fo.name, w.pid);
    }

    // A spawned worker's entry (see spawn_child): maps the pool's segment, its fd 4, and
    // runs the same loop as a fork worker (the initializer's handles are fds 5 and up).
    static int spawned_worker_main(ByteReader& in) {
        PoolLayout layout;
        layout.processes = get<std::size_t>(in);
        layout.task_ring_bytes = get<std::uint32_t>(in);
        layout.result_ring_bytes = get<std::uint32_t>(in);
        const auto index = get<std::size_t>(in);
        const auto maxtasks = get<std::size_t>(in);
        PortableCall init;
        init.runner = get<code_address>(in);
        init.payload = get<std::vector<std::byte>>(in);
        auto segment = SharedSegment::adopt(first_passed_fd);
        segment.close_fd();
        if (segment.size() < layout.total() || index >= layout.processes)
            throw ProcessError("multiprocessing: a spawned pool worker was given a segment that does not fit its pool");
        std::byte* base = segment.data();
        WorkerControl* control = layout.worker(base, index);
        std::function<void()> initializer;
        if (init)
            initializer = [&init] {
                ByteReader args(init.payload);
                code_at<void(ByteReader&)>(init.runner)(args);
            };
        WorkerEnv env{layout.pool(base),
                      control,
                      Ring(&control->tasks, layout.task_data(base, index), layout.task_ring_bytes),
                      Ring(&control->results, layout.result_data(base, index), layout.result_ring_bytes),
                      maxtasks,
                      &initializer};
        return worker_main(env);
    }

    bool dispatch(Task& task, Worker& w) {
        const std::size_t total = sizeof(TaskHeader) + task.size;
        std::byte* p = w.tasks.try_reserve(total);
        if (!p) return false;
        if (!task.spilled_.empty()) {
            std::memcpy(p, task.spilled_.data(), total);
            task.spilled_ = {};
        } else {
            new (p) TaskHeader{{task_queued}, {0}, task.invoker(), task.seq};
            task.write_body(p + sizeof(TaskHeader));
        }
        auto* header = reinterpret_cast<TaskHeader*>(p);
        // relaxed: published by the ring commit's release store.
        header->state.store(task_queued, std::memory_order_relaxed);
        header->running_item.store(0, std::memory_order_relaxed);  // as above; a spilled copy may have any
        w.tasks.commit(task_record);
        task.header_ = header;
        task.record_end_ = w.tasks.head_position();
        in_flight_.fetch_add(1, std::memory_order_relaxed);
        return true;
    }

    Worker* least_loaded() {
        Worker* best = nullptr;
        for (auto& w : workers_) {
            if (w.pid <= 0 || w.retiring || w.outstanding.size() >= prefetch) continue;
            if (!best || w.outstanding.size() < best->outstanding.size()) best = &w;
        }
        return best;
    }

    void pump() override {
        while (!pending_.empty()) {
            Worker* w = least_loaded();
            if (!w || !dispatch(*pending_.front(), *w)) return;  // retried when a result frees room
            w->outstanding.push_back(std::move(pending_.front()));
            pending_.pop_front();
        }
    }

    // Copies a queued task's record out of a ring, so it can go to another worker.
    // The state word is left out of the byte copy: the worker may still be failing its
    // CAS on it (it lost to our revocation) while we copy, so only an atomic access may
    // touch it. dispatch() sets it afresh in the new ring.
    void spill(Task& task) {
        const std::size_t total = sizeof(TaskHeader) + task.size;
        constexpr std::size_t state_bytes = sizeof(TaskHeader::state);
        static_assert(offsetof(TaskHeader, state) == 0);
        const auto* record = reinterpret_cast<const std::byte*>(task.header_);
        task.spilled_.assign(total, std::byte{0});
        std::memcpy(task.spilled_.data() + state_bytes, record + state_bytes, total - state_bytes);
        task.header_ = nullptr;
    }

    // An idle worker takes the last queued-but-unstarted task of a busy one.
    void rebalance() {
        if (!pending_.empty()) return;
        for (auto& idle : workers_) {
            if (idle.pid <= 0 || idle.retiring || !idle.outstanding.empty()) continue;
            for (auto& busy : workers_) {
                if (&busy == &idle || busy.outstanding.size() < 2) continue;
                Task& t = *busy.outstanding.back();
                // Released records may already be overwritten: only touch one the worker
                // has not passed. (Only this thread writes records, under this lock.)
                if (busy.tasks.consumed_up_to(t.record_end_)) continue;
                std::uint32_t expected = task_queued;
                // acq_rel: pairs with the worker's CAS; exactly one of the two wins.
                if (!t.header_->state.compare_exchange_strong(expected, task_revoked, std::memory_order_acq_rel))
                    continue;
                spill(t);
                in_flight_.fetch_sub(1, std::memory_order_relaxed);
                auto moved = std::move(busy.outstanding.back());
                busy.outstanding.pop_back();
                if (dispatch(*moved, idle)) {
                    idle.outstanding.push_back(std::move(moved));
                } else {
                    pending_.push_front(std::move(moved));
                }
                break;
            }
        }
    }

    // ---- the result thread ----------------------------------------------------------------

    // Completes every result worker `w` has committed. Returns whether there was any.
    bool drain(Worker& w) {
        bool any = false;
        while (auto record = w.results.peek()) {
            any = true;
            if (record->kind == retiring_record) {
                w.results.release();
                std::lock_guard lock(mutex_);
                w.retiring = true;
                continue;
            }
            std::unique_ptr<Task> task;
            {
                std::lock_guard lock(mutex_);
                if (!w.outstanding.empty()) {
                    task = std::move(w.outstanding.front());
                    w.outstanding.pop_front();
                }
            }
            ResultHeader header;
            std::memcpy(&header, record->payload.data(), sizeof header);
            if (task) {
                in_flight_.fetch_sub(1, std::memory_order_relaxed);
                if (header.seq != task->seq) {
                    task->fail(exception_ptr_to<ProcessError>(
                        "multiprocessing: internal error: a result came back for the wrong task"));
                } else {
                    try {
                        task->complete(header, ByteReader(record->payload.subspan(sizeof header)));
                    } catch (...) {
                        task->fail(std::current_exception());
                    }
                }
            }
            task.reset();  // the task's own resources go before the record does
            w.results.release();
        }
        return any;
    }

    bool any_results() {
        for (auto& w : workers_)
            if (w.pid > 0 && !w.results.empty()) return true;
        return false;
    }

    void idle_wait() {
        const std::uint32_t bell = control_->doorbell.load(std::memory_order_acquire);
        // Poll only while workers hold tasks: then a result is due soon.
        if (in_flight_.load(std::memory_order_relaxed) > 0 && spin_until([&] { return any_results(); })) return;
        control_->parent_waiting.store(1, std::memory_order_relaxed);
        // seq_cst fence: Dekker with ResultChannel::commit().
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (!any_results() && control_->doorbell.load(std::memory_order_relaxed) == bell)
            futex_wait(control_->doorbell, bell, std::chrono::milliseconds(10));
        control_->parent_waiting.store(0, std::memory_order_relaxed);
    }

    // Reaps exited workers, fails the task each was running, requeues the ones it had
    // not started, replaces it; enforces task_timeout.
    void check_workers() {
        const auto now = monotonic_ns();
        for (auto& w : workers_) {
            if (w.pid <= 0) continue;
            if (options_.task_timeout) {
                const auto started = w.control->task_started_ns.load(std::memory_order_relaxed);
                if (started && now - started > options_.task_timeout->count() && !w.timed_out) {
                    w.timed_out = true;
                    w.child->signal(SIGKILL);
                }
            }
            if (options_.threads) {
                // acquire: pairs with the release store at the thread's end.
                if (w.retiring || w.thread_exited.load(std::memory_order_acquire)) {
                    w.thread.join();
                    worker_exited(w, 0);
                }
            } else if (auto status = w.child->poll_status(/*block=*/w.retiring)) {
                worker_exited(w, *status);
            }
        }
    }

    void worker_exited(Worker& w, int status) {
        drain(w);  // what it finished before dying still counts
        // acquire: pairs with worker_main's release store of `started`.
        const bool started = w.control->started.load(std::memory_order_acquire);
        const bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        if (started || killed || options_.start_method == StartMethod::fork) {
            unstarted_exits_ = 0;
        } else if (++unstarted_exits_ >= 3) {
            // A spawned worker that keeps exiting before its loop ran will never run one
            // (main() without freeze_support(), say): give up instead of respawning forever.
            std::string reason =
                "multiprocessing: the pool's spawned workers exit before they start (the last one " +
                describe_exit(status) + "). Does main() call mp::freeze_support() as its first line?";
            {
                std::lock_guard lock(mutex_);
                w.pid = 0;
                w.child.reset();
                fatal_reason_ = reason;
            }
            throw ProcessError(reason);
        }
        std::vector<std::unique_ptr<Task>> lost;
        const pid_t pid = w.pid;
        const bool timed_out = w.timed_out;
        // Retiring after maxtasksperchild is routine (Python's "cleaning up worker"); any other exit is not.
        if (const int level = w.retiring && WIFEXITED(status) && !WEXITSTATUS(status) ? logging::DEBUG : logging::WARNING;
            get_logger().is_enabled_for(level))
            get_logger().log(level, "pool worker (pid {}) {}{}{}", pid, describe_exit(status),
                             timed_out ? " after running past the pool's task_timeout"
                             : w.retiring ? " after its maxtasksperchild tasks" : "",
                             state_.load(std::memory_order_acquire) != State::terminating ? "; replacing it" : "");
        {
            std::lock_guard lock(mutex_);
            for (auto it = w.outstanding.rbegin(); it != w.outstanding.rend(); ++it) {
                in_flight_.fetch_sub(1, std::memory_order_relaxed);
                // acquire: pairs with the worker's CAS to started.
                if ((*it)->header_->state.load(std::memory_order_acquire) == task_started) {
                    lost.push_back(std::move(*it));
                } else {
                    spill(**it);
                    pending_.push_front(std::move(*it));
                }
            }
            w.outstanding.clear();
            w.pid = 0;
            w.child.reset();
            if (state_.load(std::memory_order_acquire) != State::terminating) spawn(w);
            pump();
        }
        // INFO: the caller gets this failure from get(), and the death itself was logged as a WARNING.
        if (!lost.empty())
            get_logger().info("task failed with {}: its worker (pid {}) {}", timed_out ? "TimeoutError" : "WorkerLostError",
                              pid, timed_out ? "ran past the pool's task_timeout and was killed" : "died while running it");
        for (auto& t : lost) {
            if (timed_out) {
                t->fail(exception_ptr_to<TimeoutError>(
                    "multiprocessing: the task ran past the pool's task_timeout; its worker (pid " +
                    std::to_string(pid) + ") was killed and replaced"));
                continue;
            }
            std::string running;
            if (const auto first = t->first_input_item())
                // relaxed: the worker is dead and reaped (see ResultChannel::running_item).
                running = " while running item " +
                          std::to_string(*first + t->header_->running_item.load(std::memory_order_relaxed)) +
                          " of the input (0-based)";
            t->fail(exception_ptr_to<WorkerLostError>(
                "multiprocessing: the worker process (pid " + std::to_string(pid) + ") running this task " +
                describe_exit(status) + running + "; the pool replaced it"));
        }
    }

    void result_loop() override {
        auto next_check = std::chrono::steady_clock::now();
        for (;;) {
            bool any = false;
            for (auto& w : workers_)
                if (w.pid > 0) any |= drain(w);
            if (any) {
                std::lock_guard lock(mutex_);
                pump();
                rebalance();
            }
            const State s = state_.load(std::memory_order_acquire);
            if (s == State::terminating)
                return shut_down_now(exception_ptr_to<ProcessError>(
                    "multiprocessing: the pool was terminated before this task completed"));
            const auto now = std::chrono::steady_clock::now();
            bool retiring = false;
            for (auto& w : workers_) retiring |= w.retiring;
            if (now >= next_check || retiring) {
                check_workers();
                next_check = now + std::chrono::milliseconds(10);
            }
            if (s == State::closed) {
                if (joining_.load(std::memory_order_acquire)) refill_sources();
                if (!sources_open() && all_done(workers_)) return stop_workers();
            }
            if (!any) idle_wait();
        }
    }

    void reap_all() {
        for (auto& w : workers_) {
            if (w.pid <= 0) continue;
            if (options_.threads)
                w.thread.join();
            else
                w.child->poll_status(/*block=*/true);
            std::lock_guard lock(mutex_);  // worker_pids() reads it from other threads
            w.pid = 0;
            w.child.reset();
        }
    }

    // After close(): every task is done; ask each worker to exit and reap it. A worker
    // whose ring stays full (it cannot be taking records: it hangs) is not waited on for
    // ever: a process is killed, a thread told to stop at its next task.
    void stop_workers() {
        for (auto& w : workers_) {
            if (w.pid <= 0) continue;
            const Deadline deadline(stop_record_wait_limit);
            if (w.tasks.reserve(0, [&] { return deadline.expired(); })) {
                w.tasks.commit(stop_record);
            } else if (options_.threads) {
                // release: pairs with the workers' acquire load before each task.
                control_->stop_now.store(1, std::memory_order_release);
            } else {
                get_logger().warning("pool worker (pid {}) took no stop request in {} s; killing it", w.pid,
                                     stop_record_wait_limit.count());
                w.child->signal(SIGKILL);
            }
        }
        reap_all();
    }
    static constexpr std::chrono::seconds stop_record_wait_limit{5};

    // terminate() (or a fatal error): kill every worker now and fail whatever did not
    // finish with `error`.
    void shut_down_now(std::exception_ptr error) override {
        if (options_.threads) {
            // release: pairs with the workers' acquire load before each task. A task
            // already running runs to its end (as in Python's ThreadPool.terminate).
            control_->stop_now.store(1, std::memory_order_release);
            for (auto& w : workers_) {
                if (w.pid <= 0) continue;
                if (w.tasks.try_reserve(0)) w.tasks.commit(stop_record);  // wakes an idle one now
            }
        } else {
            for (auto& w : workers_)
                if (w.pid > 0) w.child->signal(SIGKILL);
        }
        reap_all();
        auto unfinished = take_outstanding(workers_);
        in_flight_.store(0, std::memory_order_relaxed);
        fail_everything(std::move(unfinished), error);
    }

    CoreOptions options_;
    PoolLayout layout_;
    std::size_t max_task_size_ = 0;  // fixed at construction: read without the lock
    SharedSegment segment_;
    PoolControl* control_ = nullptr;

    // mutex_ (PoolExecutor's) also guards workers_[*].outstanding/pid/retiring and the ring producers.
    std::vector<Worker> workers_;
    std::size_t workers_started_ = 0;
    std::size_t unstarted_exits_ = 0;  // spawned workers in a row that exited before starting
    std::atomic<std::size_t> in_flight_{0};  // tasks in workers' rings; a polling hint only
};

}  // namespace multiprocessing::detail
