#!/usr/bin/env python3
"""Python's multiprocessing under the spawn and forkserver start methods, and
multiprocessing.dummy, on the workloads of bench/bench_start_methods.cpp.

Prints one JSON object per line:
    {"workload": "...", "unit": "ms"|"us", "median": ..., "runs": [...]}

Workloads, for each of spawn and forkserver (from get_context(method)):
  pool_start_close_join_<method>   Pool(2) start + close + join, ms
  apply_async_roundtrip_<method>   apply_async(noop).get(), one in flight, us
and dummy_apply_async_roundtrip: multiprocessing.dummy.Pool(2), the same round trip.
The forkserver's first start (the server itself) is paid once, before timing, as a
long-running program pays it.

Usage: python3 bench/python/bench_start_methods.py [--quick]
"""
import json
import multiprocessing
import multiprocessing.dummy
import statistics
import sys
import time

POOL_SIZE = 2
QUICK = "--quick" in sys.argv
clock = time.perf_counter


def reps(n):
    return max(1, n // 2) if QUICK else n


def noop():
    return None


def emit(workload, unit, runs, **extra):
    rec = {"workload": workload, "unit": unit,
           "median": statistics.median(runs), "runs": runs}
    rec.update(extra)
    print(json.dumps(rec), flush=True)


def bench_lifecycle(ctx, method, n):
    p = ctx.Pool(POOL_SIZE)  # warm-up (starts the fork server, if any)
    p.close()
    p.join()
    runs = []
    for _ in range(n):
        t0 = clock()
        p = ctx.Pool(POOL_SIZE)
        p.close()
        p.join()
        runs.append((clock() - t0) * 1e3)
    emit(f"pool_start_close_join_{method}", "ms", runs)


def bench_roundtrip(pool, name, n, ops):
    for _ in range(50):
        pool.apply_async(noop).get()
    runs = []
    for _ in range(n):
        t0 = clock()
        for _ in range(ops):
            pool.apply_async(noop).get()
        runs.append((clock() - t0) / ops * 1e6)
    emit(name, "us", runs, ops_per_run=ops)


def main():
    for method in ("spawn", "forkserver"):
        ctx = multiprocessing.get_context(method)
        bench_lifecycle(ctx, method, reps(5))
        with ctx.Pool(POOL_SIZE) as pool:
            bench_roundtrip(pool, f"apply_async_roundtrip_{method}", reps(5), 2000)
    with multiprocessing.dummy.Pool(POOL_SIZE) as pool:
        bench_roundtrip(pool, "dummy_apply_async_roundtrip", reps(5), 5000)


if __name__ == "__main__":
    main()
