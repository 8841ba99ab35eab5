#!/usr/bin/env python3
"""Python's multiprocessing.Pool on the same workloads as bench/bench_pool.cpp.

Prints one JSON object per line:
    {"workload": "...", "unit": "ms"|"us"|"Mitems/s"|"GB/s"|"x", "median": ..., "runs": [...]}

The workload names are the C++ benchmark's, so bench/run.py can pair them.
Start method: fork (set explicitly). Total run time: about a minute on 2 cores.

Usage: python3 bench/python/bench_pool.py [--quick]
"""
import json
import multiprocessing
import statistics
import sys
import time

POOL_SIZE = 2
QUICK = "--quick" in sys.argv


def reps(n):
    return max(1, n // 2) if QUICK else n


def noop():
    return None


def square(x):
    return x * x


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


FIB_N = 24
FIB_TASKS = 16

clock = time.perf_counter  # monotonic, like std::chrono::steady_clock


def emit(workload, unit, runs, **extra):
    rec = {"workload": workload, "unit": unit,
           "median": statistics.median(runs), "runs": runs}
    rec.update(extra)
    print(json.dumps(rec), flush=True)


# 1. Pool(2) start + close + join ------------------------------------------------
def bench_pool_lifecycle(n):
    runs = []
    for _ in range(n):
        t0 = clock()
        p = multiprocessing.Pool(POOL_SIZE)
        p.close()
        p.join()
        runs.append((clock() - t0) * 1e3)
    emit("pool_start_close_join", "ms", runs)


# 2. apply_async(noop).get(), one in flight ------------------------------------------
def bench_apply_roundtrip(pool, n, ops):
    for _ in range(50):
        pool.apply_async(noop).get()
    runs = []
    for _ in range(n):
        t0 = clock()
        for _ in range(ops):
            pool.apply_async(noop).get()
        runs.append((clock() - t0) / ops * 1e6)
    emit("apply_async_roundtrip", "us", runs, ops_per_run=ops)


# 3. map(square, 1M ints), default chunksize ----------------------------------------
def bench_map_square(pool, n, count):
    data = list(range(count))
    pool.map(square, data[:10000])
    runs = []
    for _ in range(n):
        t0 = clock()
        out = pool.map(square, data)
        dt = clock() - t0
        assert len(out) == count and out[-1] == (count - 1) ** 2
        runs.append(count / dt / 1e6)
    emit("map_square_1M", "Mitems/s", runs)


# 4. imap(square, 50k ints, chunksize=1) ---------------------------------------------
def bench_imap_square(pool, n, count):
    data = list(range(count))
    for _ in pool.imap(square, data[:1000], chunksize=1):
        pass
    runs = []
    for _ in range(n):
        t0 = clock()
        s = 0
        for x in pool.imap(square, data, chunksize=1):
            s += x
        dt = clock() - t0
        assert s == sum(x * x for x in data)
        runs.append(count / dt / 1e6)
    emit("imap_square_50k_chunk1", "Mitems/s", runs)


# 5. map(len, 64 x 1 MiB buffers, chunksize=1) ---------------------------------------
def bench_map_len_buffers(pool, n, count, size):
    bufs = [bytes([i % 256]) * size for i in range(count)]
    pool.map(len, bufs[:4], chunksize=1)
    runs = []
    for _ in range(n):
        t0 = clock()
        out = pool.map(len, bufs, chunksize=1)
        dt = clock() - t0
        assert out == [size] * count
        runs.append(count * size / dt / 1e9)  # GB/s, decimal GB
    emit("map_len_64x1MiB_chunk1", "GB/s", runs)


# 6. map(fib, [24] x 16): speedup over the serial loop -------------------------------
def bench_fib_speedup(pool, n):
    args = [FIB_N] * FIB_TASKS
    pool.map(fib, args[:2], chunksize=1)
    runs, serial_ms, pool_ms = [], [], []
    for _ in range(n):
        t0 = clock()
        s = [fib(a) for a in args]
        t_serial = clock() - t0
        t0 = clock()
        p = pool.map(fib, args)
        t_pool = clock() - t0
        assert s == p
        serial_ms.append(t_serial * 1e3)
        pool_ms.append(t_pool * 1e3)
        runs.append(t_serial / t_pool)
    emit("map_fib_speedup", "x", runs, fib_n=FIB_N, tasks=FIB_TASKS,
         serial_ms_median=statistics.median(serial_ms),
         pool_ms_median=statistics.median(pool_ms),
         per_call_ms=statistics.median(serial_ms) / FIB_TASKS)


def main():
    multiprocessing.set_start_method("fork")
    bench_pool_lifecycle(reps(7))
    with multiprocessing.Pool(POOL_SIZE) as pool:
        bench_apply_roundtrip(pool, reps(7), 500)
        bench_map_square(pool, reps(5), 1_000_000)
        bench_imap_square(pool, reps(3), 50_000)
        bench_map_len_buffers(pool, reps(5), 64, 1 << 20)
        bench_fib_speedup(pool, reps(5))
        pool.close()
        pool.join()


if __name__ == "__main__":
    main()
