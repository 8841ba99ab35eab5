// Queue, Pipe and Lock benchmarks: the workloads of bench/python/bench_ipc.py, on
// mp::Queue, mp::Pipe and mp::Lock. Output and flags as bench_pool.cpp's (JSON lines;
// --quick, --filter SUBSTRING).

#include <multiprocessing.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "bench_support.hpp"

namespace mp = multiprocessing;

namespace {

using namespace bench;

// ---- 1. Queue: one producer process -> parent, 200,000 small ints ------------------

void produce_ints(mp::Queue<int> q, int count) {
    for (int i = 0; i < count; ++i) q.put(i);
}

void bench_queue_ints(int n, int count) {
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        mp::Queue<int> q;
        const auto t0 = Clock::now();
        mp::Process producer(produce_ints, q, count);
        producer.start();
        std::int64_t sum = 0;
        for (int i = 0; i < count; ++i) sum += q.get();
        runs.push_back(count / seconds_since(t0) / 1e6);
        producer.join();
        check(sum == std::int64_t{count} * (count - 1) / 2, "queue sum");
    }
    emit("queue_ints_200k", "Mitems/s", runs, {{"items_per_run", num(count)}});
}

// ---- 2. Pipe: 64-byte round trip through an echo process ---------------------------

using Bytes = std::vector<std::byte>;

// An empty message ends it (the child also holds the parent's end, inherited by fork,
// so closing that end would not give it EOFError).
void echo(mp::Connection<Bytes> conn) {
    for (;;) {
        Bytes message = conn.recv_bytes();
        if (message.empty()) return;
        conn.send_bytes(message);
    }
}

void bench_pipe_roundtrip(int n, int ops) {
    auto [here, there] = mp::Pipe<Bytes>();
    mp::Process echoer(echo, there);
    echoer.start();
    there.close();
    const Bytes message(64, std::byte{'x'});
    for (int i = 0; i < 200; ++i) here.send_bytes(message), here.recv_bytes();
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        for (int i = 0; i < ops; ++i) {
            here.send_bytes(message);
            check(here.recv_bytes().size() == message.size(), "echo size");
        }
        runs.push_back(seconds_since(t0) / ops * 1e6);
    }
    here.send_bytes(Bytes{});
    echoer.join();
    emit("pipe_roundtrip_64B", "us", runs, {{"ops_per_run", num(ops)}});
}

// ---- 3. Queue of 1 MiB byte vectors: producer process -> parent --------------------

void produce_buffers(mp::Queue<std::vector<std::uint8_t>> q, int count, std::size_t size) {
    const std::vector<std::uint8_t> buffer(size, 7);
    for (int i = 0; i < count; ++i) q.put(buffer);
}

void bench_queue_buffers(int n, int count, std::size_t size) {
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        mp::Queue<std::vector<std::uint8_t>> q;
        const auto t0 = Clock::now();
        mp::Process producer(produce_buffers, q, count, size);
        producer.start();
        std::size_t bytes = 0;
        for (int i = 0; i < count; ++i) bytes += q.get().size();
        runs.push_back(static_cast<double>(bytes) / seconds_since(t0) / 1e9);
        producer.join();
        check(bytes == count * size, "queue bytes");
    }
    emit("queue_1MiB_items", "GB/s", runs, {{"items_per_run", num(count)}});
}

// ---- 4. Lock: uncontended acquire + release ----------------------------------------

void bench_lock(int n, int ops) {
    mp::Lock lock;
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        for (int i = 0; i < ops; ++i) {
            lock.acquire();
            lock.release();
        }
        runs.push_back(seconds_since(t0) / ops * 1e9);
    }
    emit("lock_uncontended", "ns", runs, {{"ops_per_run", num(ops)}});
}

}  // namespace

int main(int argc, char** argv) {
    mp::freeze_support();
    parse_args(argc, argv);
    mp::set_start_method("fork");  // the default; explicit, as the Python side is
    guarded("queue_ints_200k", "Mitems/s", [] { bench_queue_ints(reps(7), 200'000); });
    guarded("pipe_roundtrip_64B", "us", [] { bench_pipe_roundtrip(reps(7), 5000); });
    guarded("queue_1MiB_items", "GB/s", [] { bench_queue_buffers(reps(7), 256, std::size_t{1} << 20); });
    guarded("lock_uncontended", "ns", [] { bench_lock(reps(7), 2'000'000); });
    return 0;
}
