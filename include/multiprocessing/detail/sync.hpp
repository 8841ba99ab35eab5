// The states behind the synchronization primitives, as they lie in shared memory, and
// the futex protocols on them. synchronize.hpp wraps each in a handle; queues.hpp and
// sharedctypes.hpp place them inside their own segments.
//
// Robustness: a lock word holds its holder's thread id, and a semaphore records how
// many units each process holds. A waiter that has slept for owner_check_interval
// looks whether the holder still exists; if it died, the waiter takes over what it
// held. So a process killed inside a critical section costs the others at most that
// interval, never a deadlock. (Linux's robust futex list would do this in the kernel,
// but glibc owns that list and only pthread mutexes, which a different process may not
// unlock, can use it.)
#pragma once

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <vector>

#include <pthread.h>

#include "deadline.hpp"
#include "futex.hpp"
#include "process_state.hpp"
#include "shared_object.hpp"

namespace multiprocessing::detail {

// How long a blocked waiter sleeps before it checks on the holder.
inline constexpr std::chrono::milliseconds owner_check_interval{100};

// A short spin before sleeping: a lock is usually held for less than a system call.
inline constexpr SpinPolicy lock_spin{100, std::chrono::microseconds(0)};

// ---- OwnerLock: a mutex word ---------------------------------------------------------------

// 0 when free; else the holder's thread id, plus waiters_bit once someone sleeps on it.
// Thread ids on Linux stay below 2^22 (pid_max), far from the flag bit.
struct OwnerLock {
    static constexpr std::uint32_t waiters_bit = 0x80000000u;
    static constexpr std::uint32_t owner_mask = 0x3fffffffu;

    std::atomic<std::uint32_t> word{0};

    bool try_acquire() noexcept {
        std::uint32_t expected = 0;
        // acquire: what the previous holder wrote before releasing is visible to us.
        return word.compare_exchange_strong(expected, static_cast<std::uint32_t>(current_tid()),
                                            std::memory_order_acquire, std::memory_order_relaxed);
    }

    // Returns false if the deadline passed first.
    bool acquire(const Deadline& deadline) {
        if (try_acquire()) return true;
        if (deadline.expired()) return false;  // acquire(false): no polling
        // relaxed: only a hint to try the CAS, which itself orders.
        if (spin_until([&] { return word.load(std::memory_order_relaxed) == 0 && try_acquire(); }, lock_spin))
            return true;
        const auto me = static_cast<std::uint32_t>(current_tid());
        for (;;) {
            std::uint32_t cur = word.load(std::memory_order_relaxed);
            if (cur == 0) {
                // Taken with the waiters bit set: others may still sleep on the word, and
                // our release must wake them (the futex mutex of Drepper's "Futexes Are
                // Tricky"). acquire: as in try_acquire().
                if (word.compare_exchange_strong(cur, me | waiters_bit, std::memory_order_acquire,
                                                 std::memory_order_relaxed))
                    return true;
                continue;
            }
            if (!(cur & waiters_bit)) {
                // relaxed: the flag only asks the holder to wake us; the futex re-checks.
                if (!word.compare_exchange_strong(cur, cur | waiters_bit, std::memory_order_relaxed,
                                                  std::memory_order_relaxed))
                    continue;
                cur |= waiters_bit;
            }
            if (deadline.expired()) return false;
            const auto slept_from = Clock::now();
            futex_wait(word, cur, deadline.sleep_for(owner_check_interval));
            // After a full check interval with the same holder, ask whether it is alive.
            if (Clock::now() - slept_from >= owner_check_interval && word.load(std::memory_order_relaxed) == cur &&
                !task_alive(static_cast<pid_t>(cur & owner_mask))) {
                // acquire: as in try_acquire(); only one waiter's CAS from `cur` wins.
                if (word.compare_exchange_strong(cur, me | waiters_bit, std::memory_order_acquire,
                                                 std::memory_order_relaxed))
                    return true;
            }
        }
    }

    // Returns false if the lock was not held.
    bool release() noexcept {
        // release: our writes in the critical section happen before the next holder's
        // acquire CAS reads the word.
        const std::uint32_t old = word.exchange(0, std::memory_order_release);
        if (old & waiters_bit) futex_wake(word, 1);
        return old != 0;
    }

    bool held_by_me() const noexcept {
        // relaxed: only this thread can have stored its own id.
        return (word.load(std::memory_order_relaxed) & owner_mask) == static_cast<std::uint32_t>(current_tid());
    }
    bool held() const noexcept { return word.load(std::memory_order_relaxed) != 0; }
};

// ---- RecursiveLock -------------------------------------------------------------------------

struct RecursiveLock {
    OwnerLock owner;
    std::uint32_t depth = 0;  // only read or written by the holder

    bool acquire(const Deadline& deadline) {
        if (owner.held_by_me()) {
            ++depth;
            return true;
        }
        if (!owner.acquire(deadline)) return false;
        depth = 1;  // also right after taking over from a holder that died
        return true;
    }
    // False if this thread does not hold it.
    bool release() noexcept {
        if (!owner.held_by_me()) return false;
        if (--depth == 0) owner.release();
        return true;
    }
    // For Condition::wait: give up every level, and take them all back later.
    std::uint32_t release_all() noexcept {
        const std::uint32_t d = depth;
        depth = 0;
        owner.release();
        return d;
    }
    void reacquire(std::uint32_t d) {
        owner.acquire(Deadline{});
        depth = d;
    }
};

// ---- CountingSemaphore ---------------------------------------------------------------------

// Which processes hold how many units, so a dead holder's units can be given back (a
// Condition counts its waiting threads in one the same way). Entries are claimed by pid;
// a process may own several (two threads racing to claim), which only splits its count.
// The entry of a dead process that held nothing is reused; a table full of live holders
// just makes later holders unrecoverable.
struct HolderTable {
    static constexpr int size = 32;
    struct Entry {
        std::atomic<std::uint32_t> pid{0};
        std::atomic<std::uint32_t> units{0};
    };
    Entry entries[size];

    void add(pid_t self) noexcept {
        const auto me = static_cast<std::uint32_t>(self);
        // relaxed throughout the table: it is bookkeeping for recovery, ordered with the
        // semaphore's value by the value's own atomics; recovery only runs when a holder
        // is dead, and a dead process writes nothing more.
        for (auto& e : entries)
            if (e.pid.load(std::memory_order_relaxed) == me) {
                e.units.fetch_add(1, std::memory_order_relaxed);
                return;
            }
        for (auto& e : entries) {
            std::uint32_t expected = 0;
            if (e.pid.load(std::memory_order_relaxed) == 0 &&
                e.pid.compare_exchange_strong(expected, me, std::memory_order_relaxed)) {
                e.units.fetch_add(1, std::memory_order_relaxed);
                return;
            }
        }
        // Full: take over the entry of a process that exited holding nothing (else every
        // process that ever held a unit would keep its entry, and after 32 of them no
        // holder could be recovered). A dead process writes nothing more, and only one CAS
        // from its pid wins (ours, another claimer's or reclaim_dead()'s).
        for (auto& e : entries) {
            std::uint32_t pid = e.pid.load(std::memory_order_relaxed);
            if (pid == 0 || pid == claiming || e.units.load(std::memory_order_relaxed) != 0 ||
                task_alive(static_cast<pid_t>(pid)))
                continue;
            if (e.pid.compare_exchange_strong(pid, me, std::memory_order_relaxed)) {
                e.units.fetch_add(1, std::memory_order_relaxed);
                return;
            }
        }
    }

    // A release: our own unit if we hold one, else (a release on someone's behalf, as
    // when a semaphore signals between processes) anyone's.
    void remove(pid_t self) noexcept {
        if (remove_own(self)) return;
        take_unit([](std::uint32_t pid) { return pid != 0 && pid != claiming; });
    }
    // Our own unit only; false if we hold none.
    bool remove_own(pid_t self) noexcept {
        const auto me = static_cast<std::uint32_t>(self);
        return take_unit([&](std::uint32_t pid) { return pid == me; });
    }

    // Drops every record of `self` (at its normal exit).
    void forget(pid_t self) noexcept {
        const auto me = static_cast<std::uint32_t>(self);
        for (auto& e : entries) {
            std::uint32_t pid = me;
            if (e.pid.load(std::memory_order_relaxed) != me ||
                !e.pid.compare_exchange_strong(pid, claiming, std::memory_order_relaxed))
                continue;
            e.units.store(0, std::memory_order_relaxed);
            e.pid.store(0, std::memory_order_relaxed);
        }
    }

    // Frees the entries of dead processes; returns the units they held.
    std::uint32_t reclaim_dead() noexcept {
        std::uint32_t freed = 0;
        for (auto& e : entries) {
            std::uint32_t pid = e.pid.load(std::memory_order_relaxed);
            // `claiming`: another reclaimer is freeing it (task_alive(-1) would say dead,
            // and a second claim could take the units of whoever claims the entry next).
            if (pid == 0 || pid == claiming || task_alive(static_cast<pid_t>(pid))) continue;
            // Only one reclaimer wins the entry.
            if (!e.pid.compare_exchange_strong(pid, claiming, std::memory_order_relaxed)) continue;
            freed += e.units.exchange(0, std::memory_order_relaxed);
            e.pid.store(0, std::memory_order_relaxed);
        }
        return freed;
    }

private:
    static constexpr std::uint32_t claiming = 0xFFFFFFFFu;

    template <class Match>
    bool take_unit(Match&& match) noexcept {
        for (auto& e : entries) {
            if (!match(e.pid.load(std::memory_order_relaxed))) continue;
            std::uint32_t u = e.units.load(std::memory_order_relaxed);
            while (u > 0)
                if (e.units.compare_exchange_weak(u, u - 1, std::memory_order_relaxed)) return true;
        }
        return false;
    }
};

struct CountingSemaphore {
    std::atomic<std::uint32_t> value;
    std::atomic<std::uint32_t> sleepers{0};
    const std::uint32_t bound;  // BoundedSemaphore's maximum; UINT32_MAX when unbounded
    HolderTable holders;

    CountingSemaphore(std::uint32_t initial, std::uint32_t max_value) : value(initial), bound(max_value) {}

    bool try_acquire() noexcept {
        std::uint32_t v = value.load(std::memory_order_relaxed);
        while (v > 0) {
            // acquire: pairs with release()'s increment, as a lock's acquire does.
            if (value.compare_exchange_weak(v, v - 1, std::memory_order_acquire, std::memory_order_relaxed)) {
                holders.add(current_pid());
                return true;
            }
        }
        return false;
    }

    bool acquire(const Deadline& deadline) {
        if (try_acquire()) return true;
        if (deadline.expired()) return false;  // acquire(false): no polling
        if (spin_until([&] { return try_acquire(); }, lock_spin)) return true;
        for (;;) {
            if (try_acquire()) return true;
            if (deadline.expired()) return false;
            // seq_cst: Dekker with release(): either it sees us sleeping or the kernel's
            // compare in futex_wait sees its increment.
            sleepers.fetch_add(1, std::memory_order_seq_cst);
            const auto slept_from = Clock::now();
            futex_wait(value, 0, deadline.sleep_for(owner_check_interval));
            sleepers.fetch_sub(1, std::memory_order_relaxed);
            if (Clock::now() - slept_from >= owner_check_interval) give_back(holders.reclaim_dead());
        }
    }

    // False when a bounded semaphore would go above its bound.
    bool release() noexcept {
        std::uint32_t v = value.load(std::memory_order_relaxed);
        do {
            if (v >= bound) return false;
            // seq_cst: the release half of the lock-like ordering, and Dekker with the
            // sleeper count read below.
        } while (!value.compare_exchange_weak(v, v + 1, std::memory_order_seq_cst, std::memory_order_relaxed));
        holders.remove(current_pid());
        if (sleepers.load(std::memory_order_seq_cst) != 0) futex_wake(value, 1);
        return true;
    }

    void give_back(std::uint32_t units) noexcept {
        if (units == 0) return;
        value.fetch_add(units, std::memory_order_seq_cst);
        futex_wake(value, static_cast<int>(units));
    }
};

// Every semaphore this process can use (created here or inherited: a fork child has the
// parent's registry), so that a normal exit can drop the process's holder records. Units
// a process still holds when it exits normally were consumed (a semaphore counting items
// hands them out for good); only a process that dies without exiting (a signal, _exit)
// leaves records for the recovery above.
class SemaphoreRegistry {
public:
    static void add(std::weak_ptr<void> alive, CountingSemaphore* semaphore) {
        static const bool hooked = [] {
            add_normal_exit_action([] { instance().forget_holdings(); });
            ::pthread_atfork(nullptr, nullptr, [] { new (&instance().mutex_) std::mutex; });
            return true;
        }();
        (void)hooked;
        auto& self = instance();
        std::lock_guard lock(self.mutex_);
        std::erase_if(self.entries_, [](const Entry& e) { return e.alive.expired(); });
        self.entries_.push_back({std::move(alive), semaphore});
    }

private:
    struct Entry {
        std::weak_ptr<void> alive;  // the mapping; expired once no handle here maps it
        CountingSemaphore* semaphore;
    };
    static SemaphoreRegistry& instance() {
        static auto* registry = new SemaphoreRegistry;  // outlives static destructors
        return *registry;
    }
    void forget_holdings() noexcept {
        std::lock_guard lock(mutex_);
        const pid_t me = current_pid();
        for (auto& e : entries_)
            if (auto mapping = e.alive.lock()) e.semaphore->holders.forget(me);
    }

    std::mutex mutex_;
    std::vector<Entry> entries_;
};

// ---- ConditionState ------------------------------------------------------------------------

// Waiters are counted in `pending` while registered and unwoken; notify(n) turns up to n
// of them into `tokens`, which any registered waiter may take. Invariant: pending +
// tokens = threads inside wait() that hold no token yet. A waiter that times out either
// deregisters (pending > 0) or, if it was already notified, takes its token; so notify(n)
// wakes at most n. The notifier holds the condition's lock, so only timeouts race with it.
//
// notify() returns once its tokens are all taken (CPython's Condition.notify likewise
// waits for the woken to acknowledge), and it holds the lock until then, so no thread can
// start to wait while a token is out: a wake-up goes to a thread that was waiting when
// notify() was called. (Were a later waiter to take it, the notified one would sleep on:
// a lost wake-up, which for instance left a Barrier's drained round unfinished forever.)
// A waiter that dies before taking its token would make notify() wait forever, so the
// notifier, after each owner_check_interval, drops the registrations of dead waiting
// processes, which `waiters` records.
struct ConditionState {
    std::atomic<std::uint32_t> pending{0};
    std::atomic<std::uint32_t> tokens{0};   // the futex word waiters sleep on
    std::atomic<std::uint32_t> drained{0};  // bumped when tokens reach 0; the notifier sleeps on it
    HolderTable waiters;                    // processes inside wait(): how many of their threads

    // Called with the lock held; `unlock` and `relock` drop and retake it. True if
    // notified, false if the deadline passed.
    template <class Unlock, class Relock>
    bool wait(const Deadline& deadline, Unlock&& unlock, Relock&& relock) {
        waiters.add(current_pid());
        // relaxed: registration is published by the unlock's release.
        pending.fetch_add(1, std::memory_order_relaxed);
        unlock();
        bool notified = false;
        for (;;) {
            if (take_token()) {
                notified = true;
                break;
            }
            if (deadline.expired()) {
                std::uint32_t p = pending.load(std::memory_order_relaxed);
                while (p > 0)
                    if (pending.compare_exchange_weak(p, p - 1, std::memory_order_relaxed)) break;
                if (p > 0) break;  // deregistered: a plain timeout
                // Everyone registered was notified, us included: our token is coming.
                while (!take_token()) cpu_relax();
                notified = true;
                break;
            }
            futex_wait(tokens, 0, deadline.sleep_for(std::chrono::hours(1)));
        }
        waiters.remove_own(current_pid());
        relock();
        return notified;
    }

    // Wakes up to n waiters; returns how many. Caller holds the lock.
    std::uint32_t notify(std::uint32_t n) noexcept {
        std::uint32_t woken = 0;
        std::uint32_t p = pending.load(std::memory_order_relaxed);
        while (woken < n && p > 0) {
            if (!pending.compare_exchange_weak(p, p - 1, std::memory_order_relaxed)) continue;
            --p;
            ++woken;
        }
        if (woken) {
            // release: what we wrote under the lock is visible to a waiter taking the
            // token (it also retakes the lock, which orders it anyway).
            tokens.fetch_add(woken, std::memory_order_release);
            futex_wake(tokens, static_cast<int>(woken));
            await_tokens_taken();
        }
        return woken;
    }

private:
    bool take_token() noexcept {
        std::uint32_t t = tokens.load(std::memory_order_relaxed);
        while (t > 0)
            // acquire: pairs with notify()'s release.
            if (tokens.compare_exchange_weak(t, t - 1, std::memory_order_acquire, std::memory_order_relaxed)) {
                if (t == 1) {
                    // The last one: tell the notifier. seq_cst: after our CAS, so a
                    // notifier that sees the new `drained` also sees tokens at 0.
                    drained.fetch_add(1, std::memory_order_seq_cst);
                    futex_wake(drained, 1);
                }
                return true;
            }
        return false;
    }

    void await_tokens_taken() noexcept {
        if (spin_until([&] { return tokens.load(std::memory_order_acquire) == 0; }, lock_spin)) return;
        for (;;) {
            // seq_cst: `drained` before `tokens`, the reverse of take_token()'s order.
            const std::uint32_t d = drained.load(std::memory_order_seq_cst);
            if (tokens.load(std::memory_order_seq_cst) == 0) return;
            const auto slept_from = Clock::now();
            futex_wait(drained, d, owner_check_interval);
            if (Clock::now() - slept_from >= owner_check_interval) forget_dead_waiters();
        }
    }

    // The registrations of waiters whose process died: first from the unwoken (a live
    // waiter that was notified keeps its token), then their tokens.
    void forget_dead_waiters() noexcept {
        std::uint32_t dead = waiters.reclaim_dead();
        std::uint32_t p = pending.load(std::memory_order_relaxed);
        while (dead > 0 && p > 0)
            if (pending.compare_exchange_weak(p, p - 1, std::memory_order_relaxed)) {
                --dead;
                --p;
            }
        while (dead > 0 && take_token()) --dead;
    }
};

// ---- EventState ----------------------------------------------------------------------------

struct EventState {
    std::atomic<std::uint32_t> flag{0};

    void set() noexcept {
        // release: what was written before set() is visible after a wait() returns true.
        if (flag.exchange(1, std::memory_order_release) == 0) futex_wake(flag);
    }
    void clear() noexcept { flag.store(0, std::memory_order_relaxed); }
    bool is_set() const noexcept { return flag.load(std::memory_order_acquire) != 0; }

    bool wait(const Deadline& deadline) {
        for (;;) {
            if (is_set()) return true;
            if (deadline.expired()) return false;
            futex_wait(flag, 0, deadline.sleep_for(std::chrono::hours(1)));
        }
    }
};

}  // namespace multiprocessing::detail
