// multiprocessing.mpi: mp::Pool's API over MPI ranks, on this machine or across a
// cluster (what mpi4py.util.pool.Pool and mpi4py.futures.MPIPoolExecutor give Python).
//
// Opt-in: only this header needs MPI (link multiprocessing::mpi). The pool is mp::Pool's
// own BasicPool (chunking, results, imap's laziness, callbacks); only how tasks reach
// the workers differs: MPI messages to ranks instead of shared-memory rings to forked
// children. Tasks travel as they do to a spawned worker: functions as their place in the
// loaded image (every rank runs the same executable), arguments and results through the
// codec.
//
// Two ways to get workers, as mpi4py has:
//   * `mpirun -n N ./app`: every rank calls mp::mpi::serve() first in main; rank 0
//     returns from it and runs main, ranks 1..N-1 serve pools until rank 0 finalizes MPI
//     (then they exit without returning).
//   * `./app` alone (or `mpirun -n 1 ./app`): a Pool starts its workers with
//     MPI_Comm_spawn, running this executable with the same arguments; serve() is where
//     they take over, so main() must call it first here too.
//
// Faults. Open MPI does not report a dead peer to the others: a send to it succeeds and
// a receive from it never completes (4.1, checked). So each worker says where it runs
// (host, pid) and the pool watches the workers on its own host itself: one that dies
// fails the task it was running with WorkerLostError, gives its unstarted tasks to the
// others and, for spawned workers, is replaced. By default mpirun ends the whole job
// when any rank dies; run with `--enable-recovery` for rank 0 to survive it (not
// `--mca orte_abort_on_non_zero_status 0`: with it, mpirun itself hangs after a rank is
// SIGKILLed). A program run alone turns recovery on for the runtime it brings up.
// A dead worker on another host is not noticed (its tasks' get(timeout) times out).
#pragma once

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "detail/pool_core.hpp"
#include "detail/shared_object.hpp"
#include "pool.hpp"

namespace multiprocessing::mpi {

struct PoolOptions {
    // Under mpirun: how many of ranks 1..N-1 serve (all unless less is asked). Alone:
    // how many workers MPI_Comm_spawn starts (cpu_count() unless given).
    std::optional<std::size_t> processes{};
    // Python's initializer/initargs: runs on each worker before its first task. Its
    // arguments must be transferable (a shared handle cannot reach another machine).
    multiprocessing::detail::Initializer initializer{};
    // Spawned workers only: the MPI_Info "host" value, e.g. "node1,node2" (empty: where
    // Open MPI places them, on this host unless a hostfile says otherwise).
    std::string hosts{};
    // How long starting waits for every worker to report ready.
    std::chrono::milliseconds start_timeout{std::chrono::seconds(60)};
};

namespace detail {

namespace md = multiprocessing::detail;

// Message tags on a pool's communicator.
enum Tag : int {
    start_tag = 7101,  // parent -> worker: a pool starts: generation, initializer
    hello_tag,         // worker -> parent: generation, pid, host, initializer error
    task_tag,          // parent -> worker: TaskMessage + body
    result_tag,        // worker -> parent: generation + ResultHeader + body
    stop_tag,          // parent -> worker: the pool is done; drop tasks still queued
    stopped_tag,       // worker -> parent: stopped; nothing more comes for this pool
    exit_tag,          // parent -> mpirun-launched worker: leave serve(), exit
};

struct TaskMessage {
    md::code_address invoker;
    std::uint64_t seq;
    std::uint32_t generation;  // of the pool that sent it (see Runtime::claim_world)
    std::uint32_t reserved;
};

inline std::string error_text(int rc) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(rc, text, &length);
    return std::string(text, static_cast<std::size_t>(length));
}

inline void check(int rc, const char* what) {
    if (rc != MPI_SUCCESS) throw ProcessError(std::string("multiprocessing.mpi: ") + what + " failed: " + error_text(rc));
}

inline std::string host_name() {
    char name[256] = {};
    ::gethostname(name, sizeof name - 1);
    return name;
}

// Probing for a message: at once for the first ~100 us (a reply usually comes within a
// round trip), then sleeping, doubling up to 1 ms, so an idle rank costs no CPU (on a
// machine with fewer cores than ranks that matters: Open MPI's blocking receive spins).
class Backoff {
public:
    explicit Backoff(std::chrono::microseconds spin = std::chrono::microseconds(100)) : spin_(spin) {}
    void pause() {
        const auto now = std::chrono::steady_clock::now();
        if (!idle_) {
            idle_ = true;
            idle_since_ = now;
        }
        if (now - idle_since_ < spin_) {
            std::this_thread::yield();
            return;
        }
        std::this_thread::sleep_for(sleep_);
        sleep_ = std::min<std::chrono::microseconds>(sleep_ * 2, std::chrono::milliseconds(1));
    }
    void reset() noexcept {
        idle_ = false;
        sleep_ = std::chrono::microseconds(10);
    }

private:
    std::chrono::microseconds spin_;
    bool idle_ = false;
    std::chrono::steady_clock::time_point idle_since_{};
    std::chrono::microseconds sleep_{10};
};

// Receives the next message from `source` on `comm` with one of the given tags (or
// MPI_ANY_TAG) into `bytes`; returns its tag. Waits as a Backoff(spin) says, at most
// until `deadline` (nullopt then).
inline std::optional<int> receive(MPI_Comm comm, int source, std::initializer_list<int> tags, std::vector<std::byte>& bytes,
                                  std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt,
                                  std::chrono::microseconds spin = std::chrono::microseconds(100)) {
    Backoff backoff(spin);
    for (;;) {
        for (int tag : tags) {
            int flag = 0;
            MPI_Status status;
            check(MPI_Iprobe(source, tag, comm, &flag, &status), "MPI_Iprobe");
            if (!flag) continue;
            int count = 0;
            MPI_Get_count(&status, MPI_BYTE, &count);
            bytes.resize(static_cast<std::size_t>(count));
            check(MPI_Recv(bytes.data(), count, MPI_BYTE, status.MPI_SOURCE, status.MPI_TAG, comm, MPI_STATUS_IGNORE),
                  "MPI_Recv");
            return status.MPI_TAG;
        }
        if (deadline && std::chrono::steady_clock::now() >= *deadline) return std::nullopt;
        backoff.pause();
    }
}

inline void send(MPI_Comm comm, int dest, int tag, const std::vector<std::byte>& bytes) {
    check(MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, dest, tag, comm), "MPI_Send");
}

// The process's MPI state: initialized once (MPI_THREAD_MULTIPLE: a pool's own thread
// makes its MPI calls beside whatever the program makes), the communicator the
// mpirun-launched ranks serve on, and what finalizing must do first.
class Runtime {
public:
    static Runtime& get() {
        static Runtime runtime;
        return runtime;
    }

    void ensure_initialized() {
        std::lock_guard lock(mutex_);
        if (ready_) return;
        int initialized = 0;
        MPI_Initialized(&initialized);
        int provided = 0;
        if (!initialized) {
            // For the runtime a program started alone brings up (mpirun's own settings
            // win): a spawned worker that dies must not take the job down with it (nor
            // the other workers: orte_abort_on_non_zero_status=0 alone keeps those, but
            // then disconnecting from a dead one hangs), and a pool may have more
            // workers than the host has cores, as mp::Pool may.
            ::setenv("OMPI_MCA_orte_enable_recovery", "1", /*overwrite=*/0);
            ::setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", /*overwrite=*/0);
            check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
            std::atexit([] { Runtime::get().finalize_at_exit(); });
        } else {
            MPI_Query_thread(&provided);
        }
        if (provided < MPI_THREAD_MULTIPLE)
            throw ValueError("multiprocessing.mpi: MPI was initialized without MPI_THREAD_MULTIPLE (a pool makes MPI "
                             "calls from its own thread). Initialize it with MPI_Init_thread(..., MPI_THREAD_MULTIPLE, "
                             "...), or let mp::mpi::serve() initialize it");
        MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
        MPI_Comm_size(MPI_COMM_WORLD, &size_);
        MPI_Comm_get_parent(&parent_);
        ready_ = true;
    }

    int rank() const noexcept { return rank_; }
    int size() const noexcept { return size_; }
    MPI_Comm parent() const noexcept { return parent_; }
    bool serving() const noexcept { return serve_called_; }
    MPI_Comm world_pool_comm() const noexcept { return world_comm_; }

    // serve(): every rank of an mpirun-launched job calls it; they share a communicator
    // of their own, so the program's traffic on MPI_COMM_WORLD never meets the pool's.
    void begin_serving() {
        ensure_initialized();
        std::lock_guard lock(mutex_);
        if (serve_called_) return;
        serve_called_ = true;
        if (parent_ != MPI_COMM_NULL || size_ == 1) return;
        check(MPI_Comm_dup(MPI_COMM_WORLD, &world_comm_), "MPI_Comm_dup");
        MPI_Comm_set_errhandler(world_comm_, MPI_ERRORS_RETURN);
        if (rank_ == 0) {
            // MPI_Finalize frees MPI_COMM_SELF first, calling its attributes' delete
            // functions while MPI still works: the one hook that runs whoever finalizes.
            int key = MPI_KEYVAL_INVALID;
            check(MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, &Runtime::release_world_workers, &key, nullptr),
                  "MPI_Comm_create_keyval");
            check(MPI_Comm_set_attr(MPI_COMM_SELF, key, nullptr), "MPI_Comm_set_attr");
        }
    }

    // One pool at a time can use the mpirun-launched ranks; each is a new generation,
    // so a result a worker sends late for a terminated pool is told apart.
    std::optional<std::uint32_t> claim_world() {
        std::lock_guard lock(mutex_);
        if (world_claimed_) return std::nullopt;
        world_claimed_ = true;
        return ++generation_;
    }
    void release_world() {
        std::lock_guard lock(mutex_);
        world_claimed_ = false;
    }
    // A pool saw one of mpirun's ranks die. Finalizing is then left out everywhere:
    // Open MPI's MPI_Finalize waits for every rank of the job, the dead one included
    // (seen hanging with --enable-recovery).
    void note_rank_lost() noexcept { rank_lost_.store(true, std::memory_order_relaxed); }
    // What a worker's exit message says: whether to finalize MPI before exiting.
    static bool exit_finalizes(const std::vector<std::byte>& message) {
        return message.empty() || message.front() != std::byte{0};
    }

    std::uint32_t next_generation() {
        std::lock_guard lock(mutex_);
        return ++generation_;
    }

private:
    static int release_world_workers(MPI_Comm, int, void*, void*) {
        get().release_world_workers();
        return MPI_SUCCESS;
    }

    // Rank 0, finalizing (or leaving without it): tells ranks 1..N-1 to leave serve().
    void release_world_workers() {
        if (world_comm_ == MPI_COMM_NULL || workers_released_) return;
        workers_released_ = true;
        // Static: a send to a dead rank is left pending (its request freed) and may
        // read its buffer whenever. relaxed: set by a pool's thread joined before exit.
        static const std::uint8_t finalize_yes = 1, finalize_no = 0;
        const std::uint8_t* finalize = rank_lost_.load(std::memory_order_relaxed) ? &finalize_no : &finalize_yes;
        // Not a blocking send: one to a rank that died may never complete.
        std::vector<MPI_Request> requests(static_cast<std::size_t>(size_ - 1), MPI_REQUEST_NULL);
        for (int rank = 1; rank < size_; ++rank)
            MPI_Isend(finalize, 1, MPI_BYTE, rank, exit_tag, world_comm_, &requests[static_cast<std::size_t>(rank - 1)]);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        int done = 0;
        while (!done && std::chrono::steady_clock::now() < deadline) {
            MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE);
            if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        for (auto& request : requests)
            if (request != MPI_REQUEST_NULL) MPI_Request_free(&request);
    }

    void finalize_at_exit() {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (finalized) return;
        if (rank_lost_.load(std::memory_order_relaxed)) {
            release_world_workers();  // they leave without finalizing too
            return;
        }
        MPI_Finalize();
    }


    std::mutex mutex_;
    bool ready_ = false;
    bool serve_called_ = false;
    bool workers_released_ = false;
    std::atomic<bool> rank_lost_{false};
    bool world_claimed_ = false;
    std::uint32_t generation_ = 0;
    int rank_ = 0;
    int size_ = 1;
    MPI_Comm parent_ = MPI_COMM_NULL;
    MPI_Comm world_comm_ = MPI_COMM_NULL;
};

// ---- the worker's side -------------------------------------------------------------------

// Runs one task message of pool `generation`; its result (or its error) ends up in
// `channel`. Returns false for a task of another pool, which is dropped.
inline bool run_task(const std::vector<std::byte>& message, std::uint32_t generation, md::ResultChannel& channel) {
    md::ByteReader in(message);
    TaskMessage header;
    in.read(&header, sizeof header);
    if (header.generation != generation) return false;
    try {
        md::code_at<md::Invoker>(header.invoker)(in, header.seq, channel);
    } catch (...) {
        // An invoker only throws before it commits: the task still gets one result.
        channel.write_error(header.seq, md::describe_current_exception());
    }
    return true;
}

enum class Served {
    done,           // a spawned worker's pool stopped, or rank 0 said exit: finalize, exit
    exit_at_once,   // rank 0 said exit without finalizing (a rank died: see note_rank_lost)
    parent_gone,    // the spawning parent died (noticed within 100 ms on its host)
};

// Serves pools for the parent (rank `parent` of `comm`) until it says exit (an
// mpirun-launched rank), its one pool stops (a spawned one), or it dies.
inline Served serve_loop(MPI_Comm comm, int parent, bool spawned) {
    std::vector<std::byte> message;
    std::vector<std::byte> result;
    std::vector<std::byte> reply;
    md::ResultChannel channel(result);
    std::uint32_t generation = 0;
    bool in_pool = false;
    pid_t parent_pid = 0;  // when it runs on this host: a spawned worker outlives it by at most 100 ms
    for (;;) {
        std::optional<int> next;
        // A worker polls for 1 ms after its last message before it starts sleeping: the
        // next task of a busy pool comes sooner than that.
        while (!(next = receive(comm, parent, {MPI_ANY_TAG}, message,
                                std::chrono::steady_clock::now() + std::chrono::milliseconds(100),
                                std::chrono::milliseconds(1)))) {
            if (spawned && parent_pid > 0 && !md::task_alive(parent_pid)) return Served::parent_gone;
        }
        const int tag = *next;
        if (tag == exit_tag) return Runtime::exit_finalizes(message) ? Served::done : Served::exit_at_once;
        if (tag == start_tag) {
            md::ByteReader in(message);
            generation = md::get<std::uint32_t>(in);
            const auto pid = md::get<std::int64_t>(in);
            if (md::get<std::string>(in) == host_name()) parent_pid = static_cast<pid_t>(pid);
            md::PortableCall init;
            init.runner = md::get<md::code_address>(in);
            init.payload = md::get<std::vector<std::byte>>(in);
            std::string error;
            if (init) {
                try {
                    md::ByteReader args(init.payload);
                    md::code_at<void(md::ByteReader&)>(init.runner)(args);
                } catch (...) {
                    const auto info = md::describe_current_exception();
                    error = info.type + ": " + info.what;
                }
            }
            in_pool = error.empty();
            send(comm, parent, hello_tag,
                 md::encode_values(generation, static_cast<std::int64_t>(::getpid()), host_name(), error));
            continue;
        }
        if (tag == stop_tag) {
            // Tasks sent before the stop are dropped unrun (terminate), so they do not
            // hold the next pool up.
            in_pool = false;
            while (true) {
                int flag = 0;
                check(MPI_Iprobe(parent, task_tag, comm, &flag, MPI_STATUS_IGNORE), "MPI_Iprobe");
                if (!flag) break;
                receive(comm, parent, {task_tag}, message);
            }
            // The parent waits for this before it lets go of a spawned worker: nothing
            // of ours may still be on its way then (Open MPI reuses the communicator's
            // id, and a stray message on it stalls the next pool's).
            send(comm, parent, stopped_tag, {});
            if (spawned) return Served::done;
            continue;
        }
        if (!in_pool) continue;  // a task of a pool that has stopped
        // A stop may have been sent behind tasks already queued (terminate): look first.
        int stopping = 0;
        check(MPI_Iprobe(parent, stop_tag, comm, &stopping, MPI_STATUS_IGNORE), "MPI_Iprobe");
        if (stopping) continue;  // the stop is taken next round, the task dropped
        if (!run_task(message, generation, channel)) continue;
        channel.take_committed();
        reply.resize(sizeof generation + result.size());
        std::memcpy(reply.data(), &generation, sizeof generation);
        std::memcpy(reply.data() + sizeof generation, result.data(), result.size());
        send(comm, parent, result_tag, reply);
    }
}

}  // namespace detail

// First thing in main(), on every rank. On rank 0 of an mpirun-launched job, and in a
// program started alone, it initializes MPI (if the program has not) and returns. On
// ranks 1..N-1, and in a worker a Pool spawned, it serves pools and then ends the
// process: it does not return there.
inline void serve() {
    auto& runtime = detail::Runtime::get();
    runtime.begin_serving();
    if (runtime.parent() != MPI_COMM_NULL) {
        MPI_Comm parent = runtime.parent();
        MPI_Comm_set_errhandler(parent, MPI_ERRORS_RETURN);
        // A dead parent cannot take part in disconnecting or finalizing: just go.
        if (detail::serve_loop(parent, 0, /*spawned=*/true) != detail::Served::done) std::_Exit(0);
        MPI_Comm_disconnect(&parent);
        MPI_Finalize();
        std::exit(0);
    }
    if (runtime.size() > 1 && runtime.rank() != 0) {
        if (detail::serve_loop(runtime.world_pool_comm(), 0, /*spawned=*/false) != detail::Served::done)
            std::_Exit(0);
        MPI_Finalize();
        std::exit(0);
    }
}

// The rank of this process in MPI_COMM_WORLD (0 in a program started alone).
inline int rank() {
    auto& runtime = detail::Runtime::get();
    runtime.ensure_initialized();
    return runtime.rank();
}

namespace detail {

// The parent's side: a PoolExecutor whose workers are MPI ranks.
class MpiPoolCore final : public md::PoolExecutor {
public:
    explicit MpiPoolCore(PoolOptions options) : options_(std::move(options)) {
        auto& runtime = Runtime::get();
        runtime.ensure_initialized();
        if (runtime.parent() != MPI_COMM_NULL && !runtime.serving())
            throw ValueError("mp::mpi::Pool: this process is a worker a Pool spawned, but main() did not call "
                             "mp::mpi::serve() first, so it runs main() instead of serving. Make mp::mpi::serve() "
                             "the first line of main()");
        if (runtime.size() > 1) {
            if (!runtime.serving())
                throw ValueError("mp::mpi::Pool: under mpirun, every rank must call mp::mpi::serve() first in main(): "
                                 "ranks 1.." + std::to_string(runtime.size() - 1) +
                                 " serve the pool from there while rank 0 runs main()");
            if (runtime.rank() != 0)
                throw ValueError("mp::mpi::Pool: only rank 0 makes pools (the other ranks serve them)");
            const auto ranks = static_cast<std::size_t>(runtime.size() - 1);
            if (options_.processes && *options_.processes > ranks)
                throw ValueError("mp::mpi::Pool: " + std::to_string(*options_.processes) + " processes asked for, but " +
                                 "mpirun started " + std::to_string(ranks) + " worker ranks (-n " +
                                 std::to_string(runtime.size()) + "); ask for at most that many");
            auto generation = runtime.claim_world();
            if (!generation)
                throw ValueError("mp::mpi::Pool: the ranks mpirun started serve one Pool at a time, and another is "
                                 "still open; close() and join() it (or let it go out of scope) first");
            generation_ = *generation;
            world_ = true;
            comms_.push_back(runtime.world_pool_comm());
            const std::size_t n = options_.processes.value_or(ranks);
            for (std::size_t i = 0; i < n; ++i) add_worker(comms_.front(), static_cast<int>(i + 1));
        } else {
            generation_ = runtime.next_generation();
            spawn_count_ = options_.processes.value_or(cpu_count());
        }
        if (options_.initializer) {
            initializer_ = options_.initializer.portable(0);
            if (!initializer_.fds.numbers().empty()) {
                if (world_) runtime.release_world();
                throw ValueError("mp::mpi::Pool: the initializer's arguments include a shared handle (a Lock, Queue, "
                                 "Value...), which cannot reach another machine; pass plain values");
            }
        }
        local_host_ = host_name();
    }

    ~MpiPoolCore() override {
        stop_thread();
        if (world_) Runtime::get().release_world();
    }

    std::size_t processes() const noexcept override { return world_ ? workers_.size() : spawn_count_; }
    std::size_t max_task_size() const noexcept override { return INT_MAX - sizeof(TaskMessage); }
    std::vector<pid_t> worker_pids() override {
        std::lock_guard lock(mutex_);
        std::vector<pid_t> pids;
        for (auto& w : workers_)
            if (w.live) pids.push_back(w.pid);
        return pids;
    }

private:
    struct Worker {
        MPI_Comm comm = MPI_COMM_NULL;
        int rank = -1;
        bool ready = false;  // said hello: it serves this pool
        bool live = false;   // ready, its initializer ran, and not dead: it is given tasks
        bool dead = false;
        pid_t pid = 0;
        std::string host;
        bool local = false;  // on this host: watched through its pid
        std::deque<std::unique_ptr<md::Task>> outstanding;  // sent order == result order
    };
    struct Send {
        MPI_Request request = MPI_REQUEST_NULL;
        std::vector<std::byte> bytes;
    };

    void add_worker(MPI_Comm comm, int rank) {
        Worker w;
        w.comm = comm;
        w.rank = rank;
        workers_.push_back(std::move(w));
    }

    // ---- starting ----

    void start_workers() override {
        if (!world_) spawn_workers(spawn_count_);
        greet(0);
    }

    // MPI_Comm_spawn: `count` more workers running this executable with its arguments.
    void spawn_workers(std::size_t count) {
        std::vector<std::string> args = own_arguments();
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);  // a failed spawn throws, not aborts
        MPI_Info info = MPI_INFO_NULL;
        if (!options_.hosts.empty()) {
            MPI_Info_create(&info);
            MPI_Info_set(info, "host", options_.hosts.c_str());
        }
        std::string exe = executable();
        MPI_Comm comm = MPI_COMM_NULL;
        std::vector<int> errcodes(count);
        const int rc = MPI_Comm_spawn(exe.c_str(), argv.data(), static_cast<int>(count), info, 0, MPI_COMM_SELF, &comm,
                                      errcodes.data());
        if (info != MPI_INFO_NULL) MPI_Info_free(&info);
        check(rc, "MPI_Comm_spawn of the pool's workers");
        for (int code : errcodes) check(code, "MPI_Comm_spawn of a pool worker");
        MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
        comms_.push_back(comm);
        std::lock_guard lock(mutex_);
        for (std::size_t i = 0; i < count; ++i) add_worker(comm, static_cast<int>(i));
    }

    static std::string executable() {
        char path[4096];
        const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
        if (n <= 0) throw ProcessError("multiprocessing.mpi: cannot find this program's executable (/proc/self/exe)");
        return std::string(path, static_cast<std::size_t>(n));
    }

    static std::vector<std::string> own_arguments() {
        std::ifstream cmdline("/proc/self/cmdline", std::ios::binary);
        std::vector<std::string> args;
        std::string arg;
        while (std::getline(cmdline, arg, '\0')) args.push_back(arg);
        if (!args.empty()) args.erase(args.begin());  // the program itself
        return args;
    }

    // Sends workers_[first...] the start message and waits for each one's hello.
    void greet(std::size_t first) {
        const auto start = md::encode_values(generation_, static_cast<std::int64_t>(::getpid()), local_host_,
                                             initializer_.runner, initializer_.payload);
        for (std::size_t i = first; i < workers_.size(); ++i) send(workers_[i].comm, workers_[i].rank, start_tag, start);
        // Every hello is taken, also after a failed one: a worker that said hello is
        // serving, and releasing it waits for it to stop (see release_workers).
        const auto deadline = std::chrono::steady_clock::now() + options_.start_timeout;
        std::vector<std::byte> hello;
        std::string failure;
        for (std::size_t i = first; i < workers_.size(); ++i) {
            Worker& w = workers_[i];
            for (;;) {
                if (!receive(w.comm, w.rank, {hello_tag}, hello, deadline)) {
                    if (failure.empty())
                        failure = "worker rank " + std::to_string(w.rank) + " did not report ready within " +
                                  std::to_string(options_.start_timeout.count()) +
                                  " ms. Does main() call mp::mpi::serve() as its first line?";
                    break;
                }
                md::ByteReader in(hello);
                if (md::get<std::uint32_t>(in) != generation_) continue;  // a late hello of an earlier pool
                const auto pid = md::get<std::int64_t>(in);
                auto host = md::get<std::string>(in);
                auto error = md::get<std::string>(in);
                if (!error.empty() && failure.empty())
                    failure = "the pool's initializer failed on worker rank " + std::to_string(w.rank) + " (host " +
                              host + ", pid " + std::to_string(pid) + "): " + error;
                std::lock_guard lock(mutex_);
                w.pid = static_cast<pid_t>(pid);
                w.local = host == local_host_;
                w.host = std::move(host);
                w.ready = true;
                w.live = error.empty();
                break;
            }
        }
        if (!failure.empty()) {
            {
                std::lock_guard lock(mutex_);
                fatal_reason_ = failure;
            }
            throw ProcessError("multiprocessing.mpi: " + failure);
        }
        get_logger().debug("mpi pool: {} workers ready", workers_.size() - first);
    }

    // ---- scheduling ----

    // mutex_ held (submit). The submitting thread sends itself (MPI_THREAD_MULTIPLE):
    // handing the task to the pool's thread would add a thread wake-up to every round
    // trip. The pool's thread is poked to poll for the result.
    void pump() override {
        send_pending_locked();
        poke();
    }

    void poke() noexcept override {
        // release: a state change or new task before it is seen by the pool's thread.
        doorbell_.fetch_add(1, std::memory_order_release);
        md::futex_wake(doorbell_);
    }

    std::string too_large_message(const md::Task& task) const override {
        return "multiprocessing.mpi: a task's arguments encode to " + std::to_string(task.size) +
               " bytes, more than one MPI message carries (" + std::to_string(max_task_size()) +
               "); pass large data in pieces";
    }

    Worker* least_loaded() {
        Worker* best = nullptr;
        for (auto& w : workers_) {
            if (!w.live || w.outstanding.size() >= prefetch) continue;
            if (!best || w.outstanding.size() < best->outstanding.size()) best = &w;
        }
        return best;
    }

    // Sends pending tasks to workers with room; returns whether it sent any.
    bool send_pending() {
        std::lock_guard lock(mutex_);
        return send_pending_locked();
    }
    bool send_pending_locked() {
        bool any = false;
        while (!pending_.empty()) {
            Worker* w = least_loaded();
            if (!w) break;
            auto& task = *pending_.front();
            Send& s = sends_.emplace_back();
            s.bytes.resize(sizeof(TaskMessage) + task.size);
            const TaskMessage header{task.invoker(), task.seq, generation_, 0};
            std::memcpy(s.bytes.data(), &header, sizeof header);
            task.write_body(s.bytes.data() + sizeof header);
            check(MPI_Isend(s.bytes.data(), static_cast<int>(s.bytes.size()), MPI_BYTE, w->rank, task_tag, w->comm,
                            &s.request),
                  "MPI_Isend of a task");
            w->outstanding.push_back(std::move(pending_.front()));
            pending_.pop_front();
            in_flight_.fetch_add(1, std::memory_order_relaxed);
            any = true;
        }
        return any;
    }

    // Frees the buffers of sends that completed (in order: sends to one worker complete in order).
    void reap_sends() {
        std::lock_guard lock(mutex_);
        while (!sends_.empty()) {
            int done = 0;
            MPI_Test(&sends_.front().request, &done, MPI_STATUS_IGNORE);
            if (!done) return;
            sends_.pop_front();
        }
    }

    Worker* find(MPI_Comm comm, int rank) {
        for (auto& w : workers_)
            if (w.comm == comm && w.rank == rank) return &w;
        return nullptr;
    }

    // Completes every result that has arrived; returns whether there was any.
    bool receive_results() {
        bool any = false;
        for (MPI_Comm comm : comms_) {
            for (;;) {
                int flag = 0;
                MPI_Status status;
                if (MPI_Iprobe(MPI_ANY_SOURCE, result_tag, comm, &flag, &status) != MPI_SUCCESS || !flag) break;
                int count = 0;
                MPI_Get_count(&status, MPI_BYTE, &count);
                result_.resize(static_cast<std::size_t>(count));
                check(MPI_Recv(result_.data(), count, MPI_BYTE, status.MPI_SOURCE, result_tag, comm, MPI_STATUS_IGNORE),
                      "MPI_Recv of a result");
                any = true;
                complete(find(comm, status.MPI_SOURCE));
            }
        }
        return any;
    }

    void complete(Worker* w) {
        std::uint32_t generation = 0;
        if (result_.size() < sizeof generation + sizeof(md::ResultHeader)) return;
        std::memcpy(&generation, result_.data(), sizeof generation);
        if (!w || generation != generation_) return;  // a late result for an earlier pool
        std::unique_ptr<md::Task> task;
        {
            std::lock_guard lock(mutex_);
            if (w->outstanding.empty()) return;
            task = std::move(w->outstanding.front());
            w->outstanding.pop_front();
            in_flight_.fetch_sub(1, std::memory_order_relaxed);
        }
        md::ResultHeader header;
        std::memcpy(&header, result_.data() + sizeof generation, sizeof header);
        if (header.seq != task->seq) {
            task->fail(md::exception_ptr_to<ProcessError>(
                "multiprocessing.mpi: internal error: a result came back for the wrong task"));
            return;
        }
        try {
            task->complete(header, md::ByteReader(std::span<const std::byte>(result_).subspan(sizeof generation +
                                                                                             sizeof header)));
        } catch (...) {
            task->fail(std::current_exception());
        }
    }

    // ---- faults ----

    // Workers on this host are watched through their pids (Open MPI tells nothing).
    void check_workers() {
        // By index: replacing a worker appends to workers_.
        for (std::size_t i = 0; i < workers_.size(); ++i)
            if (workers_[i].live && workers_[i].local && !md::task_alive(workers_[i].pid)) worker_lost(workers_[i]);
    }

    void worker_lost(Worker& w) {
        std::vector<std::unique_ptr<md::Task>> lost;
        {
            std::lock_guard lock(mutex_);
            w.live = false;
            w.dead = true;
            // The first outstanding task is the one it was running; the rest it had not
            // started (a worker runs its tasks in the order they were sent): they go to
            // the others.
            for (std::size_t i = w.outstanding.size(); i-- > 1;) pending_.push_front(std::move(w.outstanding[i]));
            if (!w.outstanding.empty()) lost.push_back(std::move(w.outstanding.front()));
            in_flight_.fetch_sub(w.outstanding.size(), std::memory_order_relaxed);
            w.outstanding.clear();
        }
        const bool replace = !world_ && state_.load(std::memory_order_acquire) != State::terminating;
        if (world_) Runtime::get().note_rank_lost();
        get_logger().warning("mpi pool worker rank {} (pid {} on {}) died{}", w.rank, w.pid, w.host,
                             replace ? "; replacing it" : "");
        for (auto& t : lost)
            t->fail(md::exception_ptr_to<WorkerLostError>(
                "multiprocessing.mpi: the worker rank " + std::to_string(w.rank) + " (pid " + std::to_string(w.pid) +
                " on " + w.host + ") running this task died" + (replace ? "; the pool replaced it" : "")));
        if (replace) {
            const std::size_t first = workers_.size();
            spawn_workers(1);
            greet(first);
        } else if (std::none_of(workers_.begin(), workers_.end(), [](auto& x) { return x.live; })) {
            std::lock_guard lock(mutex_);
            fatal_reason_ = "every worker rank died";
            throw WorkerLostError("multiprocessing.mpi: every worker rank of the pool died");
        }
    }

    // ---- the pool's thread ----

    void result_loop() override {
        auto next_check = std::chrono::steady_clock::now();
        Backoff backoff;
        for (;;) {
            const std::uint32_t bell = doorbell_.load(std::memory_order_acquire);
            bool any = send_pending();
            any |= receive_results();
            reap_sends();
            const State s = state_.load(std::memory_order_acquire);
            if (s == State::terminating)
                return shut_down_now(md::exception_ptr_to<ProcessError>(
                    "multiprocessing: the pool was terminated before this task completed"));
            const auto now = std::chrono::steady_clock::now();
            if (now >= next_check) {
                check_workers();
                next_check = now + std::chrono::milliseconds(20);
            }
            if (s == State::closed) {
                if (joining_.load(std::memory_order_acquire)) refill_sources();
                if (!sources_open() && all_done(workers_)) return stop_workers();
            }
            if (any) {
                backoff.reset();
            } else if (in_flight_.load(std::memory_order_relaxed) > 0) {
                backoff.pause();  // a result is due: poll MPI
            } else {
                md::futex_wait(doorbell_, bell, std::chrono::milliseconds(20));  // nothing out: sleep until poked
            }
        }
    }

    // Posts a message without waiting for it to go: a send to a worker that died
    // unnoticed may never complete (a blocking one would hang).
    void post(Worker& w, int tag) {
        std::lock_guard lock(mutex_);
        Send& s = sends_.emplace_back();
        check(MPI_Isend(nullptr, 0, MPI_BYTE, w.rank, tag, w.comm, &s.request), "MPI_Isend");
    }

    // Tells every worker the pool is done (it drops tasks still queued to it) and lets
    // go of the spawned ones. No worker is killed, not even by terminate(): killing one
    // of mpirun's ranks ends the job, and after spawned workers were killed, spawning
    // the next pool's sometimes hung in MPI_Comm_spawn (their MPI_Init never returned;
    // Open MPI 4.1, 1 run in ~7). A worker finishes the task it is running.
    void release_workers() {
        // Also a worker that never said hello (its initializer failed): a spawned one
        // waits for this to end.
        for (auto& w : workers_)
            if (!w.dead) post(w, stop_tag);
        if (!world_) {
            // A spawned worker is let go only once it has stopped, so that nothing it
            // sent is still on its way (see serve_loop). Results it sends meanwhile
            // (terminate) are dropped. A late result from an mpirun-launched rank is
            // dropped by the next pool instead (its generation differs).
            std::vector<std::byte> ignored;
            for (auto& w : workers_) {
                // One that never said hello may never answer (it does not serve).
                while (w.ready && !w.dead) {
                    auto tag = receive(w.comm, w.rank, {result_tag, stopped_tag}, ignored,
                                       std::chrono::steady_clock::now() + std::chrono::milliseconds(20));
                    if (tag == stopped_tag) break;
                    if (!tag && w.local && !md::task_alive(w.pid)) w.dead = true;
                }
            }
        }
        // Sends to a dead worker never complete; nobody will read their buffers again.
        {
            std::lock_guard lock(mutex_);
            for (auto& s : sends_) {
                int done = 0;
                MPI_Test(&s.request, &done, MPI_STATUS_IGNORE);
                if (!done) MPI_Request_free(&s.request);
            }
            sends_.clear();
        }
        if (world_) return;
        for (MPI_Comm& comm : comms_) {
            // Disconnecting waits for both sides: a comm with a worker that is dead or
            // never served is only freed.
            const bool all_stopped = std::all_of(workers_.begin(), workers_.end(),
                                                 [&](auto& w) { return w.comm != comm || (w.ready && !w.dead); });
            if (all_stopped)
                MPI_Comm_disconnect(&comm);
            else
                MPI_Comm_free(&comm);
        }
        comms_.clear();
        std::lock_guard lock(mutex_);
        for (auto& w : workers_) w.live = false;
    }

    void stop_workers() { release_workers(); }

    void shut_down_now(std::exception_ptr error) override {
        auto unfinished = take_outstanding(workers_);
        in_flight_.store(0, std::memory_order_relaxed);
        // Callers waiting on results get `error` first: releasing waits for each worker
        // to finish the task it is running.
        fail_everything(std::move(unfinished), error);
        try {
            release_workers();
        } catch (...) {
            // The workers are as gone as they can be.
        }
    }

    PoolOptions options_;
    md::PortableCall initializer_;
    bool world_ = false;
    std::uint32_t generation_ = 0;
    std::size_t spawn_count_ = 0;
    std::string local_host_;
    // The pool's thread only, after start (worker_pids() reads `live`/`pid` under mutex_):
    std::deque<Worker> workers_;  // a deque: appending a replacement moves none
    std::vector<MPI_Comm> comms_;
    std::deque<Send> sends_;
    std::vector<std::byte> result_;
    // Tasks sent and not yet answered: changed under mutex_, read without it by the
    // pool's thread as a hint (relaxed) whether to poll MPI or sleep until poked.
    std::atomic<std::size_t> in_flight_{0};
    std::atomic<std::uint32_t> doorbell_{0};  // a futex word: bumped by poke()
};

// The transport BasicPool is given: tasks are encoded, as for worker processes.
struct MpiTransport : md::ProcessTransport {
    using Options = PoolOptions;
    static std::shared_ptr<md::PoolExecutor> make_executor(PoolOptions options) {
        return std::make_shared<MpiPoolCore>(std::move(options));
    }
};

}  // namespace detail

// mp::Pool's API (apply, map, imap, starmap, their _async forms, close, terminate,
// join) over MPI ranks.
using Pool = BasicPool<detail::MpiTransport>;

}  // namespace multiprocessing::mpi
