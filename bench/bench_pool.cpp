// Pool benchmarks: the workloads of bench/python/bench_pool.py, on mp::Pool.
//
// Prints one JSON object per line:
//   {"workload": "...", "unit": "ms"|"us"|"Mitems/s"|"GB/s"|"x", "median": ..., "runs": [...]}
// plus, on some lines, extra context fields. bench/run.py pairs these lines with the
// Python ones by "workload" and prints the comparison table.
//
// Usage: bench_pool [--quick] [--filter SUBSTRING]
//   --quick halves the repetitions; --filter runs only the workloads whose name contains
//   SUBSTRING (e.g. --filter fib).
//
// Timing is std::chrono::steady_clock around the call(s) being measured. Pools for
// workloads 2-5 are created once and warmed up before any timing.

#include <multiprocessing.hpp>

#include "bench_support.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace mp = multiprocessing;

namespace {

using namespace bench;
constexpr std::size_t kPoolSize = 2;

// ---- the task functions (plain functions, as Python's are module-level) ----------

void noop() {}

std::int64_t square(std::int64_t x) { return x * x; }

std::size_t buf_len(const std::vector<std::uint8_t>& b) { return b.size(); }

// Python's fib(24) takes ~11 ms a call on this machine; C++'s fib(32) at -O2 takes
// about as long, so the per-task work (and so the pool overhead share) is comparable.
constexpr int kFibN = 32;
constexpr int kFibTasks = 16;

[[gnu::noinline]] std::int64_t fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

// ---- 1. Pool(2) start + close + join ------------------------------------------------

void bench_pool_lifecycle(int n) {
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        {
            mp::Pool p(kPoolSize);
            p.close();
            p.join();
        }
        runs.push_back(seconds_since(t0) * 1e3);
    }
    emit("pool_start_close_join", "ms", runs);
}

// ---- 2. apply_async(noop).get(), one in flight --------------------------------------

// bench_apply_roundtrip (bench_support.hpp)

// ---- 3. map(square, 1M ints), default chunksize; and 2 std::threads -----------------

std::vector<std::int64_t> iota_vec(std::size_t count) {
    std::vector<std::int64_t> v(count);
    for (std::size_t i = 0; i < count; ++i) v[i] = static_cast<std::int64_t>(i);
    return v;
}

void bench_map_square(mp::Pool& pool, int n, std::size_t count) {
    const auto data = iota_vec(count);
    const auto last = static_cast<std::int64_t>(count - 1);
    for (int i = 0; i < 2; ++i) (void)pool.map(square, data);  // warm-up, full size
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        std::vector<std::int64_t> out = pool.map(square, data);
        const double dt = seconds_since(t0);
        check(out.size() == count && out.back() == last * last && out[count / 2] ==
                  square(static_cast<std::int64_t>(count / 2)),
              "map(square)");
        runs.push_back(static_cast<double>(count) / dt / 1e6);
    }
    emit("map_square_1M", "Mitems/s", runs);
}

// The same work on 2 std::threads: a fresh output vector of squares, the input split in
// two halves, threads started and joined inside the timed region (as the pool's
// map produces a new vector from a range each call).
void bench_threads_square(int n, std::size_t count) {
    const auto data = iota_vec(count);
    const auto last = static_cast<std::int64_t>(count - 1);
    auto run_once = [&] {
        std::vector<std::int64_t> out(count);
        auto part = [&](std::size_t lo, std::size_t hi) {
            for (std::size_t i = lo; i < hi; ++i) out[i] = square(data[i]);
        };
        std::thread t1(part, std::size_t{0}, count / 2);
        std::thread t2(part, count / 2, count);
        t1.join();
        t2.join();
        return out;
    };
    for (int i = 0; i < 2; ++i) (void)run_once();
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        auto out = run_once();
        const double dt = seconds_since(t0);
        check(out.size() == count && out.back() == last * last, "threads(square)");
        runs.push_back(static_cast<double>(count) / dt / 1e6);
    }
    emit("threads2_square_1M", "Mitems/s", runs);
}

// ---- 4. imap(square, 50k ints, chunksize=1) -----------------------------------------

void bench_imap_square(mp::Pool& pool, int n, std::size_t count) {
    const auto data = iota_vec(count);
    std::int64_t expect = 0;
    for (auto x : data) expect += x * x;
    {
        const std::vector<std::int64_t> warm(data.begin(), data.begin() + 1000);
        for (auto x : pool.imap(square, warm, {.chunksize = 1})) (void)x;
    }
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        std::int64_t s = 0;
        auto it = pool.imap(square, data, {.chunksize = 1});
        for (auto x : it) s += x;
        const double dt = seconds_since(t0);
        check(s == expect, "imap(square) sum");
        runs.push_back(static_cast<double>(count) / dt / 1e6);
    }
    emit("imap_square_50k_chunk1", "Mitems/s", runs);
}

// ---- 5. map(len, 64 x 1 MiB buffers, chunksize=1) -----------------------------------

void bench_map_len_buffers(mp::Pool& pool, int n, std::size_t count, std::size_t size) {
    std::vector<std::vector<std::uint8_t>> bufs(count);
    for (std::size_t i = 0; i < count; ++i)
        bufs[i].assign(size, static_cast<std::uint8_t>(i % 256));
    {
        const std::vector<std::vector<std::uint8_t>> warm(bufs.begin(), bufs.begin() + 4);
        (void)pool.map(buf_len, warm, {.chunksize = 1});
    }
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        std::vector<std::size_t> out = pool.map(buf_len, bufs, {.chunksize = 1});
        const double dt = seconds_since(t0);
        check(out.size() == count &&
                  std::all_of(out.begin(), out.end(), [&](std::size_t x) { return x == size; }),
              "map(len)");
        runs.push_back(static_cast<double>(count * size) / dt / 1e9);  // decimal GB
    }
    emit("map_len_64x1MiB_chunk1", "GB/s", runs);
}

// ---- 6. map(fib, [N] x 16): speedup over the serial loop ----------------------------

void bench_fib_speedup(mp::Pool& pool, int n) {
    volatile int fib_n_v = kFibN;  // keep the serial loop from being folded at compile time
    const int fib_n = fib_n_v;
    const std::vector<int> args(kFibTasks, fib_n);
    (void)pool.map(fib, std::vector<int>(2, fib_n), {.chunksize = 1});
    std::vector<double> runs, serial_ms, pool_ms;
    for (RepLimiter reps_left(n); reps_left.next();) {
        auto t0 = Clock::now();
        std::vector<std::int64_t> s;
        s.reserve(args.size());
        for (int a : args) s.push_back(fib(a));
        const double t_serial = seconds_since(t0);
        t0 = Clock::now();
        std::vector<std::int64_t> p = pool.map(fib, args);
        const double t_pool = seconds_since(t0);
        check(s == p, "map(fib)");
        serial_ms.push_back(t_serial * 1e3);
        pool_ms.push_back(t_pool * 1e3);
        runs.push_back(t_serial / t_pool);
    }
    const double serial_med = median(serial_ms);
    emit("map_fib_speedup", "x", runs,
         {{"fib_n", std::to_string(kFibN)},
          {"tasks", std::to_string(kFibTasks)},
          {"serial_ms_median", num(serial_med)},
          {"pool_ms_median", num(median(pool_ms))},
          {"per_call_ms", num(serial_med / kFibTasks)}});
}

}  // namespace

int main(int argc, char** argv) {
    mp::freeze_support();
    parse_args(argc, argv);
    mp::set_start_method("fork");  // the default; explicit, as the Python side is

    guarded("pool_start_close_join", "ms", [] { bench_pool_lifecycle(reps(15)); });

    mp::Pool pool(kPoolSize);
    guarded("apply_async_roundtrip", "us", [&] { bench_apply_roundtrip(pool, noop, "apply_async_roundtrip", reps(7), 2000); });
    guarded("map_square_1M", "Mitems/s", [&] { bench_map_square(pool, reps(7), 1'000'000); });
    guarded("threads2_square_1M", "Mitems/s", [] { bench_threads_square(reps(7), 1'000'000); });
    guarded("imap_square_50k_chunk1", "Mitems/s",
            [&] { bench_imap_square(pool, reps(7), 50'000); });
    guarded("map_len_64x1MiB_chunk1", "GB/s",
            [&] { bench_map_len_buffers(pool, reps(7), 64, std::size_t{1} << 20); });
    guarded("map_fib_speedup", "x", [&] { bench_fib_speedup(pool, reps(5)); });
    pool.close();
    pool.join();
    return 0;
}
