// synchronize: a port of the behaviours CPython checks in _TestLock, _TestSemaphore,
// _TestCondition, _TestEvent and _TestBarrier (Lib/test/_test_multiprocessing.py), written
// for the C++ API, with real child processes; plus what Python does not promise and
// API.md does: a holder that dies (SIGKILL, or _exit without releasing) is no deadlock.
//
// Children get the primitives as Process arguments (fork: they could also inherit them).
// A child reports a failed check by throwing (CHILD_REQUIRE): its exit code is then 1 and
// its stderr says which check. No Catch2 macro ever runs in a child. Timings are only
// checked loosely: lower bounds of 0.8 x the timeout, upper bounds of seconds.
#include <catch2/catch.hpp>

#include <multiprocessing.hpp>

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;
using mp_test::seconds_since;
using Secs = std::chrono::duration<double>;
using Clock = std::chrono::steady_clock;

namespace {


using mp_test::Children;

// Threads of the parent, joined on scope exit (the ones here all wait with timeouts).
struct Threads {
    std::vector<std::thread> ts;
    template <class... A>
    void start(A&&... a) {
        ts.emplace_back(std::forward<A>(a)...);
    }
    void join() {
        for (auto& t : ts)
            if (t.joinable()) t.join();
    }
    ~Threads() { join(); }
};

// CPython's assertReachesEventually: polls until pred() holds or `timeout` passes.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 10000ms) {
    const auto deadline = Clock::now() + timeout;
    while (!pred()) {
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(5ms);
    }
    return true;
}

// A shared counter (CPython's DummyList: its len() and append()).
void add_one(mp::Value<int>& v) {
    std::lock_guard g(v.get_lock());
    ++v.value();
}
int read(mp::Value<int>& v) {
    std::lock_guard g(v.get_lock());
    return v.value();
}

// ---------------------------------------------------------------------------------
// Child targets shared by several tests.

// Takes `lock` (any lock-like type), says so, and holds it until told to let go.
template <class L>
void hold_until_told(L lock, mp::Event held, mp::Event go) {
    CHILD_REQUIRE(lock.acquire(10s));
    held.set();
    CHILD_REQUIRE(go.wait(30s));
    lock.release();
}

// Whether this process can take `lock` right now (without waiting).
template <class L>
void expect_try_acquire(L lock, bool expected) {
    const bool got = lock.acquire(false);
    CHILD_REQUIRE(got == expected);
    if (got) lock.release();
}

// Checks, from a child process, whether `lock` can be taken right now (`expected`).
template <class L>
void child_try_acquire(const L& lock, bool expected) {
    Children kid;
    kid.start(expect_try_acquire<L>, lock, expected);
    kid.join_all();
}

// Takes `lock` `depth` times, says so, then either hangs (to be SIGKILLed) or leaves with
// _exit() without releasing.
template <class L>
void take_and_hang(L lock, mp::Event held, int depth) {
    for (int i = 0; i < depth; ++i) CHILD_REQUIRE(lock.acquire(10s));
    held.set();
    std::this_thread::sleep_for(60s);
}
template <class L>
void take_and_exit(L lock, mp::Event held, int depth) {
    for (int i = 0; i < depth; ++i) CHILD_REQUIRE(lock.acquire(10s));
    held.set();
    ::_exit(0);
}

// `times` increments of a shared counter, each under `lock`. The read and the write are
// apart (with the odd yield between) so that a broken exclusion would lose updates.
template <class L>
void increment_under(L lock, mp::Value<int> counter, int times) {
    for (int i = 0; i < times; ++i) {
        std::lock_guard g(lock);
        const int v = counter.value();
        if (i % 128 == 0) std::this_thread::yield();
        counter.value() = v + 1;
    }
}

// The critical section of the robustness tests: takes `lock` (within 10 s: a dead
// holder must not block it), checks that nobody else is inside, stays a moment.
template <class L>
void take_and_work(L lock, mp::Value<int> inside, mp::Value<int> done) {
    CHILD_REQUIRE(lock.acquire(10s));
    {
        std::lock_guard g(inside.get_lock());
        CHILD_REQUIRE(++inside.value() == 1);
    }
    std::this_thread::sleep_for(20ms);
    {
        std::lock_guard g(inside.get_lock());
        --inside.value();
    }
    add_one(done);
    lock.release();
}

}  // namespace

// =====================================================================================
// Lock (_TestLock)

TEST_CASE("Lock: acquire, acquire(false), try_lock and release", "[lock]") {
    mp::Lock lock;
    CHECK(lock.acquire());
    CHECK_FALSE(lock.acquire(false));
    CHECK_FALSE(lock.try_lock());
    lock.release();
    CHECK(lock.try_lock());
    lock.unlock();
    CHECK(lock.acquire(false));
    lock.release();
}

TEST_CASE("Lock: releasing an unlocked Lock throws ValueError", "[lock]") {
    mp::Lock lock;
    CHECK_THROWS_AS(lock.release(), mp::ValueError);
    lock.acquire();
    lock.release();
    CHECK_THROWS_AS(lock.release(), mp::ValueError);
    CHECK_THROWS_AS(lock.unlock(), mp::ValueError);
    // and the failed release did not break it
    CHECK(lock.acquire(false));
    lock.release();
}

TEST_CASE("Lock: a timed acquire of a held lock returns false after about the timeout", "[lock][timeout]") {
    mp::Lock lock;

    SECTION("held by this thread (a Lock is not recursive)") {
        lock.acquire();
        auto t0 = Clock::now();
        CHECK_FALSE(lock.acquire(0.3s));
        const double e = seconds_since(t0);
        CHECK(e >= 0.8 * 0.3);
        CHECK(e < 5.0);
        lock.release();
    }

    SECTION("held by another process") {
        mp::Event held, go;
        Children kids;
        kids.start(hold_until_told<mp::Lock>, lock, held, go);
        REQUIRE(held.wait(10s));

        auto t0 = Clock::now();
        CHECK_FALSE(lock.acquire(0.3s));
        double e = seconds_since(t0);
        CHECK(e >= 0.8 * 0.3);
        CHECK(e < 5.0);

        t0 = Clock::now();
        CHECK_FALSE(lock.acquire(true, 0.2s));  // Python's acquire(True, 0.2)
        e = seconds_since(t0);
        CHECK(e >= 0.8 * 0.2);
        CHECK(e < 5.0);

        t0 = Clock::now();
        CHECK_FALSE(lock.acquire(false, 5s));  // non-blocking: the timeout does not count
        CHECK(seconds_since(t0) < 2.5);

        t0 = Clock::now();
        CHECK_FALSE(lock.try_lock_for(200ms));
        CHECK(seconds_since(t0) >= 0.8 * 0.2);
        CHECK_FALSE(lock.try_lock_until(Clock::now() + 100ms));
        CHECK_FALSE(lock.acquire(0s));

        go.set();
        CHECK(lock.acquire(10s));  // the child lets go: we get it
        lock.release();
        kids.join_all();
    }
}

TEST_CASE("Lock: std::lock_guard, std::unique_lock and std::scoped_lock", "[lock]") {
    mp::Lock a, b;
    {
        std::lock_guard g(a);
        CHECK_FALSE(a.try_lock());
    }
    CHECK(a.try_lock());
    a.release();
    {
        std::unique_lock u(a);
        CHECK(u.owns_lock());
        CHECK_FALSE(a.try_lock());
        u.unlock();
        CHECK(a.try_lock());
        a.release();
        u.lock();
        CHECK_FALSE(a.try_lock());
    }
    {
        std::unique_lock u(a, std::try_to_lock);
        CHECK(u.owns_lock());
        std::unique_lock timed(a, 50ms);  // try_lock_for: held by `u`
        CHECK_FALSE(timed.owns_lock());
    }
    {
        std::unique_lock timed(a, 50ms);
        CHECK(timed.owns_lock());
    }
    {
        std::scoped_lock both(a, b);
        CHECK_FALSE(a.try_lock());
        CHECK_FALSE(b.try_lock());
    }
    CHECK(a.try_lock());
    CHECK(b.try_lock());
    a.release();
    b.release();

    // The other lock-like classes too (Python: `with lock:` for each).
    mp::RLock r;
    mp::Semaphore s(1);
    mp::BoundedSemaphore bs(1);
    mp::Condition c;
    {
        std::scoped_lock all(r, s, bs, c);
        CHECK(s.get_value() == 0);
        CHECK(bs.get_value() == 0);
    }
    CHECK(s.get_value() == 1);
    CHECK(bs.get_value() == 1);
    {
        std::lock_guard g(c);  // a Condition's own RLock: taking it again is fine
        CHECK(c.acquire(false));
        c.release();
    }
}

TEST_CASE("Lock: held by a child, it is held for the parent, any process may release it", "[lock]") {
    // CPython's test_lock_locked_2processes: the child takes it and exits.
    mp::Lock lock;
    mp::Event held;
    Children kids;
    kids.start(
        [](mp::Lock l, mp::Event e) {
            CHILD_REQUIRE(l.acquire(10s));
            e.set();
        },
        lock, held);
    REQUIRE(held.wait(10s));
    CHECK_FALSE(lock.acquire(false));
    kids.join_all();
    // Released by another process than the one that took it, as Python allows.
    lock.release();
    CHECK(lock.acquire(false));
    lock.release();

    // And the other way round: taken here, released by a child.
    lock.acquire();
    kids.start([](mp::Lock l) { l.release(); }, lock);
    kids.join_all();
    CHECK(lock.acquire(false));
    lock.release();
}

TEST_CASE("Lock: released by another thread than the one that took it", "[lock][threads]") {
    mp::Lock lock;
    lock.acquire();
    std::thread t([&] { lock.release(); });
    t.join();
    CHECK(lock.acquire(false));
    lock.release();
}

TEST_CASE("Lock: 4 processes x 10000 increments of a Value<int> under the lock give 40000", "[lock][processes]") {
    mp::Lock lock;
    mp::Value<int> counter(0);
    Children kids;
    for (int i = 0; i < 4; ++i) kids.start(increment_under<mp::Lock>, lock, counter, 10000);
    kids.join_all(60s);
    CHECK(counter.value() == 40000);
}

TEST_CASE("Lock, RLock, Semaphore(1), Condition: threads of one process exclude each other", "[lock][threads]") {
    auto hammer = [](auto& lock) {
        long counter = 0;
        int inside = 0;
        bool overlapped = false;
        Threads threads;
        for (int t = 0; t < 4; ++t)
            threads.start([&] {
                for (int i = 0; i < 10000; ++i) {
                    std::lock_guard g(lock);
                    if (++inside != 1) overlapped = true;
                    ++counter;
                    --inside;
                }
            });
        threads.join();
        CHECK(counter == 40000);
        CHECK_FALSE(overlapped);
    };
    SECTION("Lock") {
        mp::Lock l;
        hammer(l);
    }
    SECTION("RLock") {
        mp::RLock l;
        hammer(l);
    }
    SECTION("Semaphore(1)") {
        mp::Semaphore l(1);
        hammer(l);
        CHECK(l.get_value() == 1);
    }
    SECTION("Condition") {
        mp::Condition l;
        hammer(l);
    }
}

TEST_CASE("Lock: threads in several processes exclude each other", "[lock][threads][processes]") {
    mp::Lock lock;
    mp::Value<int> counter(0);
    Children kids;
    for (int i = 0; i < 2; ++i)
        kids.start(
            [](mp::Lock l, mp::Value<int> c) {
                std::vector<std::thread> ts;
                for (int t = 0; t < 3; ++t) ts.emplace_back([&] { increment_under(l, c, 5000); });
                for (auto& t : ts) t.join();
            },
            lock, counter);
    increment_under(lock, counter, 5000);  // and the parent's main thread too
    kids.join_all(60s);
    CHECK(counter.value() == 2 * 3 * 5000 + 5000);
}

// =====================================================================================
// RLock (_TestLock.test_rlock)

TEST_CASE("RLock: its owner may take it again, it is free once released as often", "[rlock]") {
    mp::RLock lock;
    CHECK(lock.acquire());
    CHECK(lock.acquire());
    CHECK(lock.acquire(false));
    CHECK(lock.acquire(0.1s));
    CHECK(lock.try_lock());

    child_try_acquire(lock, false);  // held here: not for a child

    for (int i = 0; i < 4; ++i) lock.release();
    child_try_acquire(lock, false);  // still held once
    lock.unlock();
    CHECK_THROWS_AS(lock.release(), mp::ValueError);

    child_try_acquire(lock, true);  // free now
}

TEST_CASE("RLock: release by a thread or process that does not own it throws ValueError", "[rlock][threads]") {
    mp::RLock lock;
    CHECK_THROWS_AS(lock.release(), mp::ValueError);  // nobody holds it

    lock.acquire();
    bool thread_threw = false;
    bool thread_got_it = true;
    std::thread t([&] {
        try {
            lock.release();
        } catch (const mp::ValueError&) {
            thread_threw = true;
        }
        thread_got_it = lock.acquire(false);
    });
    t.join();
    CHECK(thread_threw);
    CHECK_FALSE(thread_got_it);

    Children kids;
    kids.start(
        [](mp::RLock l) {
            bool threw = false;
            try {
                l.release();
            } catch (const mp::ValueError&) {
                threw = true;
            }
            CHILD_REQUIRE(threw);
        },
        lock);
    kids.join_all();

    lock.release();  // still ours, exactly once
    CHECK_THROWS_AS(lock.release(), mp::ValueError);
}

TEST_CASE("RLock: held (twice) by a child, the parent waits until it is let go", "[rlock][processes]") {
    mp::RLock lock;
    mp::Event held, go;
    Children kids;
    kids.start(
        [](mp::RLock l, mp::Event h, mp::Event g) {
            CHILD_REQUIRE(l.acquire(10s));
            CHILD_REQUIRE(l.acquire(10s));
            h.set();
            CHILD_REQUIRE(g.wait(30s));
            l.release();
            std::this_thread::sleep_for(50ms);  // still held once
            l.release();
        },
        lock, held, go);
    REQUIRE(held.wait(10s));
    CHECK_FALSE(lock.acquire(false));
    CHECK_FALSE(lock.acquire(0.2s));
    go.set();
    CHECK(lock.acquire(10s));
    lock.release();
    kids.join_all();
}

// =====================================================================================
// Semaphore, BoundedSemaphore (_TestSemaphore)

TEST_CASE("Semaphore: counting and get_value", "[semaphore]") {
    auto check_counts = [](mp::Semaphore& sem) {  // CPython's _test_semaphore
        CHECK(sem.get_value() == 2);
        CHECK(sem.acquire());
        CHECK(sem.get_value() == 1);
        CHECK(sem.acquire());
        CHECK(sem.get_value() == 0);
        CHECK_FALSE(sem.acquire(false));
        CHECK(sem.get_value() == 0);
        sem.release();
        CHECK(sem.get_value() == 1);
        sem.release();
        CHECK(sem.get_value() == 2);
    };

    SECTION("Semaphore(2) may go above its initial value") {
        mp::Semaphore sem(2);
        check_counts(sem);
        sem.release();
        CHECK(sem.get_value() == 3);
        sem.release();
        CHECK(sem.get_value() == 4);
    }
    SECTION("BoundedSemaphore(2) may not: ValueError, and the value stays") {
        mp::BoundedSemaphore sem(2);
        check_counts(sem);
        CHECK_THROWS_AS(sem.release(), mp::ValueError);
        CHECK(sem.get_value() == 2);
        CHECK(sem.acquire(false));
        sem.release();
        CHECK_THROWS_AS(sem.release(), mp::ValueError);
    }
    SECTION("the default value is 1") {
        mp::Semaphore s;
        mp::BoundedSemaphore b;
        CHECK(s.get_value() == 1);
        CHECK(b.get_value() == 1);
        CHECK_THROWS_AS(b.release(), mp::ValueError);
    }
    SECTION("a negative initial value is a ValueError") {
        CHECK_THROWS_AS(mp::Semaphore(-1), mp::ValueError);
        CHECK_THROWS_AS(mp::BoundedSemaphore(-1), mp::ValueError);
    }
    SECTION("the count is shared with a child") {
        mp::Semaphore sem(2);
        Children kids;
        kids.start(
            [](mp::Semaphore s) {
                CHILD_REQUIRE(s.get_value() == 2);
                CHILD_REQUIRE(s.acquire(false));
                CHILD_REQUIRE(s.acquire(false));
                CHILD_REQUIRE(!s.acquire(false));
                s.release();
            },
            sem);
        kids.join_all();
        CHECK(sem.get_value() == 1);
    }
}

TEST_CASE("Semaphore: acquire timeouts", "[semaphore][timeout]") {
    // CPython's _TestSemaphore.test_timeout, with timings checked loosely.
    mp::Semaphore sem(0);
    auto t0 = Clock::now();
    CHECK_FALSE(sem.acquire(false));
    CHECK_FALSE(sem.acquire(false, 1s));
    CHECK(seconds_since(t0) < 0.5);

    t0 = Clock::now();
    CHECK_FALSE(sem.acquire(true, 0.2s));
    double e = seconds_since(t0);
    CHECK(e >= 0.8 * 0.2);
    CHECK(e < 5.0);

    t0 = Clock::now();
    CHECK_FALSE(sem.acquire(0.3s));
    e = seconds_since(t0);
    CHECK(e >= 0.8 * 0.3);
    CHECK(e < 5.0);

    mp::BoundedSemaphore bs(1);
    bs.acquire();
    t0 = Clock::now();
    CHECK_FALSE(bs.try_lock_for(200ms));
    CHECK(seconds_since(t0) >= 0.8 * 0.2);
    bs.release();
}

TEST_CASE("Semaphore: a release in a child wakes a waiting parent", "[semaphore][processes]") {
    mp::Semaphore sem(0);
    Children kids;
    kids.start(
        [](mp::Semaphore s) {
            std::this_thread::sleep_for(100ms);
            s.release();
            s.release();
        },
        sem);
    CHECK(sem.acquire(10s));
    CHECK(sem.acquire(10s));
    kids.join_all();
    CHECK(sem.get_value() == 0);
}

TEST_CASE("Semaphore(3): at most 3 of 6 processes are inside at any time", "[semaphore][processes]") {
    mp::Semaphore sem(3);
    mp::Value<int> inside(0), most(0);
    Children kids;
    for (int i = 0; i < 6; ++i)
        kids.start(
            [](mp::Semaphore s, mp::Value<int> in, mp::Value<int> max_in) {
                for (int k = 0; k < 15; ++k) {
                    CHILD_REQUIRE(s.acquire(10s));
                    {
                        std::lock_guard g(in.get_lock());
                        const int now = ++in.value();
                        if (now > max_in.value()) max_in.value() = now;
                    }
                    std::this_thread::sleep_for(2ms);
                    {
                        std::lock_guard g(in.get_lock());
                        --in.value();
                    }
                    s.release();
                }
            },
            sem, inside, most);
    kids.join_all(60s);
    CHECK(most.value() >= 1);
    CHECK(most.value() <= 3);
    CHECK(inside.value() == 0);
    CHECK(sem.get_value() == 3);
}

// =====================================================================================
// Condition (_TestCondition)

namespace {

// CPython's _TestCondition.f: takes the condition, says it is about to sleep, waits
// (timeout < 0: without a timeout), counts itself woken. Threads of the parent pass a
// long timeout instead of none, so that a failing test cannot hang on joining them.
void cond_waiter(mp::Condition cond, mp::Semaphore sleeping, mp::Value<int> woken, double timeout) {
    cond.acquire();
    sleeping.release();
    if (timeout < 0)
        cond.wait();
    else
        cond.wait(Secs(timeout));
    add_one(woken);
    cond.release();
}

// CPython's check_invariant: once nobody waits, nothing of earlier waits is left behind
// (no notification in reserve, no waiter still counted).
void check_no_waiters_left(mp::Condition& cond) {
    {
        std::lock_guard g(cond);
        cond.notify_all();  // nobody waits: this must do nothing
    }
    std::lock_guard g(cond);
    auto t0 = Clock::now();
    CHECK_FALSE(cond.wait(0.1s));
    CHECK(seconds_since(t0) >= 0.08);
}

// The three conditions every Condition test runs with.
mp::Condition make_condition(int kind) {
    switch (kind) {
        case 0: return mp::Condition();               // its own RLock
        case 1: return mp::Condition(mp::Lock());     // a given Lock
        default: return mp::Condition(mp::RLock());   // a given RLock
    }
}
const char* const condition_kinds[] = {"Condition()", "Condition(Lock())", "Condition(RLock())"};

}  // namespace

TEST_CASE("Condition: notify() wakes one waiter at a time", "[condition][processes][threads]") {
    for (int kind = 0; kind < 3; ++kind) {
        INFO(condition_kinds[kind]);
        mp::Condition cond = make_condition(kind);
        mp::Semaphore sleeping(0);
        mp::Value<int> woken(0);
        Children kids;
        kids.start(cond_waiter, cond, sleeping, woken, -1.0);
        Threads threads;
        threads.start(cond_waiter, cond, sleeping, woken, 20.0);

        // Both are waiting once they have said so and we can take the lock.
        REQUIRE(sleeping.acquire(10s));
        REQUIRE(sleeping.acquire(10s));
        std::this_thread::sleep_for(100ms);
        CHECK(read(woken) == 0);

        cond.acquire();
        cond.notify();
        cond.release();
        CHECK(eventually([&] { return read(woken) >= 1; }));
        std::this_thread::sleep_for(200ms);
        CHECK(read(woken) == 1);

        {
            std::lock_guard g(cond);
            cond.notify();
        }
        CHECK(eventually([&] { return read(woken) >= 2; }));
        CHECK(read(woken) == 2);

        threads.join();
        kids.join_all();
        check_no_waiters_left(cond);
    }
}

TEST_CASE("Condition: timed waits time out, notify_all() wakes every waiter", "[condition][processes][threads]") {
    mp::Condition cond;
    mp::Semaphore sleeping(0);
    mp::Value<int> woken(0);
    Children kids;
    Threads threads;

    // Some that time out (0.1 s).
    for (int i = 0; i < 3; ++i) kids.start(cond_waiter, cond, sleeping, woken, 0.1);
    for (int i = 0; i < 3; ++i) threads.start(cond_waiter, cond, sleeping, woken, 0.1);
    for (int i = 0; i < 6; ++i) REQUIRE(sleeping.acquire(10s));
    CHECK(eventually([&] { return read(woken) == 6; }));
    threads.join();
    kids.join_all();
    check_no_waiters_left(cond);

    // Some that wait until notified.
    woken.value() = 0;
    Children more;
    Threads more_threads;
    for (int i = 0; i < 3; ++i) more.start(cond_waiter, cond, sleeping, woken, -1.0);
    for (int i = 0; i < 3; ++i) more_threads.start(cond_waiter, cond, sleeping, woken, 20.0);
    for (int i = 0; i < 6; ++i) REQUIRE(sleeping.acquire(10s));
    std::this_thread::sleep_for(100ms);
    CHECK(read(woken) == 0);

    {
        std::lock_guard g(cond);
        cond.notify_all();
    }
    CHECK(eventually([&] { return read(woken) == 6; }));
    more_threads.join();
    more.join_all();
    check_no_waiters_left(cond);
}

TEST_CASE("Condition: notify(n) wakes exactly n of the waiters", "[condition][processes][threads]") {
    for (int kind = 0; kind < 3; ++kind) {
        INFO(condition_kinds[kind]);
        mp::Condition cond = make_condition(kind);
        mp::Semaphore sleeping(0);
        mp::Value<int> woken(0);
        Children kids;
        Threads threads;
        for (int i = 0; i < 3; ++i) kids.start(cond_waiter, cond, sleeping, woken, -1.0);
        for (int i = 0; i < 3; ++i) threads.start(cond_waiter, cond, sleeping, woken, 20.0);
        for (int i = 0; i < 6; ++i) REQUIRE(sleeping.acquire(10s));
        std::this_thread::sleep_for(100ms);
        CHECK(read(woken) == 0);

        {
            std::lock_guard g(cond);
            cond.notify(2);
        }
        CHECK(eventually([&] { return read(woken) >= 2; }));
        std::this_thread::sleep_for(300ms);  // and no more than 2
        CHECK(read(woken) == 2);

        {
            std::lock_guard g(cond);
            cond.notify(4);
        }
        CHECK(eventually([&] { return read(woken) >= 6; }));

        {
            std::lock_guard g(cond);
            cond.notify(3);  // nobody is left: nothing happens
        }
        std::this_thread::sleep_for(50ms);
        CHECK(read(woken) == 6);

        threads.join();
        kids.join_all();
        check_no_waiters_left(cond);
    }
}

TEST_CASE("Condition: wait(timeout) returns false after about the timeout, holding the lock again",
          "[condition][timeout]") {
    for (int kind = 0; kind < 3; ++kind) {
        INFO(condition_kinds[kind]);
        mp::Condition cond = make_condition(kind);
        cond.acquire();
        auto t0 = Clock::now();
        CHECK_FALSE(cond.wait(0.3s));
        const double e = seconds_since(t0);
        CHECK(e >= 0.8 * 0.3);
        CHECK(e < 5.0);
        CHECK_FALSE(cond.wait(0s));
        // The lock is held again: no other process can take it.
        child_try_acquire(cond, false);
        cond.release();
        child_try_acquire(cond, true);
    }
}

TEST_CASE("Condition: wait_for(pred) across processes", "[condition][processes]") {
    // CPython's test_waitfor.
    for (int kind = 0; kind < 3; ++kind) {
        INFO(condition_kinds[kind]);
        mp::Condition cond = make_condition(kind);
        mp::Value<int> state(-1);
        Children kids;
        kids.start(
            [](mp::Condition c, mp::Value<int> s) {
                std::unique_lock g(c);
                s.value() = 0;
                c.notify();
                const bool result = c.wait_for([&] { return s.value() == 4; });
                CHILD_REQUIRE(result);
                CHILD_REQUIRE(s.value() == 4);
            },
            cond, state);

        {
            std::unique_lock g(cond);
            CHECK(cond.wait_for([&] { return state.value() == 0; }, 10s));
            CHECK(state.value() == 0);
        }
        for (int i = 0; i < 4; ++i) {
            std::this_thread::sleep_for(10ms);
            std::lock_guard g(cond);
            ++state.value();
            cond.notify();
        }
        kids.join_all();
    }
}

TEST_CASE("Condition: wait_for(pred, timeout) returns false when pred never holds", "[condition][timeout]") {
    // CPython's test_waitfor_timeout: only 3 of the 4 increments the child waits for come.
    mp::Condition cond;
    mp::Value<int> state(0);
    mp::Value<bool> success(false);
    mp::Semaphore started(0);
    Children kids;
    kids.start(
        [](mp::Condition c, mp::Value<int> s, mp::Value<bool> ok, mp::Semaphore st) {
            st.release();
            std::lock_guard g(c);
            const auto t0 = Clock::now();
            const bool result = c.wait_for([&] { return s.value() == 4; }, 0.3s);
            const double dt = seconds_since(t0);
            ok.value() = !result && dt >= 0.8 * 0.3;
        },
        cond, state, success, started);
    REQUIRE(started.acquire(10s));
    for (int i = 0; i < 3; ++i) {
        std::this_thread::sleep_for(10ms);
        std::lock_guard g(cond);
        ++state.value();
        cond.notify();
    }
    kids.join_all();
    CHECK(success.value());

    // wait_for returns pred's value at once when it already holds, and false when it
    // does not and the timeout is 0.
    std::lock_guard g(cond);
    CHECK(cond.wait_for([] { return true; }, 0s));
    CHECK_FALSE(cond.wait_for([] { return false; }, 0s));
}

TEST_CASE("Condition: wait results (CPython's test_wait_result)", "[condition][processes]") {
    mp::Condition c;
    std::lock_guard g(c);
    CHECK_FALSE(c.wait(0s));
    CHECK_FALSE(c.wait(0.1s));
    Children kids;
    kids.start(
        [](mp::Condition cc) {
            std::lock_guard lk(cc);  // blocks until the parent waits
            cc.notify();
        },
        c);
    CHECK(c.wait(30s));
    kids.join_all();
}

TEST_CASE("Condition: wait releases every level of a recursively held RLock and restores them",
          "[condition][rlock][threads]") {
    mp::RLock lock;
    mp::Condition cond(lock);
    lock.acquire();
    cond.acquire();  // the same RLock, twice now
    std::atomic<bool> notifier_got_lock{false};
    std::thread notifier([&] {
        std::this_thread::sleep_for(50ms);
        std::lock_guard g(cond);  // only possible while we wait
        notifier_got_lock = true;
        cond.notify();
    });
    const bool notified = cond.wait(20s);
    notifier.join();
    CHECK(notified);
    CHECK(notifier_got_lock);
    // Held twice again.
    cond.release();
    CHECK(lock.held_by_me());
    lock.release();
    CHECK_THROWS_AS(lock.release(), mp::ValueError);
}

TEST_CASE("Condition: its lock is the given Lock or RLock", "[condition][lock]") {
    SECTION("Lock") {
        mp::Lock l;
        mp::Condition c(l);
        c.acquire();
        CHECK_FALSE(l.try_lock());
        c.release();
        CHECK(l.try_lock());
        c.notify();  // the condition's lock is held (through l)
        CHECK_FALSE(c.wait(0.05s));
        l.release();
        CHECK(c.acquire(false));
        CHECK_FALSE(c.acquire(false));  // a Lock: not recursive
        c.release();
    }
    SECTION("RLock") {
        mp::RLock r;
        mp::Condition c(r);
        c.acquire();
        child_try_acquire(r, false);
        CHECK(r.acquire(false));  // the same owner
        r.release();
        c.release();
        child_try_acquire(r, true);
    }
}

TEST_CASE("Condition: wait or notify without holding the lock throws ValueError", "[condition]") {
    for (int kind = 0; kind < 3; ++kind) {
        INFO(condition_kinds[kind]);
        mp::Condition c = make_condition(kind);
        CHECK_THROWS_AS(c.wait(), mp::ValueError);
        CHECK_THROWS_AS(c.wait(0.1s), mp::ValueError);
        CHECK_THROWS_AS(c.wait_for([] { return false; }, 0.1s), mp::ValueError);
        CHECK_THROWS_AS(c.notify(), mp::ValueError);
        CHECK_THROWS_AS(c.notify(2), mp::ValueError);
        CHECK_THROWS_AS(c.notify_all(), mp::ValueError);

        // Held by another thread is not held by us either.
        c.acquire();
        int threw = 0;
        std::thread t([&] {
            try {
                c.notify();
            } catch (const mp::ValueError&) {
                ++threw;
            }
            try {
                c.wait(0.05s);
            } catch (const mp::ValueError&) {
                ++threw;
            }
        });
        t.join();
        CHECK(threw == 2);
        c.notify();  // but we may
        c.release();
    }
}

TEST_CASE("Condition: a notify() goes to a waiter that was waiting, never to a later one",
          "[condition][processes]") {
    // threading.Condition's contract (and POSIX's for pthread_cond_signal): notify() wakes
    // a thread that is waiting when it is called. One that starts to wait right after it
    // (here the notifier itself) must not take that wake-up away, which would leave the
    // notified one asleep. Ten times, since a thief would win a race, not always.
    constexpr int rounds = 10;
    mp::Condition cond;
    mp::Semaphore sleeping(0);
    mp::Value<int> woken(0);
    Children kids;
    kids.start(
        [](mp::Condition c, mp::Semaphore s, mp::Value<int> w) {
            for (int i = 0; i < rounds; ++i) {
                std::lock_guard g(c);
                s.release();
                CHILD_REQUIRE(c.wait(20s));
                add_one(w);
            }
        },
        cond, sleeping, woken);
    for (int i = 0; i < rounds; ++i) {
        INFO("round " << i);
        REQUIRE(sleeping.acquire(10s));
        {
            std::lock_guard g(cond);  // the child waits now (it let go of the lock)
            cond.notify();
        }
        bool late_woken;
        {
            std::lock_guard g(cond);
            late_woken = cond.wait(0.05s);  // nobody notifies after we started to wait
        }
        CHECK_FALSE(late_woken);
        REQUIRE(eventually([&] { return read(woken) == i + 1; }, 5000ms));
    }
    kids.join_all();
}

// =====================================================================================
// Event (_TestEvent)

TEST_CASE("Event: set, clear, is_set, wait and wait(timeout)", "[event][processes]") {
    mp::Event event;
    CHECK_FALSE(event.is_set());

    auto t0 = Clock::now();
    CHECK_FALSE(event.wait(0s));
    CHECK(seconds_since(t0) < 1.0);
    t0 = Clock::now();
    CHECK_FALSE(event.wait(0.2s));
    double e = seconds_since(t0);
    CHECK(e >= 0.8 * 0.2);
    CHECK(e < 5.0);

    event.set();
    CHECK(event.is_set());
    t0 = Clock::now();
    CHECK(event.wait());
    CHECK(event.wait(0.2s));
    CHECK(seconds_since(t0) < 0.15);  // no waiting at all once set
    event.set();                      // setting twice is fine
    CHECK(event.is_set());

    event.clear();
    CHECK_FALSE(event.is_set());
    CHECK_FALSE(event.wait(0s));

    // Set by a child after 0.1 s: the untimed wait returns true.
    Children kids;
    kids.start(
        [](mp::Event ev) {
            std::this_thread::sleep_for(100ms);
            ev.set();
        },
        event);
    CHECK(event.wait());
    CHECK(event.is_set());
    kids.join_all();

    // Cleared by a child: the parent sees it.
    kids.start([](mp::Event ev) { ev.clear(); }, event);
    kids.join_all();
    CHECK_FALSE(event.is_set());
}

TEST_CASE("Event: one set() releases every waiting process and thread", "[event][processes][threads]") {
    mp::Event event;
    mp::Value<int> waiting(0), released(0);
    auto waiter = [](mp::Event ev, mp::Value<int> w, mp::Value<int> r) {
        add_one(w);
        CHILD_REQUIRE(ev.wait(20s));
        add_one(r);
    };
    Children kids;
    for (int i = 0; i < 4; ++i) kids.start(+waiter, event, waiting, released);
    std::atomic<int> thread_ok{0};
    Threads threads;
    for (int i = 0; i < 2; ++i)
        threads.start([&] {
            add_one(waiting);
            if (event.wait(20s)) ++thread_ok;
        });
    REQUIRE(eventually([&] { return read(waiting) == 6; }));
    std::this_thread::sleep_for(50ms);
    CHECK(read(released) == 0);
    event.set();
    threads.join();
    kids.join_all();
    CHECK(read(released) == 4);
    CHECK(thread_ok == 2);
}

// =====================================================================================
// Barrier (_TestBarrier)

namespace {

constexpr int N = 5;  // CPython's _TestBarrier.N

// CPython's run_threads: N-1 children and the parent itself run f(args...).
template <class F, class... A>
void run_bunch(F f, A... args) {
    Children kids;
    for (int i = 0; i < N - 1; ++i) kids.start(f, args...);
    f(args...);
    kids.join_all(30s);
}

// CPython's setUp: a barrier for N with a generous default timeout (so that a bug breaks
// the barrier instead of hanging the test).
mp::Barrier make_barrier() { return mp::Barrier(N, {}, 20s); }

void multipass(mp::Barrier barrier, mp::Value<int> r0, mp::Value<int> r1, int passes) {
    const int m = barrier.parties();
    CHILD_REQUIRE(m == N);
    for (int i = 0; i < passes; ++i) {
        add_one(r0);
        CHILD_REQUIRE(read(r1) == i * m);
        barrier.wait();
        add_one(r1);
        CHILD_REQUIRE(read(r0) == (i + 1) * m);
        barrier.wait();
    }
    CHILD_REQUIRE(barrier.n_waiting() == 0);
    CHILD_REQUIRE(!barrier.broken());
}

struct Deliberate {};

void abort_f(mp::Barrier barrier, mp::Value<int> r1, mp::Value<int> r2) {
    try {
        const int i = barrier.wait();
        if (i == N / 2) throw Deliberate{};
        barrier.wait();
        add_one(r1);
    } catch (const mp::BrokenBarrierError&) {
        add_one(r2);
    } catch (const Deliberate&) {
        barrier.abort();
    }
}

void reset_f(mp::Barrier barrier, mp::Value<int> r1, mp::Value<int> r2, mp::Value<int> r3) {
    const int i = barrier.wait();
    if (i == N / 2) {
        // Wait until the others are all in the barrier, then reset it under them.
        const auto deadline = Clock::now() + 20s;
        while (barrier.n_waiting() < N - 1) {
            CHILD_REQUIRE(Clock::now() < deadline);
            std::this_thread::sleep_for(1ms);
        }
        barrier.reset();
    } else {
        try {
            barrier.wait();
            add_one(r1);
        } catch (const mp::BrokenBarrierError&) {
            add_one(r2);
        }
    }
    barrier.wait();  // and it can be passed again
    add_one(r3);
}

void abort_and_reset_f(mp::Barrier barrier, mp::Barrier barrier2, mp::Value<int> r1, mp::Value<int> r2,
                       mp::Value<int> r3) {
    try {
        const int i = barrier.wait();
        if (i == N / 2) throw Deliberate{};
        barrier.wait();
        add_one(r1);
    } catch (const mp::BrokenBarrierError&) {
        add_one(r2);
    } catch (const Deliberate&) {
        barrier.abort();
    }
    // Everyone has left the broken barrier before the reset, and nobody enters it again
    // before the reset is done.
    if (barrier2.wait() == N / 2) barrier.reset();
    barrier2.wait();
    barrier.wait();
    add_one(r3);
}

void timeout_f(mp::Barrier barrier, mp::Value<int> results) {
    const int i = barrier.wait();
    if (i == N / 2) std::this_thread::sleep_for(600ms);  // one of them is late
    try {
        barrier.wait(0.2s);
    } catch (const mp::BrokenBarrierError&) {
        add_one(results);
    }
}

void default_timeout_f(mp::Barrier barrier, mp::Value<int> results) {
    const int i = barrier.wait(20s);
    if (i == N / 2) std::this_thread::sleep_for(600ms);  // later than the default timeout
    try {
        barrier.wait();
    } catch (const mp::BrokenBarrierError&) {
        add_one(results);
    }
}

}  // namespace

TEST_CASE("Barrier: is passed in lockstep, once and 10 times in a row", "[barrier][processes]") {
    for (int passes : {1, 10}) {
        INFO("passes: " << passes);
        mp::Value<int> r0(0), r1(0);
        auto barrier = make_barrier();
        run_bunch(multipass, barrier, r0, r1, passes);
        CHECK(read(r0) == N * passes);
        CHECK(read(r1) == N * passes);
    }
}

TEST_CASE("Barrier: wait() gives each party a distinct index 0..parties-1, round after round",
          "[barrier][processes]") {
    constexpr int rounds = 4;
    auto barrier = make_barrier();
    mp::Array<int> seen(N * rounds);
    run_bunch(
        [](mp::Barrier b, mp::Array<int> s) {
            for (int r = 0; r < rounds; ++r) {
                const int i = b.wait();
                CHILD_REQUIRE(i >= 0 && i < N);
                std::lock_guard g(s.get_lock());
                ++s[static_cast<std::size_t>(r * N + i)];
            }
        },
        barrier, seen);
    for (int r = 0; r < rounds; ++r)
        for (int i = 0; i < N; ++i) {
            INFO("round " << r << ", index " << i);
            CHECK(seen[static_cast<std::size_t>(r * N + i)] == 1);
        }
}

TEST_CASE("Barrier: the action runs exactly once per round, before anyone is released", "[barrier][processes]") {
    mp::Value<int> actions(0);
    mp::Barrier barrier(N, [actions]() mutable { add_one(actions); }, 20s);
    constexpr int rounds = 3;
    run_bunch(
        [](mp::Barrier b, mp::Value<int> a) {
            for (int r = 0; r < rounds; ++r) {
                b.wait();
                CHILD_REQUIRE(read(a) == r + 1);
            }
        },
        barrier, actions);
    CHECK(read(actions) == rounds);
}

TEST_CASE("Barrier: an action that throws breaks the barrier", "[barrier][processes]") {
    mp::Barrier barrier(3, [] { throw std::logic_error("the action failed"); }, 20s);
    mp::Value<int> action_error(0), broken(0);
    auto f = [](mp::Barrier b, mp::Value<int> ae, mp::Value<int> br) {
        try {
            b.wait();
        } catch (const mp::BrokenBarrierError&) {
            add_one(br);
        } catch (const std::logic_error&) {
            add_one(ae);  // the one that ran the action gets its exception
        }
    };
    Children kids;
    kids.start(+f, barrier, action_error, broken);
    kids.start(+f, barrier, action_error, broken);
    f(barrier, action_error, broken);
    kids.join_all();
    CHECK(read(action_error) == 1);
    CHECK(read(broken) == 2);
    CHECK(barrier.broken());
}

TEST_CASE("Barrier: abort() breaks it for every waiter", "[barrier][processes]") {
    mp::Value<int> r1(0), r2(0);
    auto barrier = make_barrier();
    run_bunch(abort_f, barrier, r1, r2);
    CHECK(read(r1) == 0);
    CHECK(read(r2) == N - 1);
    CHECK(barrier.broken());
    CHECK_THROWS_AS(barrier.wait(), mp::BrokenBarrierError);  // and for later ones
    barrier.reset();
    CHECK_FALSE(barrier.broken());
}

TEST_CASE("Barrier: reset() frees the waiters with BrokenBarrierError", "[barrier][processes]") {
    mp::Value<int> r1(0), r2(0), r3(0);
    auto barrier = make_barrier();
    run_bunch(reset_f, barrier, r1, r2, r3);
    CHECK(read(r1) == 0);
    CHECK(read(r2) == N - 1);
    CHECK(read(r3) == N);
}

TEST_CASE("Barrier: a broken barrier can be reset and used again", "[barrier][processes]") {
    mp::Value<int> r1(0), r2(0), r3(0);
    auto barrier = make_barrier();
    mp::Barrier barrier2(N);
    run_bunch(abort_and_reset_f, barrier, barrier2, r1, r2, r3);
    CHECK(read(r1) == 0);
    CHECK(read(r2) == N - 1);
    CHECK(read(r3) == N);
}

TEST_CASE("Barrier: wait(timeout) running out breaks it for everyone", "[barrier][processes][timeout]") {
    mp::Value<int> results(0);
    auto barrier = make_barrier();
    run_bunch(timeout_f, barrier, results);
    CHECK(read(results) == barrier.parties());
    CHECK(barrier.broken());
}

TEST_CASE("Barrier: the default timeout", "[barrier][processes][timeout]") {
    mp::Value<int> results(0);
    mp::Barrier barrier(N, {}, 0.2s);
    run_bunch(default_timeout_f, barrier, results);
    CHECK(read(results) == barrier.parties());

    // Alone at a barrier for 2 with a 0.2 s default: broken after about that.
    mp::Barrier lonely(2, {}, 0.2s);
    auto t0 = Clock::now();
    CHECK_THROWS_AS(lonely.wait(), mp::BrokenBarrierError);
    const double e = seconds_since(t0);
    CHECK(e >= 0.8 * 0.2);
    CHECK(e < 5.0);
    CHECK(lonely.broken());
}

TEST_CASE("Barrier: parties, n_waiting and broken", "[barrier][processes]") {
    mp::Barrier barrier(3, {}, 20s);
    CHECK(barrier.parties() == 3);
    CHECK(barrier.n_waiting() == 0);
    CHECK_FALSE(barrier.broken());

    mp::Value<int> indices(0);
    Children kids;
    for (int i = 0; i < 2; ++i)
        kids.start(
            [](mp::Barrier b, mp::Value<int> sum) {
                const int idx = b.wait();
                std::lock_guard g(sum.get_lock());
                sum.value() += idx;
            },
            barrier, indices);
    CHECK(eventually([&] { return barrier.n_waiting() == 2; }));
    CHECK_FALSE(barrier.broken());
    const int mine = barrier.wait();
    kids.join_all();
    CHECK(mine + read(indices) == 0 + 1 + 2);
    CHECK(barrier.n_waiting() == 0);
    CHECK_FALSE(barrier.broken());

    CHECK_THROWS_AS(mp::Barrier(0), mp::ValueError);
}

TEST_CASE("Barrier: a single party passes at once", "[barrier]") {
    mp::Barrier b(1);
    CHECK(b.wait() == 0);
    CHECK(b.wait() == 0);
    CHECK(b.wait(0.1s) == 0);
}

TEST_CASE("Barrier: 200 rounds in a row keep the parties in step", "[barrier][processes]") {
    // CPython's test_thousand, shortened: after round r, every party has arrived r+1 times,
    // and none has passed round r+1 yet.
    constexpr int rounds = 200;
    auto barrier = make_barrier();
    mp::Value<int> arrived(0);
    run_bunch(
        [](mp::Barrier b, mp::Value<int> a) {
            for (int r = 0; r < rounds; ++r) {
                add_one(a);
                b.wait();
                const int now = read(a);
                CHILD_REQUIRE(now >= (r + 1) * N);
                CHILD_REQUIRE(now <= (r + 1) * N + (N - 1));
            }
        },
        barrier, arrived);
    CHECK(read(arrived) == rounds * N);
}

// =====================================================================================
// Robustness: a holder that dies is not a deadlock (API.md, "Synchronization").

namespace {

enum class Death { sigkill_unreaped, sigkill_reaped, exit_without_release };

// Starts a child that takes `lock` `depth` times and then dies as `how` says; returns
// once it is gone (or, unreaped, at least killed).
template <class L>
void let_holder_die(Children& kids, L& lock, int depth, Death how) {
    mp::Event held;
    mp::Process& holder = how == Death::exit_without_release
                              ? kids.start(take_and_exit<L>, lock, held, depth)
                              : kids.start(take_and_hang<L>, lock, held, depth);
    REQUIRE(held.wait(10s));
    if (how == Death::exit_without_release) {
        REQUIRE(holder.join(10s));
        CHECK(holder.exitcode() == 0);
        return;
    }
    holder.kill();
    if (how == Death::sigkill_reaped) {
        REQUIRE(holder.join(10s));
        CHECK(holder.exitcode() == -SIGKILL);
    }
    // sigkill_unreaped: the holder is (or is about to be) a zombie that nobody waited for.
}

Death pick_death(int i) {
    return i == 0 ? Death::sigkill_unreaped : i == 1 ? Death::sigkill_reaped : Death::exit_without_release;
}
const char* const death_names[] = {"SIGKILL, not reaped", "SIGKILL, reaped", "_exit() without releasing"};

// The parent's next acquire gets it: untimed in spirit, but guarded by a 10 s timeout.
template <class L>
void check_taken_over(L& lock) {
    const auto t0 = Clock::now();
    REQUIRE(lock.acquire(10s));
    CHECK(seconds_since(t0) < 10.0);
}

}  // namespace

TEST_CASE("Robustness: a Lock whose holder died is taken by the next acquire", "[robust][lock]") {
    for (int d = 0; d < 3; ++d) {
        INFO(death_names[d]);
        mp::Lock lock;
        Children kids;
        let_holder_die(kids, lock, 1, pick_death(d));
        check_taken_over(lock);
        // Ours now, as if the dead one had released it.
        CHECK_FALSE(lock.acquire(false));
        lock.release();
        CHECK(lock.acquire(false));
        lock.release();
        CHECK_THROWS_AS(lock.release(), mp::ValueError);
    }
}

TEST_CASE("Robustness: an RLock whose holder died (3 levels deep) is taken by the next acquire", "[robust][rlock]") {
    for (int d = 0; d < 3; ++d) {
        INFO(death_names[d]);
        mp::RLock lock;
        Children kids;
        let_holder_die(kids, lock, 3, pick_death(d));
        check_taken_over(lock);
        CHECK(lock.held_by_me());
        lock.release();  // held once by us, not 3 times by the dead one
        CHECK_THROWS_AS(lock.release(), mp::ValueError);
        child_try_acquire(lock, true);
    }
}

TEST_CASE("Robustness: a BoundedSemaphore(1) unit whose holder died comes back", "[robust][semaphore]") {
    for (int d = 0; d < 3; ++d) {
        INFO(death_names[d]);
        mp::BoundedSemaphore sem(1);
        Children kids;
        let_holder_die(kids, sem, 1, pick_death(d));
        CHECK(sem.get_value() == 0);
        check_taken_over(sem);
        CHECK(sem.get_value() == 0);
        sem.release();
        CHECK(sem.get_value() == 1);
    }
}

TEST_CASE("Robustness: BoundedSemaphore(2) units of two dead holders both come back", "[robust][semaphore]") {
    mp::BoundedSemaphore sem(2);
    Children kids;
    let_holder_die(kids, sem, 1, Death::sigkill_unreaped);
    let_holder_die(kids, sem, 1, Death::exit_without_release);
    CHECK(sem.get_value() == 0);
    check_taken_over(sem);
    check_taken_over(sem);
    CHECK_FALSE(sem.acquire(false));
    sem.release();
    sem.release();
    CHECK(sem.get_value() == 2);
    CHECK_THROWS_AS(sem.release(), mp::ValueError);  // the bound still holds
}

TEST_CASE("Robustness: several processes waiting on a dead holder's lock each get it, one at a time",
          "[robust][processes]") {
    auto run = [](auto lock) {
        using L = decltype(lock);
        mp::Value<int> inside(0), done(0);
        Children kids;
        mp::Event held;
        mp::Process& holder = kids.start(take_and_hang<L>, lock, held, 1);
        REQUIRE(held.wait(10s));
        for (int i = 0; i < 3; ++i) kids.start(take_and_work<L>, lock, inside, done);
        std::this_thread::sleep_for(150ms);  // they are all waiting now
        holder.kill();
        take_and_work(lock, inside, done);  // and the parent waits too
        for (int i = 1; i < 4; ++i) {
            REQUIRE(kids[i].join(20s));
            CHECK(kids[i].exitcode() == 0);
        }
        CHECK(read(done) == 4);
        CHECK(read(inside) == 0);
        CHECK(lock.acquire(false));
        lock.release();
    };
    SECTION("Lock") { run(mp::Lock()); }
    SECTION("RLock") { run(mp::RLock()); }
    SECTION("BoundedSemaphore(1)") { run(mp::BoundedSemaphore(1)); }
}

TEST_CASE("Robustness: a Condition whose lock holder died can be taken and used", "[robust][condition]") {
    mp::Condition cond;
    Children kids;
    let_holder_die(kids, cond, 1, Death::sigkill_unreaped);
    check_taken_over(cond);
    CHECK_FALSE(cond.wait(0.05s));
    cond.notify_all();
    cond.release();
}

TEST_CASE("Robustness: recovery still works after many processes have used the semaphore",
          "[robust][semaphore][processes]") {
    mp::BoundedSemaphore sem(1);
    for (int i = 0; i < 40; ++i) {
        Children one;
        one.start(
            [](mp::BoundedSemaphore s) {
                CHILD_REQUIRE(s.acquire(10s));
                s.release();
            },
            sem);
        one.join_all();
    }
    Children kids;
    let_holder_die(kids, sem, 1, Death::sigkill_unreaped);
    check_taken_over(sem);
    sem.release();
    CHECK(sem.get_value() == 1);
}

namespace {
// Uses `lock` once, then stays alive until `go` (so that it keeps whatever record of it
// the object holds).
template <class L>
void use_once_and_stay(L lock, mp::Semaphore used, mp::Event go) {
    CHILD_REQUIRE(lock.acquire(10s));
    lock.release();
    used.release();
    CHILD_REQUIRE(go.wait(60s));
}
void wait_once_and_stay(mp::Condition cond, mp::Semaphore used, mp::Event go) {
    cond.acquire();
    used.release();
    CHILD_REQUIRE(cond.wait(30s));
    cond.release();
    CHILD_REQUIRE(go.wait(60s));
}
}  // namespace

// Issue 13, case 1: a 32-entry holder table, freed only at a process's exit, stopped
// recording holders once 32 live processes had used the object.
TEST_CASE("Robustness (issue 13.1): a holder that dies after 40 live processes used the object is recovered",
          "[robust][semaphore][condition][processes]") {
    constexpr int live = 40;
    SECTION("BoundedSemaphore") {
        mp::BoundedSemaphore sem(1);
        mp::Semaphore used(0);
        mp::Event go;
        Children users;
        for (int i = 0; i < live; ++i) users.start(use_once_and_stay<mp::BoundedSemaphore>, sem, used, go);
        for (int i = 0; i < live; ++i) REQUIRE(used.acquire(30s));
        Children kids;
        let_holder_die(kids, sem, 1, Death::sigkill_unreaped);
        check_taken_over(sem);
        sem.release();
        CHECK(sem.get_value() == 1);
        go.set();
        users.join_all();
    }
    SECTION("Condition") {
        mp::Condition cond;
        mp::Semaphore used(0);
        mp::Event go;
        Children users;
        for (int i = 0; i < live; ++i) users.start(wait_once_and_stay, cond, used, go);
        for (int i = 0; i < live; ++i) REQUIRE(used.acquire(30s));
        {
            std::lock_guard g(cond);  // all wait now
            cond.notify_all();
        }
        // They stay alive; now one waiter dies inside wait(), and another waits.
        mp::Semaphore sleeping(0);
        mp::Value<int> woken(0);
        Children kids;
        mp::Process& doomed = kids.start(cond_waiter, cond, sleeping, woken, -1.0);
        REQUIRE(sleeping.acquire(10s));
        kids.start(cond_waiter, cond, sleeping, woken, -1.0);
        REQUIRE(sleeping.acquire(10s));
        { std::lock_guard g(cond); }
        doomed.kill();
        REQUIRE(doomed.join(10s));
        // notify(1) picks the oldest waiter, the dead one: its wake-up must reach the other.
        Children notifier;
        notifier.start([](mp::Condition c) {
            std::lock_guard g(c);
            c.notify();
        }, cond);
        CHECK(eventually([&] { return read(woken) == 1; }));
        REQUIRE(notifier[0].join(10s));
        REQUIRE(kids[1].join(10s));
        go.set();
        users.join_all();
        check_no_waiters_left(cond);
    }
}

// Issue 13, case 2: a waiter killed after notify() chose it, before it took its wake-up.
// The old recovery cancelled a live waiter's registration instead and notify() then
// looped forever.
TEST_CASE("Robustness (issue 13.2): a waiter killed after notify() chose it: notify() returns, the wake-up "
          "goes to a live waiter", "[robust][condition][processes]") {
    mp::Condition cond;
    mp::Semaphore sleeping(0);
    mp::Value<int> woken(0);
    Children kids;
    mp::Process& doomed = kids.start(cond_waiter, cond, sleeping, woken, -1.0);
    REQUIRE(sleeping.acquire(10s));
    { std::lock_guard g(cond); }  // it waits now (it is the oldest waiter)
    kids.start(cond_waiter, cond, sleeping, woken, -1.0);
    REQUIRE(sleeping.acquire(10s));
    { std::lock_guard g(cond); }
    // Frozen, it cannot take the wake-up notify() gives it; killed while notify() waits.
    REQUIRE(::kill(*doomed.pid(), SIGSTOP) == 0);
    mp::Event notified;
    Children notifier;
    notifier.start([](mp::Condition c, mp::Event done) {
        std::lock_guard g(c);
        c.notify();
        done.set();
    }, cond, notified);
    std::this_thread::sleep_for(50ms);
    doomed.kill();
    REQUIRE(doomed.join(10s));
    CHECK(notified.wait(10s));                                 // notify() returned
    CHECK(eventually([&] { return read(woken) == 1; }));        // the live one got it
    REQUIRE(kids[1].join(10s));
    CHECK(kids[1].exitcode() == 0);
    REQUIRE(notifier[0].join(10s));
    check_no_waiters_left(cond);
}

// Issue 13, case 4: a plain Semaphore counts items, so a consumer's death gives nothing
// back (as Python's); a BoundedSemaphore's give-back never goes above its bound.
TEST_CASE("Robustness (issue 13.4): a killed consumer's Semaphore units stay taken", "[robust][semaphore]") {
    mp::Semaphore items(0);
    for (int i = 0; i < 5; ++i) items.release();
    mp::Event consumed;
    Children kids;
    mp::Process& consumer = kids.start([](mp::Semaphore s, mp::Event done) {
        for (int i = 0; i < 5; ++i) CHILD_REQUIRE(s.acquire(10s));
        done.set();
        std::this_thread::sleep_for(60s);
    }, items, consumed);
    REQUIRE(consumed.wait(10s));
    consumer.kill();
    REQUIRE(consumer.join(10s));
    CHECK(items.get_value() == 0);
    CHECK_FALSE(items.acquire(0.5s));  // nobody produced another item
}

TEST_CASE("Robustness (issue 13.4): a BoundedSemaphore never goes above its bound when a dead holder's unit "
          "was released on its behalf", "[robust][semaphore]") {
    mp::BoundedSemaphore sem(1);
    Children kids;
    let_holder_die(kids, sem, 1, Death::sigkill_reaped);
    sem.release();  // on the dead holder's behalf: the value was 0, below the bound
    CHECK(sem.get_value() == 1);
    REQUIRE(sem.acquire(1s));
    CHECK_FALSE(sem.acquire(0.5s));  // the dead one's unit is the one released: no second
    CHECK(sem.get_value() == 0);
    sem.release();
    CHECK_THROWS_AS(sem.release(), mp::ValueError);
}

// Issue 13, case 5: a holder is its pid AND its start time; a pid that now names another
// task (reuse) is a dead holder. Simulated with a live process's pid and a start time
// that is not its own.
TEST_CASE("Robustness (issue 13.5): a lock whose holder's pid was reused is recovered", "[robust][lock]") {
    namespace d = mp::detail;
    Children kids;
    mp::Event started;
    mp::Process& other = kids.start([](mp::Event e) {
        e.set();
        std::this_thread::sleep_for(60s);
    }, started);
    REQUIRE(started.wait(10s));
    const auto real = d::read_task_stat(*other.pid());
    REQUIRE(real.exists);
    CHECK(d::identity_alive(d::pack_identity(*other.pid(), real.start)));
    const auto reused = d::pack_identity(*other.pid(), real.start + 1);  // the dead holder
    CHECK_FALSE(d::identity_alive(reused));

    auto lock = d::SharedBlock<d::OwnerLock>::create(0, "test-lock");
    lock->word.store(reused);
    const auto t0 = Clock::now();
    bool recovered = false;
    REQUIRE(lock->acquire(d::Deadline(10s), &recovered));
    CHECK(recovered);
    CHECK(seconds_since(t0) < 5.0);
    CHECK(lock->held_by_me());
    other.kill();
}

// The same with a real reuse: the dead holder's pid is given to a new process through
// /proc/sys/kernel/ns_last_pid (needs CAP_SYS_ADMIN; skipped with a message without it).
TEST_CASE("Robustness (issue 13.5): a Lock whose dead holder's pid now names a live process is recovered",
          "[robust][lock]") {
    mp::Lock lock;
    mp::Event held;
    const pid_t holder = ::fork();
    if (holder == 0) {
        if (!lock.acquire(10s)) ::_exit(1);
        held.set();
        std::this_thread::sleep_for(60s);
        ::_exit(0);
    }
    REQUIRE(holder > 0);
    REQUIRE(held.wait(10s));
    // Start times count clock ticks (10 ms): a holder that lived less than one tick and a
    // process given its pid within that tick look alike (docs/recovery.md, limits).
    std::this_thread::sleep_for(30ms);
    ::kill(holder, SIGKILL);
    ::waitpid(holder, nullptr, 0);
    // Give its pid to a new, live process.
    pid_t reuser = -1;
    for (int attempt = 0; attempt < 20 && reuser != holder; ++attempt) {
        if (reuser > 0) {
            ::kill(reuser, SIGKILL);
            ::waitpid(reuser, nullptr, 0);
        }
        FILE* f = std::fopen("/proc/sys/kernel/ns_last_pid", "w");
        if (!f) break;
        std::fprintf(f, "%d", holder - 1);
        const bool written = std::fclose(f) == 0;
        if (!written) break;
        reuser = ::fork();
        if (reuser == 0) {
            std::this_thread::sleep_for(60s);
            ::_exit(0);
        }
    }
    if (reuser != holder) {
        if (reuser > 0) {
            ::kill(reuser, SIGKILL);
            ::waitpid(reuser, nullptr, 0);
        }
        WARN("skipped: cannot make the kernel reuse a pid here (/proc/sys/kernel/ns_last_pid not writable)");
        return;
    }
    const auto t0 = Clock::now();
    CHECK(lock.acquire(10s));
    CHECK(seconds_since(t0) < 5.0);
    lock.release();
    ::kill(reuser, SIGKILL);
    ::waitpid(reuser, nullptr, 0);
}

TEST_CASE("BoundedSemaphore: an initial value above the slot limit is refused with ValueError", "[semaphore]") {
    CHECK_THROWS_AS(mp::BoundedSemaphore(70000), mp::ValueError);
    CHECK_NOTHROW(mp::BoundedSemaphore(65536));
    CHECK_NOTHROW(mp::Semaphore(70000));
}

TEST_CASE("Robustness: a Barrier party killed inside wait() breaks the barrier for the others within about 1 s",
          "[robust][barrier][processes]") {
    mp::Barrier barrier(3);
    mp::Event arrived;
    Children kids;
    mp::Process& doomed = kids.start([](mp::Barrier b, mp::Event e) {
        e.set();
        b.wait(60s);
    }, barrier, arrived);
    REQUIRE(arrived.wait(10s));
    CHECK(eventually([&] { return barrier.n_waiting() == 1; }));
    kids.start([](mp::Barrier b) {
        bool broken = false;
        try {
            b.wait(60s);
        } catch (const mp::BrokenBarrierError&) {
            broken = true;
        }
        CHILD_REQUIRE(broken);
    }, barrier);
    CHECK(eventually([&] { return barrier.n_waiting() == 2; }));
    doomed.kill();
    REQUIRE(doomed.join(10s));
    const auto t0 = Clock::now();
    REQUIRE(kids[1].join(10s));
    CHECK(kids[1].exitcode() == 0);
    CHECK(seconds_since(t0) < 3.0);
    CHECK(barrier.broken());
    barrier.reset();
    CHECK_FALSE(barrier.broken());
    CHECK(barrier.n_waiting() == 0);
}

TEST_CASE("Robustness: a waiter killed inside Condition.wait() does not hang notify() nor leave a wake-up behind",
          "[robust][condition][processes]") {
    mp::Condition cond;
    mp::Semaphore sleeping(0);
    mp::Value<int> woken(0);
    Children kids;
    mp::Process& doomed = kids.start(cond_waiter, cond, sleeping, woken, -1.0);
    kids.start(cond_waiter, cond, sleeping, woken, -1.0);
    kids.start(cond_waiter, cond, sleeping, woken, -1.0);
    REQUIRE(sleeping.acquire(10s));
    REQUIRE(sleeping.acquire(10s));
    REQUIRE(sleeping.acquire(10s));
    {
        std::lock_guard g(cond);  // all three wait now
    }
    doomed.kill();
    REQUIRE(doomed.join(10s));

    // notify(1) wakes one of the living...
    auto t0 = Clock::now();
    {
        std::lock_guard g(cond);
        cond.notify();
    }
    CHECK(eventually([&] { return read(woken) == 1; }));
    // ...and notify_all() the other, and returns although the dead one never takes its turn.
    {
        std::lock_guard g(cond);
        cond.notify_all();
    }
    CHECK(eventually([&] { return read(woken) == 2; }));
    CHECK(seconds_since(t0) < 10.0);
    for (int i = 1; i < 3; ++i) {
        REQUIRE(kids[i].join(10s));
        CHECK(kids[i].exitcode() == 0);
    }
    check_no_waiters_left(cond);
}

TEST_CASE("Semaphore: units a child took and kept when it returned normally are not handed out again",
          "[semaphore][processes]") {
    // A Semaphore used to count items: the parent produces one, a child consumes it and
    // returns. Python keeps the count at 0; so must we: the child did not die holding a
    // lock-like unit, it consumed an item.
    mp::Semaphore items(0);
    items.release();
    Children kids;
    kids.start([](mp::Semaphore s) { CHILD_REQUIRE(s.acquire(10s)); }, items);
    kids.join_all();
    CHECK(items.get_value() == 0);
    CHECK_FALSE(items.acquire(0.5s));  // nobody produced another item
}
