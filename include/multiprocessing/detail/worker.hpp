// The worker side of a Pool: the layout of the pool's shared segment, the loop each
// worker runs, and the "invokers" that decode a task, run it and encode its result
// straight into the worker's result ring.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <exception>
#include <functional>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "callable.hpp"
#include "codec.hpp"
#include "remote_exception.hpp"
#include "ring.hpp"
#include "../util.hpp"

namespace multiprocessing::detail {

// ---- the shared segment ------------------------------------------------------------------

// Record kinds on a worker's task ring.
inline constexpr std::uint32_t task_record = 1;
inline constexpr std::uint32_t stop_record = 2;
// Record kinds on a worker's result ring.
inline constexpr std::uint32_t result_record = 1;
inline constexpr std::uint32_t retiring_record = 2;

// A task's life in a ring: queued until a worker starts it or the parent takes it back
// (to give it to an idle worker). The CAS between the two is the single point that says
// who owns the task, so a worker that dies owned exactly the tasks marked started.
inline constexpr std::uint32_t task_queued = 0;
inline constexpr std::uint32_t task_started = 1;
inline constexpr std::uint32_t task_revoked = 2;

struct TaskHeader {
    std::atomic<std::uint32_t> state;
    // Which item of a map chunk the worker is running (0-based in the chunk): read by the
    // parent only after the worker died, to say which item was running (WorkerLostError).
    std::atomic<std::uint32_t> running_item;
    code_address invoker;
    std::uint64_t seq;
};
static_assert(sizeof(TaskHeader) % record_align == 0);

// How a result's body is laid out.
enum class ResultFormat : std::uint32_t {
    value,           // one encoded value (nothing for void)
    error,           // one ExceptionInfo
    chunk_values,    // `count` raw values of a trivially copyable type, all successful
    chunk_outcomes,  // `count` × {u8 ok; value or ExceptionInfo}
};

struct ResultHeader {
    std::uint64_t seq;
    ResultFormat format;
    std::uint32_t count;
};
static_assert(sizeof(ResultHeader) % record_align == 0);

struct PoolControl {
    // Bumped by a worker after each result it commits; the parent's result thread
    // sleeps on it when every result ring is empty.
    alignas(cache_line) std::atomic<std::uint32_t> doorbell{0};
    std::atomic<std::uint32_t> parent_waiting{0};
    // Set when a pool of threads is terminated: a thread cannot be killed, so each
    // worker stops before its next task instead (a process worker is SIGKILLed).
    std::atomic<std::uint32_t> stop_now{0};
};

struct WorkerControl {
    RingControl tasks;
    RingControl results;
    // CLOCK_MONOTONIC nanoseconds when the running task started (0: none), for
    // task_timeout; the parent only reads it.
    alignas(cache_line) std::atomic<std::int64_t> task_started_ns{0};
    // Set by the worker once it runs (a spawned one: once it has taken over in
    // freeze_support()), so the parent can tell a worker that never started.
    std::atomic<std::uint32_t> started{0};
};

// Where everything is in a pool's shared segment; the parent and a spawned worker
// compute it from the same three numbers.
struct PoolLayout {
    std::size_t processes = 1;
    std::uint32_t task_ring_bytes = 0;
    std::uint32_t result_ring_bytes = 0;

    static std::size_t round_up(std::size_t n) noexcept { return (n + 4095) & ~std::size_t(4095); }
    std::size_t control_bytes() const noexcept {
        return round_up(sizeof(PoolControl) + processes * sizeof(WorkerControl));
    }
    std::size_t per_worker() const noexcept { return std::size_t(task_ring_bytes) + result_ring_bytes; }
    std::size_t total() const noexcept { return control_bytes() + processes * per_worker(); }

    PoolControl* pool(std::byte* base) const noexcept { return reinterpret_cast<PoolControl*>(base); }
    WorkerControl* worker(std::byte* base, std::size_t i) const noexcept {
        return reinterpret_cast<WorkerControl*>(base + sizeof(PoolControl) + i * sizeof(WorkerControl));
    }
    std::byte* task_data(std::byte* base, std::size_t i) const noexcept {
        return base + control_bytes() + i * per_worker();
    }
    std::byte* result_data(std::byte* base, std::size_t i) const noexcept {
        return task_data(base, i) + task_ring_bytes;
    }
};

inline std::int64_t monotonic_ns() noexcept {
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// ---- writing results ---------------------------------------------------------------------

// Where a worker writes a task's result: its end of its result ring, or a buffer in its
// own memory that a transport then sends on (an MPI rank: mpi.hpp).
class ResultChannel {
public:
    ResultChannel(Ring& ring, PoolControl& pool) noexcept : ring_(&ring), pool_(&pool) {}
    explicit ResultChannel(std::vector<std::byte>& buffer) noexcept : buffer_(&buffer) {}

    // Room for a result body of `size` bytes after its header. A second reserve before
    // commit abandons the first.
    std::byte* reserve(std::uint64_t seq, ResultFormat format, std::uint32_t count, std::size_t size) {
        std::byte* p = nullptr;
        if (buffer_) {
            buffer_->resize(sizeof(ResultHeader) + size);
            p = buffer_->data();
        } else {
            if (sizeof(ResultHeader) + size > ring_->max_payload())
                throw ProcessError("multiprocessing: a task's result is too large for the pool's result ring (" +
                                   std::to_string(size) + " bytes, at most " + std::to_string(ring_->max_payload()) +
                                   "); return it in pieces");
            // The parent drains results promptly; if it is gone, PR_SET_PDEATHSIG kills us.
            p = ring_->reserve(sizeof(ResultHeader) + size, [] { return false; });
        }
        ResultHeader h{seq, format, count};
        std::memcpy(p, &h, sizeof h);
        return p + sizeof(ResultHeader);
    }

    void commit(std::uint32_t kind = result_record) {
        if (buffer_) {
            committed_ = kind;
            return;
        }
        ring_->commit(kind);
        // release: not needed for the data (the ring's head publishes it); relaxed would
        // do, but the bump must not be reordered before the commit's head store, which
        // the seq_cst fence below also guarantees.
        pool_->doorbell.fetch_add(1, std::memory_order_release);
        // seq_cst fence: Dekker with the parent's "set parent_waiting, fence, re-check
        // rings": either it sees our record or we see it waiting and wake it.
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (pool_->parent_waiting.load(std::memory_order_relaxed)) futex_wake(pool_->doorbell);
    }

    // Where running_item() records the item being run: the task's header (or nowhere).
    void track_items_in(std::atomic<std::uint32_t>* running_item) noexcept { running_item_ = running_item; }
    void running_item(std::uint32_t index) noexcept {
        // relaxed: read by the parent only after this process died and was reaped, which
        // orders every store it made before (the kernel's exit and wait).
        if (running_item_) running_item_->store(index, std::memory_order_relaxed);
    }

    // A buffer channel: the kind of the record committed since the last take (0: none).
    std::uint32_t take_committed() noexcept { return std::exchange(committed_, 0); }

    template <class T>
    void write(std::uint64_t seq, ResultFormat format, const T& value) {
        const std::size_t size = encoded_size(value);
        ByteWriter w(reserve(seq, format, 1, size));
        put(w, value);
        commit();
    }

    void write_error(std::uint64_t seq, const ExceptionInfo& info) { write(seq, ResultFormat::error, info); }

private:
    Ring* ring_ = nullptr;
    PoolControl* pool_ = nullptr;
    std::vector<std::byte>* buffer_ = nullptr;
    std::atomic<std::uint32_t>* running_item_ = nullptr;
    std::uint32_t committed_ = 0;
};

// What a worker runs for one task: decodes its arguments from `in` (the task's body, in
// the shared ring) and writes exactly one result to `out`.
using Invoker = void(ByteReader& in, std::uint64_t seq, ResultChannel& out);

template <class F, class... A>
void invoke_apply(ByteReader& in, std::uint64_t seq, ResultChannel& out) {
    using R = std::invoke_result_t<F&, A&...>;
    try {
        F fn = get_callable<F>(in);
        std::tuple<A...> args{get<A>(in)...};  // braced: decoded left to right
        if constexpr (std::is_void_v<R>) {
            std::apply(fn, args);
            out.reserve(seq, ResultFormat::value, 1, 0);
            out.commit();
        } else {
            const std::decay_t<R> result = std::apply(fn, args);
            out.write(seq, ResultFormat::value, result);
        }
    } catch (...) {
        out.write_error(seq, describe_current_exception());
    }
}

// Calls f on one item of a map (f(item)) or starmap (std::apply(f, item)).
template <bool Star, class F, class T>
decltype(auto) call_item(F& fn, T& item) {
    if constexpr (Star)
        return std::apply(fn, item);
    else
        return std::invoke(fn, item);
}

// Whether f can take an item: f(item) for map; for starmap, the item is a tuple-like
// whose elements are f's arguments (a tuple-like other than tuple and pair is not
// looked into here).
template <class T>
concept tuple_like = requires { std::tuple_size<T>::value; };
template <class F, class T>
inline constexpr bool applicable_to = tuple_like<T>;
template <class F, class... A>
inline constexpr bool applicable_to<F, std::tuple<A...>> = std::is_invocable_v<F&, A&...>;
template <class F, class A, class B>
inline constexpr bool applicable_to<F, std::pair<A, B>> = std::is_invocable_v<F&, A&, B&>;
template <bool Star, class F, class T>
inline constexpr bool callable_on_item = Star ? applicable_to<F, T> : std::is_invocable_v<F&, T&>;

// What f gives for one item, decayed; void when it cannot take the item, so that the
// pool's static_assert (with its message) is the only error.
template <bool Star, class F, class T, bool = callable_on_item<Star, F, T>>
struct item_result {
    using type = void;
};
template <bool Star, class F, class T>
struct item_result<Star, F, T, true> {
    using type = std::decay_t<decltype(call_item<Star>(std::declval<F&>(), std::declval<T&>()))>;
};
template <bool Star, class F, class T>
using item_result_t = typename item_result<Star, F, T>::type;

// A chunk of a map: `count` items, each given to f. Results of a trivially copyable type
// are computed straight into the result ring; any failure, or any other result type,
// takes the general path of one outcome per item.
template <bool Star, class F, class T>
void invoke_chunk(ByteReader& in, std::uint64_t seq, ResultChannel& out) {
    using R = item_result_t<Star, F, T>;
    constexpr bool is_void = std::is_void_v<R>;
    using Value = std::conditional_t<is_void, char, R>;
    struct Outcome {
        std::optional<Value> value;
        ExceptionInfo error;
    };
    std::optional<F> fn;
    std::uint32_t count = 0;
    try {
        fn.emplace(get_callable<F>(in));
        count = get<std::uint32_t>(in);
    } catch (...) {
        out.write_error(seq, describe_current_exception());
        return;
    }
    // Trivially copyable items sit back to back: one bounds check for the whole block.
    const std::byte* block = nullptr;
    if constexpr (raw_bytes<T>) {
        try {
            block = in.take(std::size_t(count) * sizeof(T));
        } catch (...) {
            out.write_error(seq, describe_current_exception());
            return;
        }
    }
    auto read_item = [&](std::uint32_t index) -> T {
        if constexpr (raw_bytes<T>) {
            alignas(T) unsigned char item[sizeof(T)];
            std::memcpy(item, block + std::size_t(index) * sizeof(T), sizeof(T));
            return *std::launder(reinterpret_cast<T*>(item));
        } else {
            (void)index;
            return get<T>(in);
        }
    };
    auto run_one = [&](Outcome& o, std::uint32_t index) {
        out.running_item(index);
        try {
            T item = read_item(index);
            if constexpr (is_void) {
                call_item<Star>(*fn, item);
                o.value.emplace();
            } else {
                o.value.emplace(call_item<Star>(*fn, item));
            }
        } catch (...) {
            o.error = describe_current_exception();
        }
    };
    std::vector<Outcome> outcomes;
    std::uint32_t i = 0;
    if constexpr (!is_void && raw_bytes<R>) {
        auto* dst = out.reserve(seq, ResultFormat::chunk_values, count, std::size_t(count) * sizeof(R));
        for (; i < count; ++i) {
            out.running_item(i);
            try {
                T item = read_item(i);
                const R r = call_item<Star>(*fn, item);
                std::memcpy(dst + std::size_t(i) * sizeof(R), &r, sizeof(R));
            } catch (...) {
                // Abandon the reservation (nothing is visible until commit) and keep
                // what was computed as outcomes.
                outcomes.resize(count);
                for (std::uint32_t k = 0; k < i; ++k) {
                    alignas(R) unsigned char r[sizeof(R)];
                    std::memcpy(r, dst + std::size_t(k) * sizeof(R), sizeof(R));
                    outcomes[k].value.emplace(*std::launder(reinterpret_cast<R*>(r)));
                }
                outcomes[i].error = describe_current_exception();
                ++i;
                break;
            }
        }
        if (outcomes.empty()) {
            out.commit();
            return;
        }
    } else {
        outcomes.resize(count);
    }
    for (; i < count; ++i) run_one(outcomes[i], i);

    ByteWriter counter;
    auto put_outcomes = [&](ByteWriter& w) {
        for (auto& o : outcomes) {
            const std::uint8_t ok = o.value.has_value();
            put(w, ok);
            if (!ok)
                put(w, o.error);
            else if constexpr (!is_void)
                put(w, *o.value);
        }
    };
    try {
        put_outcomes(counter);
        ByteWriter w(out.reserve(seq, ResultFormat::chunk_outcomes, count, counter.written()));
        put_outcomes(w);
        out.commit();
    } catch (...) {
        out.write_error(seq, describe_current_exception());
    }
}

// ---- the worker loop ---------------------------------------------------------------------

struct WorkerEnv {
    PoolControl* pool;
    WorkerControl* control;
    Ring tasks;
    Ring results;
    std::size_t maxtasks = 0;  // 0: no limit
    const std::function<void()>* initializer = nullptr;
};

// Runs in the worker process; returns its exit code.
inline int worker_main(WorkerEnv env) {
    // release: pairs with the parent's acquire when this worker exits.
    env.control->started.store(1, std::memory_order_release);
    if (env.initializer && *env.initializer) {
        try {
            (*env.initializer)();
        } catch (...) {
            auto info = describe_current_exception();
            // Once logging is on, the logger says it (with the worker's name); else stderr.
            if (get_logger().is_enabled_for(logging::ERROR))
                get_logger().error("the pool's initializer failed in worker {}: {}: {}", ::getpid(), info.type,
                                   info.what);
            else
                std::fprintf(stderr, "multiprocessing: the pool's initializer failed in worker %d: %s: %s\n",
                             static_cast<int>(::getpid()), info.type.c_str(), info.what.c_str());
            return 1;
        }
    }
    ResultChannel out(env.results, *env.pool);
    std::size_t done = 0;
    for (;;) {
        // acquire: pairs with the parent's release store; one load per task.
        if (env.pool->stop_now.load(std::memory_order_acquire)) return 0;
        auto record = env.tasks.peek();
        if (!record) {
            env.tasks.wait_for_data(std::chrono::seconds(1));
            continue;
        }
        if (record->kind == stop_record) {
            env.tasks.release();
            get_logger().info("worker exiting after {} tasks", done);
            return 0;
        }
        auto* header = reinterpret_cast<TaskHeader*>(record->payload.data());
        std::uint32_t expected = task_queued;
        // acq_rel: acquire so that a revocation by the parent is seen before we skip;
        // release so the parent, reading `started` with acquire, sees our claim before
        // it decides the task's fate after our death.
        if (!header->state.compare_exchange_strong(expected, task_started, std::memory_order_acq_rel)) {
            env.tasks.release();  // revoked: the parent gave it to another worker
            continue;
        }
        // relaxed: a hint for task_timeout, read by the parent's periodic check only.
        env.control->task_started_ns.store(monotonic_ns(), std::memory_order_relaxed);
        ByteReader in(record->payload.subspan(sizeof(TaskHeader)));
        out.track_items_in(&header->running_item);
        try {
            code_at<Invoker>(header->invoker)(in, header->seq, out);
        } catch (...) {
            // An invoker only throws before it commits (a result too large for the ring,
            // say): the task still gets exactly one result, its error.
            out.write_error(header->seq, describe_current_exception());
        }
        out.track_items_in(nullptr);  // the record is released below
        env.control->task_started_ns.store(0, std::memory_order_relaxed);
        env.tasks.release();
        ++done;
        if (env.maxtasks && done >= env.maxtasks) {
            // Tell the parent before exiting, so it replaces us without waiting to notice.
            out.reserve(0, ResultFormat::value, 0, 0);
            out.commit(retiring_record);
            get_logger().info("worker exiting after {} tasks", done);
            return 0;
        }
    }
}

}  // namespace multiprocessing::detail
