#!/usr/bin/env python3
"""Python's multiprocessing Queue, Pipe and Lock on the same workloads as
bench/bench_ipc.cpp. Output as bench_pool.py's (one JSON object per line).

Usage: python3 bench/python/bench_ipc.py [--quick]
"""
import json
import multiprocessing
import statistics
import sys
import time

QUICK = "--quick" in sys.argv
clock = time.perf_counter


def reps(n):
    return max(1, n // 2) if QUICK else n


def emit(workload, unit, runs, **extra):
    rec = {"workload": workload, "unit": unit,
           "median": statistics.median(runs), "runs": runs}
    rec.update(extra)
    print(json.dumps(rec), flush=True)


# 1. Queue: one producer process -> parent, 200,000 small ints ----------------------
def produce_ints(q, count):
    for i in range(count):
        q.put(i)


def bench_queue_ints(n, count):
    runs = []
    for _ in range(n):
        q = multiprocessing.Queue()
        t0 = clock()
        p = multiprocessing.Process(target=produce_ints, args=(q, count))
        p.start()
        total = 0
        for _ in range(count):
            total += q.get()
        runs.append(count / (clock() - t0) / 1e6)
        p.join()
        assert total == count * (count - 1) // 2
    emit("queue_ints_200k", "Mitems/s", runs, items_per_run=count)


# 2. Pipe: 64-byte round trip through an echo process -------------------------------
def echo(conn):
    # An empty message ends it (the child also holds the parent's end, inherited by
    # fork, so closing that end would not give it EOFError).
    while True:
        msg = conn.recv_bytes()
        if not msg:
            return
        conn.send_bytes(msg)


def bench_pipe_roundtrip(n, ops):
    here, there = multiprocessing.Pipe()
    p = multiprocessing.Process(target=echo, args=(there,))
    p.start()
    there.close()
    message = b"x" * 64
    for _ in range(200):
        here.send_bytes(message)
        here.recv_bytes()
    runs = []
    for _ in range(n):
        t0 = clock()
        for _ in range(ops):
            here.send_bytes(message)
            assert len(here.recv_bytes()) == 64
        runs.append((clock() - t0) / ops * 1e6)
    here.send_bytes(b"")
    p.join()
    emit("pipe_roundtrip_64B", "us", runs, ops_per_run=ops)


# 3. Queue of 1 MiB bytes objects: producer process -> parent -----------------------
def produce_buffers(q, count, size):
    buf = bytes([7]) * size
    for _ in range(count):
        q.put(buf)


def bench_queue_buffers(n, count, size):
    runs = []
    for _ in range(n):
        q = multiprocessing.Queue()
        t0 = clock()
        p = multiprocessing.Process(target=produce_buffers, args=(q, count, size))
        p.start()
        total = 0
        for _ in range(count):
            total += len(q.get())
        runs.append(total / (clock() - t0) / 1e9)
        p.join()
        assert total == count * size
    emit("queue_1MiB_items", "GB/s", runs, items_per_run=count)


# 4. Lock: uncontended acquire + release ----------------------------------------------
def bench_lock(n, ops):
    lock = multiprocessing.Lock()
    runs = []
    for _ in range(n):
        t0 = clock()
        for _ in range(ops):
            lock.acquire()
            lock.release()
        runs.append((clock() - t0) / ops * 1e9)
    emit("lock_uncontended", "ns", runs, ops_per_run=ops)


def main():
    multiprocessing.set_start_method("fork")
    bench_queue_ints(reps(5), 200_000)
    bench_pipe_roundtrip(reps(5), 2000)
    bench_queue_buffers(reps(5), 256, 1 << 20)
    bench_lock(reps(5), 200_000)


if __name__ == "__main__":
    main()
