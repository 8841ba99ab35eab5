#!/usr/bin/env python3
"""Compile time as a measured feature: what a user pays per translation unit.

    python3 bench/compile_time.py [--cxx g++] [--reps 3] [--json]

Compiles each program in bench/compile_time/ (g++ -std=c++20 -O2, to an object file, as
a user's build would) `--reps` times and prints the median wall seconds, the peak memory
of the compiler, and the ratio to the <vector>+<thread> baseline. Targets (issue "the
house and its build"): umbrella + one map <= 5 s and <= 300 MB; pool.hpp + one map <= 3 s.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROGRAMS = [  # (file, label, max seconds, max MB)
    ("baseline.cpp", "<vector> + <thread> (baseline)", None, None),
    ("umbrella_map.cpp", "<multiprocessing.hpp> + one map", 5.0, 300),
    ("pool_map.cpp", "<multiprocessing/pool.hpp> + one map", 3.0, None),
    ("queue_put_get.cpp", "<multiprocessing/queues.hpp> + put/get", None, None),
    ("manager_list.cpp", "<multiprocessing/managers.hpp> + list proxy", None, None),
]


def compile_once(cxx, source, out):
    """Wall seconds and the compiler's peak RSS in MB for one compile."""
    # Each compile runs in a fresh child of a fresh `python3 -c` so that RUSAGE_CHILDREN's
    # maximum is this compile's own (it is a running maximum over all waited-for children).
    probe = (
        "import resource, subprocess, sys, time;"
        "t = time.monotonic();"
        "r = subprocess.run(sys.argv[1:]);"
        "w = time.monotonic() - t;"
        "print(r.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    cmd = [sys.executable, "-c", probe, cxx, "-std=c++20", "-O2", "-I", os.path.join(ROOT, "include"),
           "-c", source, "-o", out]
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    if line[0] != "0":
        sys.exit(f"compile_time: {source} failed to compile")
    return float(line[1]), int(line[2]) / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cxx", default=os.environ.get("CXX", "g++"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, label, max_s, max_mb in PROGRAMS:
            runs = [compile_once(args.cxx, os.path.join(HERE, "compile_time", name), os.path.join(tmp, "a.o"))
                    for _ in range(args.reps)]
            seconds = statistics.median(r[0] for r in runs)
            mb = max(r[1] for r in runs)
            rows.append((name, label, seconds, mb, max_s, max_mb, [round(r[0], 2) for r in runs]))
    base = rows[0][2]
    print(f"{'program':48} {'seconds':>8} {'peak MB':>8} {'x base':>7}  target")
    missed = 0
    for name, label, seconds, mb, max_s, max_mb, runs in rows:
        target = []
        if max_s is not None:
            target.append(f"<= {max_s:g} s " + ("met" if seconds <= max_s else "NOT MET"))
            missed += seconds > max_s
        if max_mb is not None:
            target.append(f"<= {max_mb} MB " + ("met" if mb <= max_mb else "NOT MET"))
            missed += mb > max_mb
        print(f"{label:48} {seconds:8.2f} {mb:8.0f} {seconds / base:7.1f}  {', '.join(target)}")
        if args.json:
            print(json.dumps({"program": name, "seconds": seconds, "peak_mb": mb, "runs": runs}))
    print(f"({args.cxx}, -std=c++20 -O2 -c, median of {args.reps}; {missed} target(s) not met)")


if __name__ == "__main__":
    main()
