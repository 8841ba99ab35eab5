// Ring (detail/ring.hpp), the SPSC byte ring under Queue and Pool, tested directly:
// a producer waiting for room that only the consumer's skipping of a filler makes is
// woken by that skip (issue 13 item 8), and records of every size, from a few bytes to
// most of the ring (so fillers and wrap-arounds all the time), cross intact and in order
// between two threads (which TSan can check) and between two processes.
#include <catch2/catch.hpp>
#include <multiprocessing/detail/ring.hpp>

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <thread>

namespace d = multiprocessing::detail;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// A ring's control block and data in one MAP_SHARED anonymous mapping (shared with a
// fork child as with a queue's segment).
struct SharedRing {
    static constexpr std::size_t data_at = 4096;
    std::uint32_t capacity;
    std::byte* base;
    explicit SharedRing(std::uint32_t cap) : capacity(cap) {
        void* p = ::mmap(nullptr, data_at + cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        REQUIRE(p != MAP_FAILED);
        base = static_cast<std::byte*>(p);
        ::new (base) d::RingControl;
    }
    ~SharedRing() { ::munmap(base, data_at + capacity); }
    d::RingControl* control() const { return reinterpret_cast<d::RingControl*>(base); }
    d::Ring ring() const { return d::Ring(control(), base + data_at, capacity); }
};

void put_record(d::Ring& ring, std::size_t size, std::uint32_t kind) {
    std::byte* at = ring.try_reserve(size);
    REQUIRE(at != nullptr);
    std::memset(at, static_cast<int>(kind), size);
    ring.commit(kind);
}

// Record i: its size sweeps small and large (up to 3/4 of the ring) and its bytes
// follow from i, so a torn or misplaced record shows.
std::size_t size_of(std::uint32_t i, std::uint32_t capacity) {
    const std::uint32_t r = i * 2654435761u;
    switch (i % 4) {
        case 0: return r % 64;
        case 1: return r % 4000;
        case 2: return capacity / 2 + r % (capacity / 4);
        default: return r % (capacity / 3);
    }
}
std::byte byte_of(std::uint32_t i, std::size_t k) { return static_cast<std::byte>((i * 31 + k * 7) & 0xFF); }

// Returns the number of bad records seen (0 when all n arrived intact, in order).
int consume(d::Ring ring, std::uint32_t n, std::uint32_t capacity) {
    int bad = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
        if (!ring.wait_for_data(10s)) return bad + 1000000;  // the producer stalled
        auto rec = ring.peek();
        if (!rec) {  // wait_for_data saw a filler only: look again
            --i;
            continue;
        }
        const std::size_t size = size_of(i, capacity);
        if (rec->kind != i || rec->payload.size() != size) {
            ++bad;
        } else {
            for (std::size_t k = 0; k < size; ++k)
                if (rec->payload[k] != byte_of(i, k)) {
                    ++bad;
                    break;
                }
        }
        ring.release();
    }
    return bad;
}
bool produce(d::Ring ring, std::uint32_t n, std::uint32_t capacity) {
    const auto give_up_at = Clock::now() + 60s;
    for (std::uint32_t i = 0; i < n; ++i) {
        const std::size_t size = size_of(i, capacity);
        std::byte* at = ring.reserve(size, [&] { return Clock::now() > give_up_at; });
        if (!at) return false;
        for (std::size_t k = 0; k < size; ++k) at[k] = byte_of(i, k);
        ring.commit(i);
    }
    return true;
}

}  // namespace

TEST_CASE("Ring: a consumer skipping a filler wakes the producer waiting for that room (issue 13 item 8)",
          "[ring]") {
    constexpr std::uint32_t cap = 4096;
    SharedRing shared(cap);
    d::Ring producer = shared.ring(), consumer = shared.ring();
    // Two records (1508 bytes each in the ring), both consumed: tail = head = 3016.
    put_record(producer, 1500, 1);
    put_record(producer, 1500, 2);
    for (int k = 0; k < 2; ++k) {
        REQUIRE(consumer.peek());
        consumer.release();
    }
    // A record of 3500 bytes does not fit before the end: the producer publishes a
    // filler over [3016, 4096) and then needs the room the filler holds.
    REQUIRE(producer.try_reserve(3500) == nullptr);
    REQUIRE_FALSE(producer.room_for(3500));

    // The producer's side of reserve(), with a long sleep instead of its 50 ms poll: only
    // a wake-up ends it early.
    d::RingControl& c = *shared.control();
    std::atomic<bool> woke{false};
    std::thread waiter([&] {
        c.producer_waiting.store(1, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        const std::uint32_t tail = c.tail.load(std::memory_order_relaxed);
        const auto t0 = Clock::now();
        while (!producer.room_for(3500) && Clock::now() - t0 < 20s) d::futex_wait(c.tail, tail, 20s);
        c.producer_waiting.store(0, std::memory_order_relaxed);
        woke.store(true);
    });
    std::this_thread::sleep_for(100ms);  // the waiter is asleep by now (if not, it sees the room)
    // The consumer finds only the filler: it skips it, and the ring is empty.
    CHECK_FALSE(consumer.peek());
    const auto t0 = Clock::now();
    while (!woke.load() && Clock::now() - t0 < 10s) std::this_thread::sleep_for(1ms);
    CHECK(woke.load());  // not woken: it would have slept its full 20 s
    waiter.join();
    // And the record now fits at offset 0.
    std::byte* at = producer.try_reserve(3500);
    REQUIRE(at != nullptr);
    std::memset(at, 3, 3500);
    producer.commit(3);
    auto rec = consumer.peek();
    REQUIRE(rec);
    CHECK(rec->kind == 3);
    CHECK(rec->payload.size() == 3500);
    consumer.release();
}

TEST_CASE("Ring: two threads, records of every size up to 3/4 of the ring, all intact and in order", "[ring]") {
    constexpr std::uint32_t cap = 64 * 1024;
    SharedRing shared(cap);
    const std::uint32_t n = 5000;
    bool produced = false;
    std::thread producer([&] { produced = produce(shared.ring(), n, cap); });
    const int bad = consume(shared.ring(), n, cap);
    producer.join();
    CHECK(produced);
    CHECK(bad == 0);
}

TEST_CASE("Ring: two processes, records of every size up to 3/4 of the ring, all intact and in order",
          "[ring]") {
    constexpr std::uint32_t cap = 64 * 1024;
    SharedRing shared(cap);
    const std::uint32_t n = 5000;
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) ::_exit(produce(shared.ring(), n, cap) ? 0 : 1);
    const int bad = consume(shared.ring(), n, cap);
    int status = 0;
    // The child has put everything once we consumed it all; give it a bounded time.
    const auto t0 = Clock::now();
    pid_t r = 0;
    while ((r = ::waitpid(child, &status, WNOHANG)) == 0 && Clock::now() - t0 < 30s) std::this_thread::sleep_for(5ms);
    if (r == 0) {
        ::kill(child, SIGKILL);
        ::waitpid(child, &status, 0);
    }
    CHECK(r == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(bad == 0);
}
