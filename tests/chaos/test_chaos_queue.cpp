// Bounded Queue under kills: producers and consumers SIGKILLed at swept instants,
// including while they are blocked waiting for a slot (their normal state when the
// queue is full). API.md: "A bounded Queue never holds more than maxsize; a put/get
// killed midway loses at most the one item it was moving, and no slot."
//
// After every round (all of its processes dead): the queue holds at most maxsize items,
// no item came out twice or malformed, and once drained, maxsize puts succeed without
// blocking and one more is Full. Short by default; MP_CHAOS_SCALE=n runs n times more
// rounds.
#include <catch2/catch.hpp>
#include <multiprocessing.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "../support.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

namespace {

int chaos_scale() {
    const char* s = std::getenv("MP_CHAOS_SCALE");
    const int n = s ? std::atoi(s) : 1;
    return n > 0 ? n : 1;
}

// An item tells who put it and when; its body repeats that, so a torn record shows.
std::string item(int producer, int seq) {
    const std::string head = std::to_string(producer) + ":" + std::to_string(seq) + ":";
    std::string s = head;
    const std::size_t len = 16 + static_cast<std::size_t>((producer * 131 + seq * 17) % 600);
    while (s.size() < len) s += head;
    return s;
}
bool well_formed(const std::string& s) {
    const auto a = s.find(':');
    if (a == std::string::npos) return false;
    const auto b = s.find(':', a + 1);
    if (b == std::string::npos) return false;
    try {
        return s == item(std::stoi(s.substr(0, a)), std::stoi(s.substr(a + 1, b - a - 1)));
    } catch (...) {
        return false;
    }
}

void produce_forever(mp::Queue<std::string> q, int producer) {
    for (int seq = 0;; ++seq) q.put(item(producer, seq));
}
// Forwards what it gets to `out` (unbounded), where the parent checks for duplicates.
void consume_forever(mp::Queue<std::string> q, mp::Queue<std::string> out) {
    for (;;) out.put(q.get());
}
void put_and_block(mp::Queue<std::string> q, int producer) { q.put(item(producer, 0)); }

// Drains `q` (nothing new comes: every process that used it is dead) into `seen`,
// checking each item. A timed get: a lane whose consumer lock a dead consumer held is
// taken over after the owner-check interval.
std::size_t drain(mp::Queue<std::string>& q, std::set<std::string>& seen) {
    std::size_t n = 0;
    while (!q.empty()) {
        std::string s = q.get(5s);  // Empty here: the queue is wedged
        INFO("item " << s.substr(0, 20));
        CHECK(well_formed(s));
        CHECK(seen.insert(s).second);  // never twice
        ++n;
    }
    return n;
}

// The queue is drained and holds all its slots again: maxsize puts fit (a put that
// finds the queue full settles what dead processes left pending, which may take an
// owner-check interval or two: hence a timeout, not put_nowait), then one more is Full.
// Then empty it again.
void check_all_slots_back(mp::Queue<std::string>& q, int maxsize) {
    for (int i = 0; i < maxsize; ++i) {
        INFO("put " << i << " of " << maxsize << " into the drained queue");
        REQUIRE_NOTHROW(q.put("#" + std::to_string(i), 5s));  // Full here: a slot was lost
    }
    CHECK(q.qsize() == static_cast<std::size_t>(maxsize));
    CHECK_THROWS_AS(q.put("#over", 0.3s), mp::Full);  // more than maxsize: a slot was made up
    for (int i = 0; i < maxsize; ++i) CHECK(q.get(5s) == "#" + std::to_string(i));
    CHECK(q.empty());
}

}  // namespace

TEST_CASE("A producer killed while blocked on a full bounded queue frees no slot (issue 13 item 9)",
          "[queue][chaos]") {
    constexpr int maxsize = 4;
    mp::Queue<std::string> q(maxsize);
    for (int i = 0; i < maxsize; ++i) q.put(item(100, i));
    {
        mp_test::DaemonChildren kids;
        for (int k = 0; k < 4; ++k) kids.start(put_and_block, q, k);
        std::this_thread::sleep_for(300ms);  // they are all asleep waiting for a slot
        for (std::size_t k = 0; k < kids.size(); ++k) {
            kids[k].kill();
            REQUIRE(kids[k].join(30s));
            CHECK(kids[k].exitcode() == -SIGKILL);
        }
    }
    // A producer that waits long enough to look for dead processes' slots finds none.
    CHECK_THROWS_AS(q.put(item(101, 0), 0.5s), mp::Full);
    CHECK(q.qsize() == maxsize);
    std::set<std::string> seen;
    CHECK(drain(q, seen) == maxsize);
    check_all_slots_back(q, maxsize);
}

TEST_CASE("Producers and consumers of a bounded queue killed at swept instants lose no slot (issue 13 items 3, 9)",
          "[queue][chaos]") {
    const int rounds = 8 * chaos_scale();
    std::random_device rd;
    const unsigned seed = rd();
    INFO("seed " << seed);
    std::mt19937 rng(seed);

    for (int maxsize : {1, 4, 64}) {
        INFO("maxsize " << maxsize);
        mp::Queue<std::string> q(maxsize);
        mp::Queue<std::string> out;
        std::set<std::string> seen;
        for (int round = 0; round < rounds; ++round) {
            INFO("round " << round);
            // Swept over 0..20 ms in 0.5 ms steps, so every phase of put and get
            // (including waiting for a slot) is hit across rounds.
            const auto kill_after = std::chrono::microseconds(500 * ((round * 17) % 41));
            {
                mp_test::DaemonChildren kids;
                const int producers = 3, consumers = 1 + round % 2;
                for (int p = 0; p < producers; ++p) kids.start(produce_forever, q, round * 10 + p);
                for (int c = 0; c < consumers; ++c) kids.start(consume_forever, q, out);
                std::this_thread::sleep_for(kill_after);
                // All at once in a random order, so some die in the middle of an
                // operation while others are still running.
                std::vector<std::size_t> order(kids.size());
                for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
                std::shuffle(order.begin(), order.end(), rng);
                for (std::size_t k : order) kids[k].kill();
                for (std::size_t k = 0; k < kids.size(); ++k) REQUIRE(kids[k].join(30s));
            }
            drain(out, seen);
            const std::size_t left = drain(q, seen);
            CHECK(left <= static_cast<std::size_t>(maxsize));
            check_all_slots_back(q, maxsize);
        }
    }
}
