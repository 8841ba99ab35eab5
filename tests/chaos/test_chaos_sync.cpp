// Kill sweeps for the synchronization primitives (issue 13): a participant is SIGKILLed
// at swept instants while others keep using the object; afterwards no unit is lost, no
// one hangs, no one was inside twice. Short by default; MP_CHAOS_SCALE=N runs N times
// as many kill timings (and an N times longer soak).
#include <catch2/catch.hpp>

#include <multiprocessing.hpp>

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <random>
#include <thread>
#include <vector>

namespace mp = multiprocessing;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

int scale() {
    const char* s = std::getenv("MP_CHAOS_SCALE");
    const int n = s ? std::atoi(s) : 1;
    return n > 0 ? n : 1;
}

// Counters every child sees (inherited through fork).
struct Shared {
    std::atomic<int> stop{0};
    std::atomic<pid_t> inside{0};   // who is in the critical section
    std::atomic<pid_t> victim{0};   // killed this round: may have been left "inside"
    std::atomic<int> violations{0}; // two inside at once
    std::atomic<long> ops{0};
};

Shared* make_shared_counters() {
    void* p = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    return ::new (p) Shared;
}

// A child running `body` until told to stop (or killed).
pid_t spawn(std::function<void()> body) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        try {
            body();
        } catch (...) {
            ::_exit(3);
        }
        ::_exit(0);
    }
    REQUIRE(pid > 0);
    return pid;
}

// Waits up to `limit` for `pid`; kills it and returns false if it did not finish (a hang).
bool reap_within(pid_t pid, std::chrono::milliseconds limit, int* status = nullptr) {
    const auto end = Clock::now() + limit;
    int st = 0;
    for (;;) {
        const pid_t r = ::waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (status) *status = st;
            return true;
        }
        if (Clock::now() >= end) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &st, 0);
            return false;
        }
        std::this_thread::sleep_for(1ms);
    }
}

void kill_and_reap(Shared& sh, pid_t pid) {
    sh.victim.store(pid);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
}

// The swept instant of round i: 0 .. ~3 ms, spread so that neighbouring rounds differ.
std::chrono::microseconds instant(int i) { return std::chrono::microseconds((i * 7919) % 3000); }

// The critical section: nobody else may be inside, except a victim that died there (it
// is reaped before anyone may take its lock over, so kill(0) finds it gone).
void enter_leave(Shared& sh) {
    const pid_t me = ::getpid();
    const pid_t prev = sh.inside.exchange(me);
    if (prev != 0 && ::kill(prev, 0) == 0) sh.violations.fetch_add(1);
    sh.ops.fetch_add(1);
    sh.inside.store(0);
}

// After a kill: the survivors must keep working (recovery under traffic). Waits for
// `more` operations past the kill (at most 5 s), then stops them; each must exit cleanly
// within 10 s (nobody hangs).
void survivors_go_on(Shared& sh, std::initializer_list<pid_t> survivors, long more) {
    const long ops = sh.ops.load();
    const auto until = Clock::now() + 5s;
    while (sh.ops.load() < ops + more && Clock::now() < until) std::this_thread::sleep_for(1ms);
    sh.stop.store(1);
    for (pid_t p : survivors) {
        int status = 0;
        REQUIRE(reap_within(p, 10s, &status));
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 0);
    }
}

// One round for a lock-like L: a victim and a survivor loop over acquire/critical
// section/release; the victim is killed at the round's instant; the survivor must go
// on (it is told to stop after a few more operations) and the lock must be free after.
template <class L>
void lock_round(L& lock, Shared& sh, int i, int depth) {
    sh.stop.store(0);
    auto loop = [&lock, &sh, depth] {
        while (!sh.stop.load()) {
            for (int d = 0; d < depth; ++d)
                if (!lock.acquire(std::chrono::duration<double>(10))) ::_exit(4);
            enter_leave(sh);
            for (int d = 0; d < depth; ++d) lock.release();
        }
    };
    const pid_t victim = spawn(loop);
    const pid_t survivor = spawn(loop);
    std::this_thread::sleep_for(instant(i));
    kill_and_reap(sh, victim);
    survivors_go_on(sh, {survivor}, 20);
    REQUIRE(lock.acquire(std::chrono::duration<double>(5)));
    lock.release();
}

}  // namespace

TEST_CASE("Chaos: Lock and RLock holders killed at swept instants", "[chaos][lock]") {
    const int rounds = 25 * scale();
    Shared& sh = *make_shared_counters();
    SECTION("Lock") {
        mp::Lock lock;
        for (int i = 0; i < rounds; ++i) lock_round(lock, sh, i, 1);
    }
    SECTION("RLock") {
        mp::RLock lock;
        for (int i = 0; i < rounds; ++i) lock_round(lock, sh, i, 2);
    }
    CHECK(sh.violations.load() == 0);
    CHECK(sh.ops.load() > 0);
}

TEST_CASE("Chaos: BoundedSemaphore holders killed at swept instants lose no unit and add none",
          "[chaos][semaphore]") {
    const int rounds = 25 * scale();
    Shared& sh = *make_shared_counters();
    mp::BoundedSemaphore sem(2);
    for (int i = 0; i < rounds; ++i) {
        sh.stop.store(0);
        auto loop = [&sem, &sh] {
            while (!sh.stop.load()) {
                if (!sem.acquire(std::chrono::duration<double>(10))) ::_exit(4);
                sh.ops.fetch_add(1);
                sem.release();
            }
        };
        const pid_t victim = spawn(loop);
        const pid_t a = spawn(loop), b = spawn(loop);
        std::this_thread::sleep_for(instant(i));
        kill_and_reap(sh, victim);
        survivors_go_on(sh, {a, b}, 20);
        // Both units are there (a dead holder's comes back on demand) and no third.
        REQUIRE(sem.acquire(std::chrono::duration<double>(5)));
        REQUIRE(sem.acquire(std::chrono::duration<double>(5)));
        CHECK_FALSE(sem.acquire(false));
        sem.release();
        sem.release();
        CHECK(sem.get_value() == 2);
        CHECK_THROWS_AS(sem.release(), mp::ValueError);
    }
}

TEST_CASE("Chaos: Condition waiters and notifiers killed at swept instants", "[chaos][condition]") {
    const int rounds = 20 * scale();
    Shared& sh = *make_shared_counters();
    mp::Condition cond;
    for (int i = 0; i < rounds; ++i) {
        sh.stop.store(0);
        auto waiter = [&cond, &sh] {
            while (!sh.stop.load()) {
                if (!cond.acquire(std::chrono::duration<double>(10))) ::_exit(4);
                cond.wait(std::chrono::duration<double>(0.05));
                sh.ops.fetch_add(1);
                cond.release();
            }
        };
        auto notifier = [&cond, &sh] {
            while (!sh.stop.load()) {
                if (!cond.acquire(std::chrono::duration<double>(10))) ::_exit(4);
                cond.notify((sh.ops.load() & 1) ? 1 : 2);
                cond.release();
                std::this_thread::yield();
            }
        };
        // Even rounds kill a waiter, odd rounds a notifier.
        const bool kill_waiter = i % 2 == 0;
        const pid_t victim = spawn(kill_waiter ? std::function<void()>(waiter) : std::function<void()>(notifier));
        const pid_t waiter_a = spawn(waiter), waiter_b = spawn(waiter), notifying = spawn(notifier);
        std::this_thread::sleep_for(instant(i));
        kill_and_reap(sh, victim);
        survivors_go_on(sh, {waiter_a, waiter_b, notifying}, 10);  // notify() included
        // Nothing left behind: notify_all() with no one waiting returns at once, and no
        // wake-up is in reserve for a new waiter.
        REQUIRE(cond.acquire(std::chrono::duration<double>(5)));
        const auto t0 = Clock::now();
        cond.notify_all();
        CHECK(Clock::now() - t0 < 2s);
        CHECK_FALSE(cond.wait(std::chrono::duration<double>(0.02)));
        cond.release();
    }
}

// Issue 13, case 2: the waiter notify() chose is killed at swept instants (before it
// took its wake-up, while taking it, after). notify() must return and the wake-up must
// not be lost: either the victim took it before dying or the live waiter gets it.
TEST_CASE("Chaos: the Condition waiter notify() chose is killed at swept instants", "[chaos][condition]") {
    const int rounds = 20 * scale();
    struct Flags {
        std::atomic<int> waiting{0};
        std::atomic<int> victim_woke{0};
        std::atomic<int> live_woke{0};
        std::atomic<int> notified{0};
    };
    void* mem = ::mmap(nullptr, sizeof(Flags), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(mem != MAP_FAILED);
    Flags& f = *::new (mem) Flags;
    mp::Condition cond;
    for (int i = 0; i < rounds; ++i) {
        f.waiting.store(0);
        f.victim_woke.store(0);
        f.live_woke.store(0);
        f.notified.store(0);
        auto waiter = [&cond, &f](std::atomic<int>* woke) {
            return [&cond, &f, woke] {
                cond.acquire();
                f.waiting.fetch_add(1);
                if (cond.wait(std::chrono::duration<double>(30))) woke->store(1);
                cond.release();
            };
        };
        // The victim waits first: it is the one notify(1) chooses.
        const pid_t victim = spawn(waiter(&f.victim_woke));
        while (f.waiting.load() < 1) std::this_thread::sleep_for(100us);
        REQUIRE(cond.acquire(std::chrono::duration<double>(5)));  // it is inside wait() now
        cond.release();
        const pid_t live = spawn(waiter(&f.live_woke));
        while (f.waiting.load() < 2) std::this_thread::sleep_for(100us);
        REQUIRE(cond.acquire(std::chrono::duration<double>(5)));
        cond.release();
        const pid_t notifier = spawn([&cond, &f] {
            cond.acquire();
            cond.notify(1);
            cond.release();
            f.notified.store(1);
        });
        std::this_thread::sleep_for(std::chrono::microseconds((i * 37) % 400));
        ::kill(victim, SIGKILL);
        ::waitpid(victim, nullptr, 0);
        int status = 0;
        CHECK(reap_within(notifier, 10s, &status));  // notify() returned
        // notify() returned, so its wake-up was taken: by the live waiter (which says so
        // once it has the lock back, at once) or by the victim before it died.
        const auto until = Clock::now() + 1s;
        while (f.victim_woke.load() + f.live_woke.load() == 0 && Clock::now() < until)
            std::this_thread::sleep_for(1ms);
        // notify(1) woke one at most. None seen: the victim took the wake-up and died
        // before it could say so (it was killed after its wait() returned); then one more
        // notify(1) must reach the live waiter at once (nothing dead is left in its way).
        CHECK(f.victim_woke.load() + f.live_woke.load() <= 1);
        if (f.live_woke.load() == 0) {
            REQUIRE(cond.acquire(std::chrono::duration<double>(5)));
            const auto t0 = Clock::now();
            cond.notify(1);
            CHECK(Clock::now() - t0 < 2s);
            cond.release();
        }
        CHECK(reap_within(live, 10s, &status));
        CHECK(f.live_woke.load() == 1);
    }
}

TEST_CASE("Chaos: Barrier parties killed at swept instants break it, never hang it", "[chaos][barrier]") {
    const int rounds = 4 * scale();
    Shared& sh = *make_shared_counters();
    mp::Barrier barrier(3);
    for (int i = 0; i < rounds; ++i) {
        sh.stop.store(0);
        auto party = [&barrier, &sh] {
            while (!sh.stop.load()) {
                try {
                    barrier.wait(std::chrono::duration<double>(3));
                    sh.ops.fetch_add(1);
                } catch (const mp::BrokenBarrierError&) {
                    if (!sh.stop.load() && barrier.broken()) barrier.reset();
                }
            }
        };
        const pid_t victim = spawn(party);
        const pid_t others[] = {spawn(party), spawn(party)};
        std::this_thread::sleep_for(instant(i) * 10);
        kill_and_reap(sh, victim);
        // Two survivors of a 3-party barrier cannot pass. Killed inside wait(), the
        // victim breaks the barrier for them; killed between two waits, it leaves them
        // waiting for a third party, as it would in Python: then abort() frees them.
        sh.stop.store(1);
        const auto t0 = Clock::now();
        int left = 2;
        bool reaped[2] = {false, false};
        while (left > 0 && Clock::now() - t0 < 15s) {
            for (int k = 0; k < 2; ++k) {
                int status = 0;
                if (!reaped[k] && ::waitpid(others[k], &status, WNOHANG) == others[k]) {
                    reaped[k] = true;
                    --left;
                    CHECK(WEXITSTATUS(status) == 0);
                }
            }
            if (Clock::now() - t0 > 1200ms) barrier.abort();
            std::this_thread::sleep_for(5ms);
        }
        for (int k = 0; k < 2; ++k)
            if (!reaped[k]) reap_within(others[k], 0ms);
        REQUIRE(left == 0);
        // Usable again after a reset.
        barrier.reset();
        std::vector<std::thread> ts;
        std::atomic<int> passed{0};
        for (int k = 0; k < 3; ++k)
            ts.emplace_back([&] {
                try {
                    barrier.wait(std::chrono::duration<double>(10));
                    passed.fetch_add(1);
                } catch (const mp::BrokenBarrierError&) {
                }
            });
        for (auto& t : ts) t.join();
        CHECK(passed.load() == 3);
    }
}

TEST_CASE("Chaos: 40 processes on a Lock and a BoundedSemaphore(4) under random SIGKILLs", "[chaos][soak]") {
    const auto duration = std::chrono::milliseconds(1500) * scale();
    Shared& sh = *make_shared_counters();
    mp::Lock lock;
    mp::BoundedSemaphore sem(4);
    auto worker = [&] {
        while (!sh.stop.load()) {
            if (!lock.acquire(std::chrono::duration<double>(20))) ::_exit(4);
            enter_leave(sh);
            lock.release();
            if (!sem.acquire(std::chrono::duration<double>(20))) ::_exit(5);
            sem.release();
        }
    };
    std::vector<pid_t> kids;
    for (int i = 0; i < 40; ++i) kids.push_back(spawn(worker));
    std::mt19937 rng(13);
    int killed = 0;
    const auto end = Clock::now() + duration;
    while (Clock::now() < end) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 40));
        auto& k = kids[rng() % kids.size()];
        kill_and_reap(sh, k);
        ++killed;
        k = spawn(worker);
    }
    sh.stop.store(1);
    int hung = 0, failed = 0;
    for (pid_t p : kids) {
        int status = 0;
        if (!reap_within(p, 30s, &status)) ++hung;
        else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
    }
    CHECK(hung == 0);
    CHECK(failed == 0);
    CHECK(killed > 0);
    CHECK(sh.violations.load() == 0);
    REQUIRE(lock.acquire(std::chrono::duration<double>(5)));
    lock.release();
    for (int i = 0; i < 4; ++i) REQUIRE(sem.acquire(std::chrono::duration<double>(5)));
    CHECK_FALSE(sem.acquire(false));
    for (int i = 0; i < 4; ++i) sem.release();
    CHECK(sem.get_value() == 4);
}
