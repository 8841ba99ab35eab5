#!/usr/bin/env python3
"""Python's multiprocessing managers on the same workloads as bench/bench_managers.cpp:
one proxy call (a round trip to the manager's server process) at a time. Output as
bench_pool.py's (one JSON object per line).

Usage: python3 bench/python/bench_managers.py [--quick]
"""
import json
import multiprocessing
import statistics
import sys
import time
from multiprocessing.managers import BaseManager, SyncManager

QUICK = "--quick" in sys.argv
clock = time.perf_counter
WARMUP = 200  # calls before timing


def reps(n):
    return max(1, n // 2) if QUICK else n


def emit(workload, unit, runs, **extra):
    rec = {"workload": workload, "unit": unit,
           "median": statistics.median(runs), "runs": runs}
    rec.update(extra)
    print(json.dumps(rec), flush=True)


def time_calls(n, ops, call, reset, warmup=WARMUP):
    """ops calls of call(i) per rep, after `warmup` untimed ones; kcalls/s."""
    for i in range(warmup):
        call(i)
    reset()
    runs = []
    for _ in range(n):
        t0 = clock()
        for i in range(ops):
            call(i)
        runs.append(ops / (clock() - t0) / 1e3)
        reset()
    return runs


# 1./2. Manager().list().append, on the default (unix socket) manager and on TCP ------
def bench_list_append(m, workload, n, ops):
    lst = m.list()
    append = lst.append

    def reset():
        assert len(lst) > 0
        lst[:] = []  # untimed: keeps the server's list small

    runs = time_calls(n, ops, lambda i: append(1), reset)
    emit(workload, "kcalls/s", runs, ops_per_run=ops)


def bench_list_append_local(n, ops):
    with multiprocessing.Manager() as m:
        bench_list_append(m, "manager_list_append_local", n, ops)


def bench_list_append_tcp(n, ops):
    m = SyncManager(address=("127.0.0.1", 0), authkey=b"k")
    m.start()
    try:
        bench_list_append(m, "manager_list_append_tcp", n, ops)
    finally:
        m.shutdown()


# 3. d[i] = i on Manager().dict() -----------------------------------------------------
def bench_dict_set_local(n, ops):
    with multiprocessing.Manager() as m:
        d = m.dict()

        def call(i):
            d[i] = i

        def reset():
            assert len(d) > 0
            d.clear()

        runs = time_calls(n, ops, call, reset)
        emit("manager_dict_set_local", "kcalls/s", runs, ops_per_run=ops)


# 4. a function registered on a BaseManager, called from a connected client -------------
def get_double(x):
    return x * 2


class ServerManager(BaseManager):
    pass


ServerManager.register("get_double", callable=get_double)


class ClientManager(BaseManager):
    pass


ClientManager.register("get_double")


def bench_call_function_tcp(n, ops):
    server = ServerManager(address=("127.0.0.1", 0), authkey=b"k")
    server.start()
    try:
        c = ClientManager(address=server.address, authkey=b"k")
        c.connect()
        # As in Python generally, the call returns a proxy to the result (an AutoProxy
        # for an int, dropped at once here); the timed call is what users write. The call
        # and the proxy open three new connections to the server (create, incref,
        # decref), each with the authkey handshake; over TCP that takes ~0.2 s a call
        # here (Nagle's algorithm meeting delayed ACKs, it seems: on a unix socket the
        # same call takes a few ms), hence the few ops.
        assert c.get_double(2)._getvalue() == 4
        runs = time_calls(n, ops, lambda i: c.get_double(2), lambda: None, warmup=3)
        emit("manager_call_function_tcp", "kcalls/s", runs, ops_per_run=ops)
    finally:
        server.shutdown()


def main():
    multiprocessing.set_start_method("fork")
    bench_list_append_local(reps(5), 5000)
    bench_list_append_tcp(reps(5), 5000)
    bench_dict_set_local(reps(5), 5000)
    bench_call_function_tcp(reps(5), 20)


if __name__ == "__main__":
    main()
