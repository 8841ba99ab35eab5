// Queues: a port of the behaviours CPython checks in _TestQueue and TestSimpleQueue
// (Lib/test/_test_multiprocessing.py), written for the C++ API, plus what API.md and the
// queue's design promise beyond Python: put() never needs a feeder thread (a process may
// exit right after it), an unbounded queue takes a million puts with no consumer, several
// producers and consumers lose and duplicate nothing, a process killed inside put() or
// get() does not wedge the queue, and large items cross.
//
// Children are real processes; queues (and the locks, events and values some tests also
// pass) reach them as Process arguments. ctest runs this program under each start method
// (tests/CMakeLists.txt). A child never runs a Catch2 macro: it reports through a queue, or
// fails by throwing (exit code 1) or by _exit with a code of its own. Every child is a
// daemon and is killed by the Kids guard if a failing test leaves it behind, so that a
// failure is a failure and not a hang.
#include <catch2/catch.hpp>
#include <multiprocessing.hpp>

#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "support.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;
using mp_test::seconds_since;

namespace {

using Clock = std::chrono::steady_clock;

// CPython's TIMEOUT1..3 and DELTA. Timed waits are checked to last at least about
// their timeout and to end; upper bounds are loose on purpose (slow CI, sanitizers).
constexpr auto TIMEOUT1 = 0.2s;
constexpr auto TIMEOUT2 = 3.0s;  // given with block=false: must be ignored
constexpr auto TIMEOUT3 = 0.3s;
constexpr auto DELTA = 0.1s;
constexpr double quick = 1.0;   // "returned at once", generously
constexpr double slack = 5.0;   // how late a timed wait may end, generously

// ---------------------------------------------------------------------------------
// Child processes

using Kids = mp_test::DaemonChildren;

// ---------------------------------------------------------------------------------
// Item types

using mp_test::Point;

using mp_test::Record;

// Who put an item, and its place in that producer's sequence.
struct Tag {
    int producer;
    int seq;
    bool operator==(const Tag&) const = default;
    bool operator<(const Tag& o) const { return std::tie(producer, seq) < std::tie(o.producer, o.seq); }
};

// A string whose content follows from its length, so that a torn or mixed-up record
// shows up as a malformed string.
std::string pattern(std::size_t n) { return std::string(n, static_cast<char>('a' + n % 26)); }
bool well_formed(const std::string& s) {
    return std::all_of(s.begin(), s.end(), [&](char c) { return c == static_cast<char>('a' + s.size() % 26); });
}

// Every multiset of Tags that should be exactly {0..n-1} for each of `producers`.
std::vector<Tag> all_tags(int producers, int n) {
    std::vector<Tag> out;
    for (int p = 0; p < producers; ++p)
        for (int i = 0; i < n; ++i) out.push_back({p, i});
    return out;
}

// True if, within `seen` (in the order one consumer got them), each producer's items
// come in increasing order.
bool per_producer_increasing(const std::vector<Tag>& seen) {
    std::map<int, int> last;
    for (const Tag& t : seen) {
        auto it = last.find(t.producer);
        if (it != last.end() && it->second >= t.seq) return false;
        last[t.producer] = t.seq;
    }
    return true;
}

// ---------------------------------------------------------------------------------
// Child targets

void get_six_then_signal(mp::Queue<int> q, mp::Event child_can_start, mp::Event parent_can_continue) {
    child_can_start.wait();
    for (int i = 0; i < 6; ++i) q.get();
    parent_can_continue.set();
}

void put_2_to_5_then_signal(mp::Queue<int> q, mp::Event child_can_start, mp::Event parent_can_continue) {
    child_can_start.wait();
    for (int i = 2; i <= 5; ++i) q.put(i);
    parent_can_continue.set();
}

void put_range(mp::Queue<int> q, int from, int to) {
    for (int i = from; i < to; ++i) q.put(i);
}

template <class T>
void echo_n(mp::Queue<T> in, mp::Queue<T> out, int n) {
    for (int i = 0; i < n; ++i) out.put(in.get());
}

void put_points(mp::Queue<Point> q) {
    q.put(Point{1.875, -6.25});
    q.put(Point{-5.75, 2.0});
}

void drain_after_go(mp::Queue<int> q, mp::Event go, mp::Queue<int> out, int n) {
    go.wait();
    for (int i = 0; i < n; ++i) out.put(q.get(10s));
    // The parent closed its handle; ours is open, and puts still work.
    q.put(100);
    out.put(q.get(10s));
}

// CPython's _test_task_done: for obj in iter(q.get, None): time.sleep(DELTA); q.task_done()
void task_done_worker(mp::JoinableQueue<std::optional<int>> q, mp::Queue<int> done) {
    for (;;) {
        std::optional<int> obj = q.get();
        if (!obj) break;
        std::this_thread::sleep_for(DELTA);
        done.put(*obj);  // before task_done(): join() returning means this is in `done`
        q.task_done();
    }
}

void take_then_done_later(mp::JoinableQueue<int> q, mp::Event got) {
    q.get();
    got.set();
    std::this_thread::sleep_for(0.3s);
    q.task_done();
    // Once more than items were put: ValueError, in a child as in the parent.
    try {
        q.task_done();
    } catch (const mp::ValueError&) {
        return;
    }
    throw std::runtime_error("task_done() called too often did not throw ValueError");
}

// TestSimpleQueue._test_empty
void simple_put_empty_twice(mp::SimpleQueue<bool> q, mp::Event child_can_start, mp::Event parent_can_continue) {
    child_can_start.wait();
    q.put(q.empty());
    q.put(q.empty());
    parent_can_continue.set();
}

void simple_shout(mp::SimpleQueue<std::string> in, mp::SimpleQueue<std::string> out) {
    for (;;) {
        std::string s = in.get();
        if (s.empty()) break;
        for (char& c : s) c = static_cast<char>(c - 'a' + 'A');
        out.put(s);
    }
    out.put(std::string("bye"));
}

void put_a_million(mp::Queue<int> q) {
    for (int i = 0; i < 1'000'000; ++i) q.put(i);
}

// How a producer ends right after its last put().
enum class Ending { return_, std_exit, underscore_exit, sigkill_self };

void put_then_end(mp::Queue<Tag> q, int producer, int n, Ending how) {
    for (int i = 0; i < n; ++i) q.put(Tag{producer, i});
    switch (how) {
        case Ending::return_: return;
        case Ending::std_exit: std::exit(0);
        case Ending::underscore_exit: ::_exit(0);
        case Ending::sigkill_self: ::raise(SIGKILL);
    }
}

void produce_tags(mp::Queue<Tag> q, int producer, int n) {
    for (int i = 0; i < n; ++i) q.put(Tag{producer, i});
}

// Takes items until every one of `total` has been taken by someone, then sends what it
// took, in the order it took them.
void consume_tags(mp::Queue<Tag> q, mp::Value<long long> taken, long long total,
                  mp::Queue<std::vector<Tag>> results) {
    std::vector<Tag> mine;
    for (;;) {
        try {
            mine.push_back(q.get(50ms));
            std::lock_guard g(taken.get_lock());
            ++taken.value();
        } catch (const mp::Empty&) {
            std::lock_guard g(taken.get_lock());
            if (taken.value() >= total) break;
        }
    }
    results.put(mine);
}

// Loops put/get on a shared queue until it is killed; _exit(3) on a malformed item.
void put_get_forever(mp::Queue<std::string> q, std::uint32_t seed) {
    std::uint32_t x = seed;
    for (;;) {
        x = x * 1664525u + 1013904223u;
        q.put(pattern((x >> 8) % 3000));
        std::string s = q.get();
        if (s[0] != '#' && !well_formed(s)) ::_exit(3);
    }
}

void put_numbered(mp::Queue<std::string> q, int k, int n) {
    for (int i = 0; i < n; ++i) q.put("#n" + std::to_string(k) + ":" + std::to_string(i));
}

// Python's Pool(initializer=init, initargs=(q,)): the queue lands in a global of each worker.
std::optional<mp::Queue<int>> g_results;
void init_with_queue(mp::Queue<int> q) { g_results = q; }
void put_square(int x) { g_results->put(x * x); }
int put_cube_and_return(int x) {
    g_results->put(x * x * x);
    return x;
}

// ---------------------------------------------------------------------------------
// An item whose encoded size is larger than any queue holds, without 1 GiB of memory:
// its bytes are a read-only view of untouched anonymous memory (all zero pages).
struct HugeItem {
    const char* bytes = nullptr;
    std::size_t size = 0;
    HugeItem() = default;
    HugeItem(const char* b, std::size_t n) : bytes(b), size(n) {}
    HugeItem(const HugeItem& o) : bytes(o.bytes), size(o.size) {}  // not trivially copyable: goes through cereal
    HugeItem& operator=(const HugeItem&) = default;
    template <class A>
    void save(A& ar) const {
        ar(cereal::binary_data(bytes, size));
    }
    template <class A>
    void load(A&) {}
};
static_assert(!std::is_trivially_copyable_v<HugeItem>);

// Items whose serializer misbehaves on the writing pass (the second call: put() first
// measures, then writes): one throws, one writes more than it measured, one less.
enum class Misbehave { none, throw_on_write, grow, shrink };
struct Fickle {
    Misbehave how = Misbehave::none;
    mutable int calls = 0;
    Fickle() = default;
    explicit Fickle(Misbehave h) : how(h) {}
    Fickle(const Fickle& o) : how(o.how) {}  // not trivially copyable: goes through cereal
    Fickle& operator=(const Fickle& o) {
        how = o.how;
        return *this;
    }
    template <class A>
    void save(A& ar) const {
        const bool writing = ++calls >= 2;
        if (writing && how == Misbehave::throw_on_write) throw std::runtime_error("cannot serialize this one");
        std::string body(100, 'x');
        if (writing && how == Misbehave::grow) body.resize(5000, 'y');  // past what was reserved
        if (writing && how == Misbehave::shrink) body.resize(10);
        ar(body);
    }
    template <class A>
    void load(A& ar) {
        std::string body;
        ar(body);
    }
};

// Resident shared memory of this process (RssShmem, kB).
long rss_shmem_kb() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("RssShmem:", 0) == 0) return std::stol(line.substr(9));
    return -1;
}

}  // namespace

// =====================================================================================
// _TestQueue

TEST_CASE("put: a bounded queue, Full from put_nowait, put(x, false) and put(x, timeout) (test_put)",
          "[queue]") {
    constexpr int MAXSIZE = 6;
    mp::Queue<int> queue(MAXSIZE);
    mp::Event child_can_start, parent_can_continue;
    Kids kids;
    auto& proc = kids.start(get_six_then_signal, queue, child_can_start, parent_can_continue);

    CHECK(queue.empty());
    CHECK_FALSE(queue.full());

    queue.put(1);
    queue.put(2, true);
    queue.put(3, true, 10s);
    queue.put(4, false);
    queue.put(5, false, 10s);
    queue.put_nowait(6);

    CHECK_FALSE(queue.empty());
    CHECK(queue.full());
    CHECK(queue.qsize() == 6);

    auto t0 = Clock::now();
    CHECK_THROWS_AS(queue.put(7, false), mp::Full);
    CHECK(seconds_since(t0) < quick);

    t0 = Clock::now();
    CHECK_THROWS_AS(queue.put_nowait(7), mp::Full);
    CHECK(seconds_since(t0) < quick);

    t0 = Clock::now();
    CHECK_THROWS_AS(queue.put(7, TIMEOUT1), mp::Full);
    CHECK(seconds_since(t0) >= 0.9 * TIMEOUT1.count());
    CHECK(seconds_since(t0) < TIMEOUT1.count() + slack);

    t0 = Clock::now();
    CHECK_THROWS_AS(queue.put(7, false, TIMEOUT2), mp::Full);  // the timeout only counts when blocking
    CHECK(seconds_since(t0) < quick);

    t0 = Clock::now();
    CHECK_THROWS_AS(queue.put(7, true, TIMEOUT3), mp::Full);
    CHECK(seconds_since(t0) >= 0.9 * TIMEOUT3.count());
    CHECK(seconds_since(t0) < TIMEOUT3.count() + slack);

    CHECK(queue.qsize() == 6);  // the failed puts left nothing behind

    child_can_start.set();
    REQUIRE(parent_can_continue.wait(30s));

    CHECK(queue.empty());
    CHECK_FALSE(queue.full());
    CHECK(queue.qsize() == 0);

    REQUIRE(proc.join(30s));
    CHECK(proc.exitcode() == 0);

    // Room again: put works and the slots freed by the child are reusable.
    for (int i = 0; i < MAXSIZE; ++i) queue.put_nowait(i);
    CHECK(queue.full());
    for (int i = 0; i < MAXSIZE; ++i) CHECK(queue.get_nowait() == i);
}

TEST_CASE("get: Empty from get_nowait, get(false) and get(timeout) (test_get)", "[queue]") {
    mp::Queue<int> queue;
    mp::Event child_can_start, parent_can_continue;
    Kids kids;
    auto& proc = kids.start(put_2_to_5_then_signal, queue, child_can_start, parent_can_continue);

    CHECK(queue.empty());
    child_can_start.set();
    REQUIRE(parent_can_continue.wait(30s));
    CHECK_FALSE(queue.empty());

    CHECK(queue.get() == 2);
    CHECK(queue.get(true) == 3);
    CHECK(queue.get(1s) == 4);
    CHECK(queue.get_nowait() == 5);
    CHECK(queue.empty());

    auto t0 = Clock::now();
    CHECK_THROWS_AS(queue.get(false), mp::Empty);
    CHECK(seconds_since(t0) < quick);

    t0 = Clock::now();
    CHECK_THROWS_AS(queue.get_nowait(), mp::Empty);
    CHECK(seconds_since(t0) < quick);

    t0 = Clock::now();
    CHECK_THROWS_AS(queue.get(true, TIMEOUT1), mp::Empty);
    CHECK(seconds_since(t0) >= 0.9 * TIMEOUT1.count());
    CHECK(seconds_since(t0) < TIMEOUT1.count() + slack);

    t0 = Clock::now();
    CHECK_THROWS_AS(queue.get(false, TIMEOUT2), mp::Empty);
    CHECK(seconds_since(t0) < quick);

    t0 = Clock::now();
    CHECK_THROWS_AS(queue.get(TIMEOUT3), mp::Empty);
    CHECK(seconds_since(t0) >= 0.9 * TIMEOUT3.count());
    CHECK(seconds_since(t0) < TIMEOUT3.count() + slack);

    REQUIRE(proc.join(30s));
    CHECK(proc.exitcode() == 0);
}

TEST_CASE("get(timeout) on an empty queue waits about the timeout (test_timeout)", "[queue]") {
    mp::Queue<int> q;
    auto t0 = Clock::now();
    CHECK_THROWS_AS(q.get(true, 0.2s), mp::Empty);
    CHECK(seconds_since(t0) >= 0.1);
}

// Python's queue is one pipe, so puts that are ordered across processes (the parent's
// before the child even started; a producer's before the sentinel put after joining it)
// come out in that order. Python's documentation promises only per-process order, but
// its own test_fork and the everyday sentinel idiom below rely on this.
TEST_CASE("Items put by the parent, then by a child, come out in that order (test_fork)", "[queue]") {
    mp::Queue<int> queue;
    for (int i = 0; i < 10; ++i) queue.put(i);
    std::this_thread::sleep_for(DELTA);
    Kids kids;
    auto& p = kids.start(put_range, queue, 10, 20);

    SECTION("the parent gets while the child puts") {
        // Python's test as written: the parent starts getting while the child puts.
        std::vector<int> got;
        for (int i = 0; i < 20; ++i) got.push_back(queue.get(10s));
        std::vector<int> expected(20);
        for (int i = 0; i < 20; ++i) expected[i] = i;
        CHECK(got == expected);
    }
    SECTION("the parent gets after the child ended") {
        REQUIRE(p.join(30s));  // the same order, without depending on timing
        std::vector<int> got;
        for (int i = 0; i < 20; ++i) got.push_back(queue.get(10s));
        std::vector<int> expected(20);
        for (int i = 0; i < 20; ++i) expected[i] = i;
        CHECK(got == expected);
    }
    CHECK_THROWS_AS(queue.get(false), mp::Empty);
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
}

TEST_CASE("A sentinel put after joining the producer comes after everything put before it", "[queue]") {
    // The common Python shape: the main process and a producer process put work, the
    // producer is joined, then q.put(None) marks the end and a consumer reads until None.
    // Every put happened before the sentinel's, so the consumer must see them all first.
    mp::Queue<std::optional<int>> q;
    for (int i = 0; i < 10; ++i) q.put(i);
    Kids kids;
    auto& producer = kids.start(
        [](mp::Queue<std::optional<int>> q) {
            for (int i = 10; i < 110; ++i) q.put(i);
        },
        q);
    REQUIRE(producer.join(30s));
    CHECK(producer.exitcode() == 0);
    q.put(std::nullopt);

    std::vector<int> got;
    for (;;) {
        std::optional<int> item = q.get(10s);
        if (!item) break;
        got.push_back(*item);
    }
    CHECK(got.size() == 110);
    CHECK(q.empty());
}

TEST_CASE("qsize, empty and full (test_qsize)", "[queue]") {
    mp::Queue<int> q;
    CHECK(q.qsize() == 0);
    CHECK(q.empty());
    CHECK_FALSE(q.full());  // an unbounded queue is never full
    q.put(1);
    CHECK(q.qsize() == 1);
    CHECK_FALSE(q.empty());
    q.put(5);
    CHECK(q.qsize() == 2);
    q.get();
    CHECK(q.qsize() == 1);
    q.get();
    CHECK(q.qsize() == 0);
    CHECK(q.empty());

    mp::Queue<int> bounded(2);
    CHECK_FALSE(bounded.full());
    bounded.put(1);
    CHECK_FALSE(bounded.full());
    bounded.put(2);
    CHECK(bounded.full());
    CHECK(bounded.qsize() == 2);
    bounded.get();
    CHECK_FALSE(bounded.full());

    // maxsize <= 0 is unbounded, as in Python
    mp::Queue<int> unbounded(-1);
    for (int i = 0; i < 100; ++i) unbounded.put_nowait(i);
    CHECK(unbounded.qsize() == 100);
    CHECK_FALSE(unbounded.full());

    // qsize counts what other processes put, once their puts returned
    Kids kids;
    auto& p = kids.start(put_range, q, 0, 7);
    REQUIRE(p.join(30s));
    CHECK(q.qsize() == 7);
}

TEST_CASE("A child fills a bounded queue and blocks until the parent gets", "[queue]") {
    mp::Queue<int> q(3);
    Kids kids;
    auto& p = kids.start(put_range, q, 0, 10);

    auto t0 = Clock::now();
    while (!q.full() && seconds_since(t0) < 30) std::this_thread::sleep_for(5ms);
    REQUIRE(q.full());
    std::this_thread::sleep_for(DELTA);
    CHECK(p.is_alive());  // blocked in put(3)
    CHECK(q.qsize() == 3);

    for (int i = 0; i < 10; ++i) CHECK(q.get(10s) == i);
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    CHECK(q.empty());
}

TEST_CASE("Items of library and user types cross in both directions", "[queue]") {
    auto round_trip = [](auto items) {
        using T = typename decltype(items)::value_type;
        mp::Queue<T> in, out;
        Kids kids;
        auto& p = kids.start(echo_n<T>, in, out, static_cast<int>(items.size()));
        for (const T& x : items) in.put(x);
        for (const T& x : items) {
            T back = out.get(10s);
            CHECK((back == x));
        }
        REQUIRE(p.join(30s));
        CHECK(p.exitcode() == 0);
    };

    round_trip(std::vector<std::string>{"hello", "", std::string("nul\0inside", 10), std::string(5000, 'q')});
    round_trip(std::vector<std::vector<int>>{{}, {1}, {1, 2, 3}, std::vector<int>(10000, 7)});
    round_trip(std::vector<std::map<std::string, int>>{{}, {{"a", 2}, {"b", 1}, {"c", 1}}});
    round_trip(std::vector<Point>{{0, 0}, {1.875, -6.25}, {-5.75, 2.0}});
    round_trip(std::vector<std::optional<int>>{std::nullopt, 4, std::nullopt, 0});
    round_trip(std::vector<std::optional<std::string>>{std::nullopt, "set"});
    round_trip(std::vector<std::variant<int, std::string>>{4, std::string("odd 5")});
    round_trip(std::vector<std::tuple<int, std::string, double>>{{3, "3", 1.5}, {-1, "", 0.25}});
    round_trip(std::vector<Record>{{"rec", {1.5, 2.5}, 21}, {"b", {}, 1}});
    round_trip(std::vector<std::vector<std::string>>{{"a", "bb"}, {}});

    // A child's struct arrives in the parent.
    mp::Queue<Point> points;
    Kids kids;
    auto& p = kids.start(put_points, points);
    CHECK(points.get(10s) == Point{1.875, -6.25});
    CHECK(points.get(10s) == Point{-5.75, 2.0});
    REQUIRE(p.join(30s));
}

TEST_CASE("close(): put and get on that handle throw ValueError (test_closed_queue_put_get_exceptions)",
          "[queue]") {
    SECTION("Queue") {
        mp::Queue<std::string> q;
        q.put("left");
        q.close();
        CHECK_THROWS_AS(q.put("foo"), mp::ValueError);
        CHECK_THROWS_WITH(q.put("foo"), Catch::Contains("closed"));
        CHECK_THROWS_AS(q.put_nowait("foo"), mp::ValueError);
        CHECK_THROWS_AS(q.put("foo", 1s), mp::ValueError);
        CHECK_THROWS_AS(q.get(), mp::ValueError);
        CHECK_THROWS_WITH(q.get(), Catch::Contains("closed"));
        CHECK_THROWS_AS(q.get_nowait(), mp::ValueError);
        CHECK_THROWS_AS(q.get(1s), mp::ValueError);
        CHECK_THROWS_AS(q.empty(), mp::ValueError);
        q.close();  // twice is fine
    }
    SECTION("SimpleQueue: empty() too (TestSimpleQueue.test_empty_exceptions)") {
        mp::SimpleQueue<int> q;
        CHECK(q.empty());
        q.close();
        CHECK_THROWS_AS(q.empty(), mp::ValueError);
        CHECK_THROWS_WITH(q.empty(), Catch::Contains("closed"));
        CHECK_THROWS_AS(q.put(1), mp::ValueError);
        CHECK_THROWS_AS(q.get(), mp::ValueError);
    }
    SECTION("JoinableQueue") {
        mp::JoinableQueue<std::string> q;
        q.close();
        CHECK_THROWS_AS(q.put("foo"), mp::ValueError);
        CHECK_THROWS_AS(q.get(), mp::ValueError);
    }
    SECTION("every handle copy in this process is the same queue") {
        mp::Queue<int> q;
        mp::Queue<int> copy = q;
        copy.put(1);
        CHECK(q.get_nowait() == 1);  // the same queue
        q.close();
        CHECK_THROWS_AS(copy.put(2), mp::ValueError);
    }
}

TEST_CASE("close(): another process still drains the queue", "[queue]") {
    mp::Queue<int> q, out;
    mp::Event go;
    Kids kids;
    auto& p = kids.start(drain_after_go, q, go, out, 3);
    q.put(1);
    q.put(2);
    q.put(3);
    q.close();
    q.join_thread();
    go.set();
    CHECK(out.get(10s) == 1);
    CHECK(out.get(10s) == 2);
    CHECK(out.get(10s) == 3);
    CHECK(out.get(10s) == 100);
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
}

TEST_CASE("join_thread() requires close(), cancel_join_thread() is harmless", "[queue]") {
    mp::Queue<int> q;
    CHECK_THROWS_AS(q.join_thread(), mp::ValueError);
    q.cancel_join_thread();
    q.put(1);
    CHECK(q.get_nowait() == 1);
    q.close();
    CHECK_NOTHROW(q.join_thread());

    // A child that puts, closes and joins its queue's thread exits; the items are there.
    mp::Queue<int> r;
    Kids kids;
    auto& p = kids.start(
        [](mp::Queue<int> r) {
            r.put(7);
            r.close();
            r.join_thread();
        },
        r);
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    CHECK(r.get(10s) == 7);
}

TEST_CASE("The queue lives while any handle to it exists, in any process", "[queue]") {
    mp::Queue<int> out;
    Kids kids;
    {
        mp::Queue<int> q;
        kids.start(put_range, q, 0, 100);
        kids.start(
            [](mp::Queue<int> q, mp::Queue<int> out) {
                int sum = 0;
                for (int i = 0; i < 100; ++i) sum += q.get(10s);
                out.put(sum);
            },
            q, out);
    }  // the parent's handle is gone; the children's still work
    CHECK(out.get(30s) == 4950);
    CHECK(kids.join_all_ok());
}

// =====================================================================================
// JoinableQueue

TEST_CASE("JoinableQueue: join() waits for task_done() from several consumers (test_task_done)",
          "[queue][joinable]") {
    mp::JoinableQueue<std::optional<int>> queue;
    mp::Queue<int> done;
    Kids kids;
    for (int i = 0; i < 4; ++i) kids.start(task_done_worker, queue, done);

    for (int i = 0; i < 10; ++i) queue.put(i);
    queue.join();
    // Each worker put its item into `done` before task_done(): all ten are there now.
    CHECK(done.qsize() == 10);
    std::multiset<int> seen;
    for (int i = 0; i < 10; ++i) seen.insert(done.get_nowait());
    CHECK(seen == std::multiset<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});

    for (int i = 0; i < 4; ++i) queue.put(std::nullopt);
    CHECK(kids.join_all_ok());
    CHECK(queue.empty());
}

TEST_CASE("JoinableQueue: task_done() too often throws ValueError, join(timeout) is false while items are "
          "unfinished",
          "[queue][joinable]") {
    mp::JoinableQueue<int> jq;
    CHECK(jq.join(0s));  // nothing unfinished
    jq.join();
    CHECK_THROWS_AS(jq.task_done(), mp::ValueError);

    jq.put(1);
    jq.put(2);
    auto t0 = Clock::now();
    CHECK_FALSE(jq.join(TIMEOUT1));
    CHECK(seconds_since(t0) >= 0.9 * TIMEOUT1.count());
    CHECK(seconds_since(t0) < TIMEOUT1.count() + slack);

    CHECK(jq.get() == 1);
    CHECK_FALSE(jq.join(50ms));  // got, not done
    jq.task_done();
    CHECK_FALSE(jq.join(50ms));  // the second item is not even taken
    CHECK(jq.get() == 2);
    CHECK_FALSE(jq.join(50ms));
    jq.task_done();
    CHECK(jq.join(0s));
    jq.join();
    CHECK_THROWS_AS(jq.task_done(), mp::ValueError);

    // A JoinableQueue is a Queue: bounded, Full, Empty.
    mp::JoinableQueue<int> small(1);
    small.put(1);
    CHECK_THROWS_AS(small.put_nowait(2), mp::Full);
    CHECK(small.get() == 1);
    CHECK_THROWS_AS(small.get_nowait(), mp::Empty);
    small.task_done();
    CHECK(small.join(0s));

    // join() in the parent waits for a child's task_done().
    mp::JoinableQueue<int> shared;
    mp::Event got;
    Kids kids;
    auto& p = kids.start(take_then_done_later, shared, got);
    shared.put(42);
    REQUIRE(got.wait(30s));
    CHECK_FALSE(shared.join(50ms));
    t0 = Clock::now();
    CHECK(shared.join(30s));
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
}

// =====================================================================================
// TestSimpleQueue

TEST_CASE("SimpleQueue: empty() seen from a child and the parent (TestSimpleQueue.test_empty)",
          "[queue][simple]") {
    mp::SimpleQueue<bool> queue;
    mp::Event child_can_start, parent_can_continue;
    Kids kids;
    auto& proc = kids.start(simple_put_empty_twice, queue, child_can_start, parent_can_continue);

    CHECK(queue.empty());
    child_can_start.set();
    REQUIRE(parent_can_continue.wait(30s));
    CHECK_FALSE(queue.empty());
    CHECK(queue.get() == true);
    CHECK(queue.get() == false);
    CHECK(queue.empty());

    REQUIRE(proc.join(30s));
    CHECK(proc.exitcode() == 0);
}

TEST_CASE("SimpleQueue: put and get across processes, close() twice (test_close)", "[queue][simple]") {
    mp::SimpleQueue<std::string> in, out;
    Kids kids;
    auto& p = kids.start(simple_shout, in, out);
    in.put("hello");
    in.put("queue");
    in.put("");
    CHECK(out.get() == "HELLO");
    CHECK(out.get() == "QUEUE");
    CHECK(out.get(10s) == "bye");
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    CHECK(out.empty());

    mp::SimpleQueue<int> queue;
    queue.close();
    queue.close();
    CHECK_THROWS_AS(queue.put(1), mp::ValueError);
    CHECK_THROWS_AS(queue.get(), mp::ValueError);

    mp::SimpleQueue<int> timed;
    CHECK_THROWS_AS(timed.get(50ms), mp::Empty);
}

// =====================================================================================
// What the issue asks beyond Python's tests

TEST_CASE("A million puts with no consumer return (unbounded), then all come out in order", "[queue][stress]") {
    mp::Queue<int> q;
    Kids kids;
    auto& p = kids.start(put_a_million, q);
    REQUIRE(p.join(60s));  // nobody got anything while it put
    CHECK(p.exitcode() == 0);
    CHECK(q.qsize() == 1'000'000);

    int out_of_order = 0;
    for (int i = 0; i < 1'000'000; ++i)
        if (q.get_nowait() != i) ++out_of_order;
    CHECK(out_of_order == 0);
    CHECK(q.empty());
    CHECK(q.qsize() == 0);
}

TEST_CASE("A process that puts and exits at once loses nothing", "[queue]") {
    constexpr int n = 2000;
    const Ending endings[] = {Ending::return_, Ending::std_exit, Ending::underscore_exit, Ending::sigkill_self};
    mp::Queue<Tag> q;
    Kids kids;
    std::vector<mp::Process*> procs;
    int producer = 0;
    for (Ending how : endings) {
        procs.push_back(&kids.start(put_then_end, q, producer++, n, how));
        procs.push_back(&kids.start(put_then_end, q, producer++, 1, how));  // one put, then gone
    }
    for (auto* p : procs) REQUIRE(p->join(30s));
    CHECK(procs[6]->exitcode() == -SIGKILL);

    std::map<int, std::vector<int>> by_producer;
    while (!q.empty()) {
        Tag t = q.get_nowait();
        by_producer[t.producer].push_back(t.seq);
    }
    REQUIRE(by_producer.size() == 8);
    for (int p = 0; p < 8; ++p) {
        INFO("producer " << p);
        const int expected_n = (p % 2 == 0) ? n : 1;
        std::vector<int> expected(static_cast<std::size_t>(expected_n));
        for (int i = 0; i < expected_n; ++i) expected[static_cast<std::size_t>(i)] = i;
        CHECK(by_producer[p] == expected);
    }
}

TEST_CASE("Three producers and three consumers at once: nothing lost, nothing duplicated", "[queue][stress]") {
    constexpr int producers = 3, consumers = 3, per_producer = 20000;
    constexpr long long total = static_cast<long long>(producers) * per_producer;
    mp::Queue<Tag> q;
    mp::Value<long long> taken(0);
    mp::Queue<std::vector<Tag>> results;
    Kids kids;
    for (int c = 0; c < consumers; ++c) kids.start(consume_tags, q, taken, total, results);
    for (int p = 0; p < producers; ++p) kids.start(produce_tags, q, p, per_producer);

    std::vector<Tag> all;
    for (int c = 0; c < consumers; ++c) {
        std::vector<Tag> mine = results.get(60s);
        CHECK(per_producer_increasing(mine));
        all.insert(all.end(), mine.begin(), mine.end());
    }
    CHECK(kids.join_all_ok());
    std::sort(all.begin(), all.end());
    CHECK(all.size() == static_cast<std::size_t>(total));
    CHECK((all == all_tags(producers, per_producer)));  // exactly once each
    CHECK(q.empty());
}

TEST_CASE("A bounded queue under several producers and consumers loses nothing", "[queue][stress]") {
    constexpr int producers = 3, consumers = 2, per_producer = 5000;
    constexpr long long total = static_cast<long long>(producers) * per_producer;
    mp::Queue<Tag> q(16);
    mp::Value<long long> taken(0);
    mp::Queue<std::vector<Tag>> results;
    Kids kids;
    for (int p = 0; p < producers; ++p) kids.start(produce_tags, q, p, per_producer);
    for (int c = 0; c < consumers; ++c) kids.start(consume_tags, q, taken, total, results);

    std::vector<Tag> all;
    for (int c = 0; c < consumers; ++c) {
        std::vector<Tag> mine = results.get(60s);
        CHECK(per_producer_increasing(mine));
        all.insert(all.end(), mine.begin(), mine.end());
    }
    CHECK(kids.join_all_ok());
    std::sort(all.begin(), all.end());
    CHECK((all == all_tags(producers, per_producer)));
    CHECK(q.qsize() == 0);
    CHECK_FALSE(q.full());
}

TEST_CASE("A process killed inside put() or get() does not wedge the queue", "[queue][faults]") {
    mp::Queue<std::string> q;
    std::random_device rd;
    const unsigned seed = rd();
    INFO("kill-time seed " << seed);
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> delay_ms(2, 40);

    std::size_t items_seen = 0;
    for (int round = 0; round < 12; ++round) {
        INFO("round " << round);
        // Items in the parent's own lane, for the child's get() to take too.
        for (int i = 0; i < 20; ++i) q.put(pattern(static_cast<std::size_t>(i) * 37 + 1));
        Kids kids;
        auto& p = kids.start(put_get_forever, q, static_cast<std::uint32_t>(round * 7919 + 1));
        std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
        p.kill();
        REQUIRE(p.join(30s));
        CHECK(p.exitcode() == -SIGKILL);  // not 3: it never saw a malformed item

        // The others go on: the parent puts and a timed get succeeds within seconds.
        const std::string marker = "#" + std::to_string(round);
        auto t0 = Clock::now();
        q.put(marker);
        for (;;) {
            std::string s = q.get(5s);  // Empty here means the queue is wedged
            if (s == marker) break;
            CHECK((s[0] == '#' || well_formed(s)));
            REQUIRE(++items_seen < 10'000'000);
        }
        CHECK(seconds_since(t0) < 5.0);
    }

    // Fresh processes (which take over the dead ones' lanes, and any producer lock a
    // dead one held) put, and the parent gets all of it, in each one's order.
    Kids kids;
    for (int k = 0; k < 8; ++k) kids.start(put_numbered, q, k, 500);
    CHECK(kids.join_all_ok());
    std::map<int, std::vector<int>> numbered;
    while (!q.empty()) {  // nothing new comes: every child has ended
        std::string s = q.get(5s);
        if (s.rfind("#n", 0) == 0) {
            const auto colon = s.find(':');
            numbered[std::stoi(s.substr(2, colon - 2))].push_back(std::stoi(s.substr(colon + 1)));
        } else {
            CHECK((s[0] == '#' || well_formed(s)));
        }
    }
    std::vector<int> expected(500);
    for (int i = 0; i < 500; ++i) expected[static_cast<std::size_t>(i)] = i;
    REQUIRE(numbered.size() == 8);
    for (auto& [k, seqs] : numbered) {
        INFO("fresh producer " << k);
        CHECK(seqs == expected);
    }
}

TEST_CASE("A process killed inside put() or get() does not wedge a bounded queue", "[queue][faults]") {
    // The same on a bounded queue, whose slot count a put takes before it writes and a
    // get gives back after it read: a process killed in between must not keep a slot.
    constexpr int maxsize = 2;
    mp::Queue<std::string> q(maxsize);
    std::random_device rd;
    const unsigned seed = rd();
    INFO("kill-time seed " << seed);
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> delay_ms(2, 40);

    for (int round = 0; round < 12; ++round) {
        INFO("round " << round);
        Kids kids;
        auto& p = kids.start(put_get_forever, q, static_cast<std::uint32_t>(round * 7919 + 1));
        std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
        p.kill();
        REQUIRE(p.join(30s));
        CHECK(p.exitcode() == -SIGKILL);

        // Empty the queue (nothing new comes: the child is dead), then fill it: maxsize
        // puts must fit again.
        while (!q.empty()) {
            std::string s = q.get(5s);
            CHECK((s[0] == '#' || well_formed(s)));
        }
        for (int i = 0; i < maxsize; ++i) {
            INFO("put " << i << " into the emptied queue");
            REQUIRE_NOTHROW(q.put("#" + std::to_string(i), 5s));  // Full here: a slot leaked
        }
        for (int i = 0; i < maxsize; ++i) CHECK(q.get(5s) == "#" + std::to_string(i));
    }
}

TEST_CASE("Items of 1 MiB and 64 MiB round-trip, an item over the limit is a ValueError", "[queue][large]") {
    mp::Queue<std::string> in, out;
    Kids kids;
    auto& p = kids.start(echo_n<std::string>, in, out, 3);
    for (std::size_t size : {std::size_t{1} << 20, std::size_t{64} << 20, std::size_t{1} << 20}) {
        INFO("item of " << size << " bytes");
        std::string item(size, '\0');
        for (std::size_t i = 0; i < size; ++i) item[i] = static_cast<char>((i * 131 + size) % 251);
        in.put(item);
        std::string back = out.get(60s);
        CHECK(back.size() == size);
        CHECK((back == item));
    }
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);

    // Over the per-item limit (about 1 GiB): put throws ValueError before writing anything.
    const std::size_t huge = (std::size_t{1} << 30) + 4096;
    void* view = ::mmap(nullptr, huge, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    REQUIRE(view != MAP_FAILED);
    mp::Queue<HugeItem> hq;
    CHECK_THROWS_AS(hq.put(HugeItem(static_cast<const char*>(view), huge)), mp::ValueError);
    CHECK_THROWS_WITH(hq.put(HugeItem(static_cast<const char*>(view), huge)), Catch::Contains("larger"));
    ::munmap(view, huge);
    CHECK(hq.empty());
    CHECK(hq.qsize() == 0);
    // and the queue is still fine
    hq.put(HugeItem{});
    CHECK_NOTHROW(hq.get(1s));

    // A bounded queue gives its slot back after the refused put.
    mp::Queue<HugeItem> one(1);
    void* view2 = ::mmap(nullptr, huge, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    REQUIRE(view2 != MAP_FAILED);
    CHECK_THROWS_AS(one.put(HugeItem(static_cast<const char*>(view2), huge)), mp::ValueError);
    ::munmap(view2, huge);
    CHECK_NOTHROW(one.put_nowait(HugeItem{}));
}

TEST_CASE("A Queue given to a Pool initializer (Pool(initializer=init, initargs=(q,)))", "[queue][pool]") {
    mp::Queue<int> q;
    {
        mp::Pool pool({.processes = 2, .initializer = {init_with_queue, q}});
        std::vector<int> xs(20);
        for (int i = 0; i < 20; ++i) xs[static_cast<std::size_t>(i)] = i;
        pool.map(put_square, xs, {.chunksize = 1});
        std::multiset<int> squares;
        for (int i = 0; i < 20; ++i) squares.insert(q.get(10s));
        std::multiset<int> expected;
        for (int i = 0; i < 20; ++i) expected.insert(i * i);
        CHECK(squares == expected);

        auto r = pool.apply_async(put_cube_and_return, 3);
        CHECK(r.get(10s) == 3);
        CHECK(q.get(10s) == 27);
        pool.close();
        pool.join();
    }
    CHECK_FALSE(g_results.has_value());  // the initializer ran in the workers only
    CHECK(q.empty());
}

TEST_CASE("Threads: 4 putting and 4 getting in one process lose nothing", "[queue][threads]") {
    constexpr int producers = 4, consumers = 4, per_producer = 20000;
    constexpr int total = producers * per_producer;
    mp::Queue<Tag> q;
    std::atomic<int> taken{0};
    std::vector<std::vector<Tag>> got(consumers);
    std::vector<std::thread> threads;
    for (int c = 0; c < consumers; ++c)
        threads.emplace_back([&, c] {
            while (taken.load() < total) {
                try {
                    got[static_cast<std::size_t>(c)].push_back(q.get(50ms));
                    taken.fetch_add(1);
                } catch (const mp::Empty&) {
                }
            }
        });
    for (int p = 0; p < producers; ++p)
        threads.emplace_back([&q, p] {
            for (int i = 0; i < per_producer; ++i) q.put(Tag{p, i});
        });
    for (auto& t : threads) t.join();

    std::vector<Tag> all;
    for (auto& mine : got) {
        CHECK(per_producer_increasing(mine));
        all.insert(all.end(), mine.begin(), mine.end());
    }
    std::sort(all.begin(), all.end());
    CHECK((all == all_tags(producers, per_producer)));
    CHECK(q.empty());

    // The same through a bounded queue, with a handle copy per thread.
    mp::Queue<Tag> bounded(8);
    taken = 0;
    for (auto& g : got) g.clear();
    threads.clear();
    for (int c = 0; c < consumers; ++c)
        threads.emplace_back([&, c, mine = bounded] () mutable {
            while (taken.load() < total) {
                try {
                    got[static_cast<std::size_t>(c)].push_back(mine.get(50ms));
                    taken.fetch_add(1);
                } catch (const mp::Empty&) {
                }
            }
        });
    for (int p = 0; p < producers; ++p)
        threads.emplace_back([p, mine = bounded] () mutable {
            for (int i = 0; i < per_producer; ++i) mine.put(Tag{p, i});
        });
    for (auto& t : threads) t.join();
    all.clear();
    for (auto& mine : got) {
        CHECK(per_producer_increasing(mine));
        all.insert(all.end(), mine.begin(), mine.end());
    }
    std::sort(all.begin(), all.end());
    CHECK((all == all_tags(producers, per_producer)));
    CHECK(bounded.qsize() == 0);
}

// =====================================================================================
// Issue 13: exception safety, memory, order

TEST_CASE("put() whose encoding throws changes nothing: lock, slot and unfinished count given back (issue 13 "
          "item 7)",
          "[queue][issue13]") {
    mp::JoinableQueue<Fickle> q(1);
    CHECK_THROWS_WITH(q.put(Fickle{Misbehave::throw_on_write}), Catch::Contains("cannot serialize"));
    CHECK(q.qsize() == 0);
    CHECK(q.empty());
    // The lane's lock was released and the slot given back: a put that must not wait fits.
    CHECK_NOTHROW(q.put(Fickle{}, 0.5s));
    // ... and only one: the queue holds one item.
    CHECK_THROWS_AS(q.put_nowait(Fickle{}), mp::Full);
    CHECK_NOTHROW(q.get(1s));
    q.task_done();
    // join() counts only the item that went in.
    CHECK(q.join(1s));
}

TEST_CASE("An encoding that writes more (or less) than it measured is refused, nothing overrun (issue 13 item 7)",
          "[queue][issue13]") {
    mp::Queue<Fickle> q(2);
    for (Misbehave how : {Misbehave::grow, Misbehave::shrink}) {
        INFO("misbehaviour " << static_cast<int>(how));
        CHECK_THROWS_AS(q.put(Fickle{how}), mp::ValueError);
        CHECK(q.empty());
    }
    // The queue still works and holds its two slots.
    CHECK_NOTHROW(q.put(Fickle{}, 0.5s));
    CHECK_NOTHROW(q.put(Fickle{}, 0.5s));
    CHECK_THROWS_AS(q.put_nowait(Fickle{}), mp::Full);
    CHECK_NOTHROW(q.get(1s));
    CHECK_NOTHROW(q.get(1s));

}

TEST_CASE("After a put and a get, one thread's burst past 4 MiB uses the whole lane", "[queue][large]") {
    // The producer wraps early once past the warm part when the consumer has caught up,
    // leaving a filler over the rest of the lane; with no consumer running, put() then
    // found the lane full after ~4 MiB and blocked for ever (an unbounded queue!).
    mp::Queue<std::string> q;
    q.put("warm-up");
    CHECK(q.get(5s) == "warm-up");
    const std::string block(256 << 10, 'b');
    for (int i = 0; i < 64; ++i) {  // 16 MiB, all before any get
        INFO("put " << i);
        REQUIRE_NOTHROW(q.put(block, 5s));
    }
    for (int i = 0; i < 64; ++i) REQUIRE(q.get(5s).size() == block.size());
    CHECK(q.empty());
    // And again, now that the lane has wrapped once.
    for (int i = 0; i < 64; ++i) REQUIRE_NOTHROW(q.put(block, 5s));
    for (int i = 0; i < 64; ++i) REQUIRE(q.get(5s).size() == block.size());
}

TEST_CASE("Drained queue memory goes back to the kernel (issue 13 item 10)", "[queue][issue13][large]") {
    const long before = rss_shmem_kb();
    mp::Queue<std::string> q;
    const std::string mib(1 << 20, 'm');
    REQUIRE(before >= 0);
    for (int i = 0; i < 256; ++i) q.put(mib);  // a burst: no consumer meanwhile
    const long peak = rss_shmem_kb();
    for (int i = 0; i < 256; ++i) REQUIRE(q.get(5s).size() == mib.size());
    const long after = rss_shmem_kb();
    INFO("RssShmem kB: before " << before << ", after the burst " << peak << ", drained " << after);
    CHECK(peak - before > 200 * 1024);  // the burst was resident (so the measure is real)
    // What stays is about the warm part of the lane (4 MiB), not the 256 MiB burst.
    CHECK(after - before < 32 * 1024);
}

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
TEST_CASE("A queue can be made and used under a 4 GiB RLIMIT_AS (issue 13 item 10)", "[queue][issue13]") {
    // In a forked child, so the limit does not outlive the test.
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        struct rlimit limit{rlim_t{4} << 30, rlim_t{4} << 30};
        if (::setrlimit(RLIMIT_AS, &limit) != 0) ::_exit(2);
        try {
            mp::Queue<std::string> q(4);
            q.put(std::string(1 << 20, 'a'));
            if (q.get(5s).size() != (1u << 20)) ::_exit(3);
        } catch (...) {
            ::_exit(1);  // the segment's mapping failed
        }
        ::_exit(0);
    }
    int status = 0;
    const auto t0 = Clock::now();
    pid_t r = 0;
    while ((r = ::waitpid(child, &status, WNOHANG)) == 0 && seconds_since(t0) < 30)
        std::this_thread::sleep_for(5ms);
    if (r == 0) {
        ::kill(child, SIGKILL);
        ::waitpid(child, &status, 0);
    }
    REQUIRE(r == child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);  // 1: creating the queue failed under the limit
}
#endif
