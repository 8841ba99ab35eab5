#!/usr/bin/env python3
"""mpi4py.futures.MPIPoolExecutor on the workloads of bench/bench_mpi.cpp.

Run on 3 local ranks with Debian's mpi4py, ranks 1 and 2 being the executor's workers:
    mpirun --oversubscribe -n 3 /usr/bin/python3 -m mpi4py.futures bench/python/bench_mpi.py [--quick]
(bench/run.py --suite mpi does). Prints one JSON object per line:
    {"workload": "...", "unit": "us"|"Mitems/s", "median": ..., "runs": [...]}

  mpi_apply_async_roundtrip   executor.submit(noop).result(), one in flight, us
  mpi_map_square_1M           list(executor.map(square, range(1M), chunksize=c)), Mitems/s,
                              with c as multiprocessing.Pool.map picks it (n / (4 * workers))
"""
import json
import statistics
import sys
import time

from mpi4py.futures import MPIPoolExecutor

QUICK = "--quick" in sys.argv
clock = time.perf_counter
WORKERS = 2


def reps(n):
    return max(1, n // 2) if QUICK else n


def noop():
    return None


def square(x):
    return x * x


def emit(workload, unit, runs, **extra):
    rec = {"workload": workload, "unit": unit, "median": statistics.median(runs), "runs": runs}
    rec.update(extra)
    print(json.dumps(rec), flush=True)


def bench_roundtrip(executor, n, ops):
    for _ in range(50):
        executor.submit(noop).result()
    runs = []
    for _ in range(n):
        t0 = clock()
        for _ in range(ops):
            executor.submit(noop).result()
        runs.append((clock() - t0) / ops * 1e6)
    emit("mpi_apply_async_roundtrip", "us", runs, ops_per_run=ops)


def bench_map_square(executor, n, count):
    data = range(count)
    chunksize, extra = divmod(count, WORKERS * 4)
    chunksize += bool(extra)
    list(executor.map(square, range(10000), chunksize=2500))
    runs = []
    for _ in range(n):
        t0 = clock()
        out = list(executor.map(square, data, chunksize=chunksize))
        dt = clock() - t0
        assert len(out) == count and out[-1] == (count - 1) ** 2
        runs.append(count / dt / 1e6)
    emit("mpi_map_square_1M", "Mitems/s", runs, chunksize=chunksize)


if __name__ == "__main__":
    with MPIPoolExecutor() as executor:
        bench_roundtrip(executor, reps(7), 500)
        bench_map_square(executor, reps(5), 1_000_000)
