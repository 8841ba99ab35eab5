// The states behind the synchronization primitives, as they lie in shared memory, and
// the futex protocols on them. synchronize.hpp wraps each in a handle; queues.hpp and
// sharedctypes.hpp place them inside their own segments.
//
// Robustness: every claim (a lock's holder, a BoundedSemaphore unit, a Condition
// waiter's registration) is the claimant's identity stored in the claimed word itself,
// and a waiter that has waited owner_check_interval undoes the claims of dead owners
// with one CAS each. recovery.hpp says why that loses nothing whatever instant anyone
// is killed at. (Linux's robust futex list would do this in the kernel, but glibc owns
// that list and only pthread mutexes, which a different process may not unlock, can
// use it.)
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <pthread.h>

#include "../errors.hpp"
#include "deadline.hpp"
#include "futex.hpp"
#include "process_state.hpp"
#include "recovery.hpp"
#include "shared_object.hpp"

namespace multiprocessing::detail {

// A short spin before sleeping: a lock is usually held for less than a system call.
inline constexpr SpinPolicy lock_spin{100, std::chrono::microseconds(0)};

// ---- OwnerLock: a mutex word ---------------------------------------------------------------

// 0 when free; else the holding thread's identity (recovery.hpp), plus waiters_bit once
// someone sleeps on it. Holder and claim are one 64-bit word, so no instant exists at
// which the lock is taken but its holder unknown; waiters sleep on its low half.
struct OwnerLock {
    static constexpr std::uint64_t waiters_bit = identity_flag;

    std::atomic<std::uint64_t> word{0};

    bool try_acquire() noexcept {
        std::uint64_t expected = 0;
        // acquire: what the previous holder wrote before releasing is visible to us.
        return word.compare_exchange_strong(expected, thread_identity(), std::memory_order_acquire,
                                            std::memory_order_relaxed);
    }

    // Returns false if the deadline passed first. `recovered`, if given, is set when the
    // lock was taken over from a holder that died (the data it guards may be half-updated).
    bool acquire(const Deadline& deadline, bool* recovered = nullptr) {
        if (try_acquire()) return true;
        if (deadline.expired()) return false;  // acquire(false): no polling
        // relaxed: only a hint to try the CAS, which itself orders.
        if (spin_until([&] { return word.load(std::memory_order_relaxed) == 0 && try_acquire(); }, lock_spin))
            return true;
        const std::uint64_t me = thread_identity();
        OwnerCheckClock check;
        std::uint64_t watched = 0;  // the holder `check` is timing
        for (;;) {
            std::uint64_t cur = word.load(std::memory_order_relaxed);
            if (cur == 0) {
                // Taken with the waiters bit set: others may still sleep on the word, and
                // our release must wake them (the futex mutex of Drepper's "Futexes Are
                // Tricky"). acquire: as in try_acquire().
                if (word.compare_exchange_strong(cur, me | waiters_bit, std::memory_order_acquire,
                                                 std::memory_order_relaxed))
                    return true;
                continue;
            }
            if ((cur & ~waiters_bit) != watched) {
                watched = cur & ~waiters_bit;
                check.restart();
            }
            if (!(cur & waiters_bit)) {
                // relaxed: the flag only asks the holder to wake us; the futex re-checks.
                if (!word.compare_exchange_strong(cur, cur | waiters_bit, std::memory_order_relaxed,
                                                  std::memory_order_relaxed))
                    continue;
                cur |= waiters_bit;
            }
            if (deadline.expired()) return false;
            futex_wait_low(word, cur, deadline.sleep_for(owner_check_interval));
            // The same holder for a whole interval (however often we were woken): does it
            // live? A dead holder writes nothing more, so `cur` is still its word, and only
            // one waiter's CAS from it wins. acquire: as in try_acquire().
            if (check.due() && (word.load(std::memory_order_relaxed) & ~waiters_bit) == watched &&
                !identity_alive(watched)) {
                std::uint64_t dead = word.load(std::memory_order_relaxed);
                if ((dead & ~waiters_bit) == watched &&
                    word.compare_exchange_strong(dead, me | waiters_bit, std::memory_order_acquire,
                                                 std::memory_order_relaxed)) {
                    if (recovered) *recovered = true;
                    return true;
                }
            }
        }
    }

    // Returns false if the lock was not held.
    bool release() noexcept {
        // release: our writes in the critical section happen before the next holder's
        // acquire CAS reads the word.
        const std::uint64_t old = word.exchange(0, std::memory_order_release);
        if (old & waiters_bit) futex_wake_low(word, 1);
        return old != 0;
    }

    bool held_by_me() const noexcept {
        // relaxed: only this thread can have stored its own identity.
        return (word.load(std::memory_order_relaxed) & ~waiters_bit) == thread_identity();
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

// A plain Semaphore is a counter and nothing more: as in Python, units a dead process
// had acquired stay taken (an acquire may mean "took an item", which is gone with it).
//
// A BoundedSemaphore(n) is n unit slots after this struct (its SharedBlock's extra
// bytes): 0 for a free unit, else the identity of the process holding it. Acquiring is
// one CAS of a free slot to our identity, releasing one CAS back to 0, recovering one
// CAS of a dead holder's slot to 0: the unit and the record of who holds it are the same
// word (recovery.hpp), so there are never more than n units. `value` is then only the
// futex word waiters sleep on (a release sequence), not the count.
struct alignas(8) CountingSemaphore {
    static constexpr std::uint32_t unbounded = UINT32_MAX;
    // Beyond this a slot per unit is absurd; BoundedSemaphore refuses it.
    static constexpr std::uint32_t max_bound = 65536;

    std::atomic<std::uint32_t> value;  // plain: the count; bounded: bumped by each release
    std::atomic<std::uint32_t> sleepers{0};
    const std::uint32_t bound;  // BoundedSemaphore's maximum; unbounded for a Semaphore
    std::uint32_t reserved = 0;

    static std::size_t extra_bytes(std::uint32_t bound) noexcept {
        return bound == unbounded ? 0 : std::size_t(bound) * sizeof(std::atomic<std::uint64_t>);
    }

    CountingSemaphore(std::uint32_t initial, std::uint32_t max_value)
        : value(max_value == unbounded ? initial : 0), bound(max_value) {
        if (bounded())
            for (std::uint32_t i = 0; i < bound; ++i) ::new (&slots()[i]) std::atomic<std::uint64_t>(0);
    }

    bool bounded() const noexcept { return bound != unbounded; }
    std::atomic<std::uint64_t>* slots() noexcept {
        return std::launder(reinterpret_cast<std::atomic<std::uint64_t>*>(this + 1));
    }

    bool try_acquire() noexcept { return bounded() ? try_claim() : try_take(); }

    bool acquire(const Deadline& deadline) {
        if (try_acquire()) return true;
        if (deadline.expired()) return false;  // acquire(false): no polling
        if (spin_until([&] { return try_acquire(); }, lock_spin)) return true;
        OwnerCheckClock check;
        for (;;) {
            // seq_cst: Dekker with release(): either it sees us sleeping (and bumps
            // `value`, which the kernel's compare in futex_wait sees) or we see its
            // increment (plain) or its freed slot (bounded) in try_acquire().
            sleepers.fetch_add(1, std::memory_order_seq_cst);
            const std::uint32_t seen = value.load(std::memory_order_seq_cst);
            if (try_acquire()) {
                sleepers.fetch_sub(1, std::memory_order_relaxed);
                return true;
            }
            if (deadline.expired()) {
                sleepers.fetch_sub(1, std::memory_order_relaxed);
                return false;
            }
            // Plain: sleep while the count is 0. Bounded: while no release happened since
            // `seen` (a release by a process killed before announcing it costs us one
            // check interval, after which we look at the slots anyway).
            futex_wait(value, bounded() ? seen : 0, deadline.sleep_for(owner_check_interval));
            sleepers.fetch_sub(1, std::memory_order_relaxed);
            if (bounded() && check.due()) reclaim_dead();
        }
    }

    // False when there is nothing to release (a bounded semaphore at its bound).
    bool release() noexcept {
        if (bounded()) {
            if (!unclaim()) return false;
            // seq_cst: Dekker with acquire(): our slot CAS came first, so either this load
            // sees the sleeper or the sleeper's look at the slots sees the unit. A
            // releaser killed before the bump costs a sleeper one check interval.
            if (sleepers.load(std::memory_order_seq_cst) != 0) {
                value.fetch_add(1, std::memory_order_seq_cst);
                futex_wake(value, 1);
            }
            return true;
        }
        std::uint32_t v = value.load(std::memory_order_relaxed);
        do {
            if (v == UINT32_MAX) return false;
            // seq_cst: the release half of the lock-like ordering, and Dekker with the
            // sleeper count read below.
        } while (!value.compare_exchange_weak(v, v + 1, std::memory_order_seq_cst, std::memory_order_relaxed));
        if (sleepers.load(std::memory_order_seq_cst) != 0) futex_wake(value, 1);
        return true;
    }

    std::uint32_t get_value() noexcept {
        // relaxed: a snapshot, as Python's get_value() is.
        if (!bounded()) return value.load(std::memory_order_relaxed);
        std::uint32_t free = 0;
        for (std::uint32_t i = 0; i < bound; ++i) free += slots()[i].load(std::memory_order_relaxed) == 0;
        return free;
    }

    // Frees the slots of dead holders; returns how many.
    std::uint32_t reclaim_dead() noexcept {
        std::uint32_t freed = 0;
        Identity known_alive = 0;  // most slots of a busy semaphore belong to few processes
        for (std::uint32_t i = 0; i < bound; ++i) {
            auto& slot = slots()[i];
            std::uint64_t owner = slot.load(std::memory_order_relaxed);
            if (owner == 0 || owner == known_alive) continue;
            if (identity_alive(owner)) {
                known_alive = owner;
                continue;
            }
            // One step: before it, the unit is still the dead holder's; after it, free.
            // acq_rel: as a release by the dead holder would have been (release), and
            // ordered after its writes we may be the first to see (acquire).
            if (slot.compare_exchange_strong(owner, 0, std::memory_order_acq_rel, std::memory_order_relaxed))
                ++freed;
        }
        if (freed) {
            // seq_cst: as release()'s bump.
            value.fetch_add(1, std::memory_order_seq_cst);
            futex_wake(value, static_cast<int>(freed));
        }
        return freed;
    }

private:
    bool try_take() noexcept {
        std::uint32_t v = value.load(std::memory_order_relaxed);
        while (v > 0)
            // acquire: pairs with release()'s increment, as a lock's acquire does.
            if (value.compare_exchange_weak(v, v - 1, std::memory_order_acquire, std::memory_order_relaxed))
                return true;
        return false;
    }

    // Where this thread starts looking: spread over the slots by identity, so that an
    // uncontended acquire and its release touch one slot whatever the history.
    std::uint32_t start_slot() const noexcept {
        if (bound == 1) return 0;
        const std::uint64_t h = (thread_identity() * 0x9E3779B97F4A7C15ull) >> 32;
        return static_cast<std::uint32_t>((h * bound) >> 32);  // h * bound / 2^32: in [0, bound)
    }

    bool try_claim() noexcept {
        if (bound == 0) return false;
        const std::uint64_t me = process_identity();
        const std::uint32_t first = start_slot();
        for (std::uint32_t k = 0; k < bound; ++k) {
            std::uint32_t i = first + k;
            if (i >= bound) i -= bound;
            auto& slot = slots()[i];
            std::uint64_t expected = 0;
            // seq_cst load: Dekker with release() (see there); a plain load on x86.
            // acquire CAS: pairs with the release CAS that freed the slot.
            if (slot.load(std::memory_order_seq_cst) == 0 &&
                slot.compare_exchange_strong(expected, me, std::memory_order_acquire, std::memory_order_relaxed))
                return true;
        }
        return false;
    }

    // One of our own units if we hold one, else (a release on someone's behalf, as when
    // a semaphore signals between processes) anyone's. False if every unit is free.
    bool unclaim() noexcept {
        if (bound == 0) return false;
        const std::uint64_t me = process_identity();
        const std::uint32_t first = start_slot();
        for (int pass = 0; pass < 2; ++pass)
            for (std::uint32_t k = 0; k < bound; ++k) {
                std::uint32_t i = first + k;
                if (i >= bound) i -= bound;
                auto& slot = slots()[i];
                std::uint64_t owner = slot.load(std::memory_order_relaxed);
                if (owner == 0 || (pass == 0 && owner != me)) continue;
                // release: our writes before release() are visible to the next claimer;
                // seq_cst: and it precedes release()'s look at the sleepers (Dekker).
                if (slot.compare_exchange_strong(owner, 0, std::memory_order_seq_cst, std::memory_order_relaxed))
                    return true;
            }
        return false;
    }
};

// ---- ConditionState ------------------------------------------------------------------------

// Each thread inside wait() owns one slot of a fixed table: its identity while waiting,
// with notified_bit once notify() chose it. The wake-up is in the waiter's own slot, so
// no other thread can take it, and taking it (the slot back to 0) is one step: there is
// no token to lose between "took" and "deregistered". Waiters sleep on their slot's low
// half, which notify() changes, so notify(n) wakes exactly the n it chose (the oldest
// waiters first, as Python's).
//
// notify() returns once its chosen waiters have taken their wake-ups (CPython's
// Condition.notify likewise waits for the woken to acknowledge). That is what makes a
// waiter's death harmless: a chosen waiter that has not taken its wake-up after
// owner_check_interval is asked about; if dead, its slot is freed and its wake-up goes
// to the next live waiter. A waiter that dies unchosen keeps its slot until a notify()
// chooses it (and finds it dead) or until a new waiter finds the table full and sweeps.
//
// The table bounds how many threads wait on one condition AT ONCE (not how many ever
// did); one more gets an exception from wait(), with the lock still held.
struct ConditionState {
    static constexpr std::uint32_t capacity = 4096;
    static constexpr std::uint64_t notified_bit = identity_flag;

    std::atomic<std::uint32_t> high{0};    // slots at and above it were never used
    std::atomic<std::uint32_t> acks{0};    // bumped by each woken waiter; the notifier sleeps on it
    std::atomic<std::uint32_t> deaths{0};  // dead waiters whose slots were freed
    std::uint32_t next_ticket = 0;         // guarded by the lock
    std::uint32_t tickets[capacity] = {};  // guarded by the lock: when each slot's waiter came
    std::atomic<std::uint64_t> slots[capacity] = {};

    // Called with the lock held; `unlock` and `relock` drop and retake it. True if
    // notified, false if the deadline passed.
    template <class Unlock, class Relock>
    bool wait(const Deadline& deadline, Unlock&& unlock, Relock&& relock) {
        const std::uint64_t me = thread_identity();
        auto& slot = slots[claim_slot(me)];
        unlock();
        bool notified = false;
        for (;;) {
            // acquire: pairs with notify()'s release CAS.
            std::uint64_t v = slot.load(std::memory_order_acquire);
            if (v == (me | notified_bit)) {
                // Taking the wake-up frees the slot, in one store: no one else writes a
                // live waiter's notified slot. release: the notifier that sees it free
                // (after our acks bump) is done with us.
                slot.store(0, std::memory_order_release);
                // seq_cst: Dekker with await_acks(), which reads acks before the slots.
                acks.fetch_add(1, std::memory_order_seq_cst);
                futex_wake(acks, 1);
                notified = true;
                break;
            }
            if (deadline.expired()) {
                // relaxed: deregistering publishes nothing. Fails only if notify() chose
                // us meanwhile: then take the wake-up on the next turn.
                if (slot.compare_exchange_strong(v, 0, std::memory_order_relaxed, std::memory_order_relaxed)) break;
                continue;
            }
            futex_wait_low(slot, me, deadline.sleep_for(std::chrono::hours(1)));
        }
        relock();
        return notified;
    }

    // Wakes up to n waiters; returns how many. Caller holds the lock.
    std::uint32_t notify(std::uint32_t n) {
        std::vector<std::pair<std::uint32_t, std::uint64_t>> chosen;  // slot, its notified word
        choose(n, chosen);
        const auto woken = static_cast<std::uint32_t>(chosen.size());
        if (woken) await_acks(chosen);
        return woken;
    }

    // Frees the slots of dead waiters (with the lock held, or from a notifier); how many.
    std::uint32_t reap_dead() noexcept {
        std::uint32_t freed = 0;
        const std::uint32_t end = high.load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < end; ++i) {
            std::uint64_t v = slots[i].load(std::memory_order_relaxed);
            if (v != 0 && !identity_alive(v & ~notified_bit) && free_dead(i, v)) ++freed;
        }
        return freed;
    }

private:
    std::uint32_t claim_slot(std::uint64_t me) {
        for (int round = 0; round < 2; ++round) {
            for (std::uint32_t i = 0; i < capacity; ++i) {
                std::uint64_t expected = 0;
                // relaxed: the registration is published by the unlock's release, and
                // read by a notifier only under the lock.
                if (slots[i].load(std::memory_order_relaxed) == 0 &&
                    slots[i].compare_exchange_strong(expected, me, std::memory_order_relaxed)) {
                    tickets[i] = next_ticket++;
                    if (i >= high.load(std::memory_order_relaxed)) high.store(i + 1, std::memory_order_relaxed);
                    return i;
                }
            }
            if (reap_dead() == 0) break;
        }
        throw ProcessError("Condition.wait: " + std::to_string(capacity) +
                           " threads are already waiting on this condition, the most it can hold at once; "
                           "notify some, or use several conditions");
    }

    // A dead waiter writes nothing more, so its word is still `v` unless another reaper
    // freed it first; one CAS wins.
    bool free_dead(std::uint32_t i, std::uint64_t v) noexcept {
        // relaxed: the slot guards no data of the dead waiter's.
        if (!slots[i].compare_exchange_strong(v, 0, std::memory_order_relaxed)) return false;
        deaths.fetch_add(1, std::memory_order_relaxed);
        return true;
    }

    // Marks up to n of the waiting (not yet chosen) slots, oldest first.
    void choose(std::uint32_t n, std::vector<std::pair<std::uint32_t, std::uint64_t>>& chosen) {
        if (n == 0) return;
        std::vector<std::pair<std::uint32_t, std::uint32_t>> waiting;  // age, slot
        const std::uint32_t end = high.load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < end; ++i) {
            const std::uint64_t v = slots[i].load(std::memory_order_relaxed);
            if (v != 0 && !(v & notified_bit)) waiting.emplace_back(next_ticket - tickets[i], i);
        }
        std::sort(waiting.begin(), waiting.end(), std::greater<>());
        for (auto [age, i] : waiting) {
            if (n == 0) break;
            std::uint64_t v = slots[i].load(std::memory_order_relaxed);
            if (v == 0 || (v & notified_bit)) continue;
            // release: what we wrote under the lock is visible to the waiter taking the
            // wake-up (it also retakes the lock, which orders it anyway). Fails if the
            // waiter timed out and left meanwhile.
            if (!slots[i].compare_exchange_strong(v, v | notified_bit, std::memory_order_release,
                                                  std::memory_order_relaxed))
                continue;
            futex_wake_low(slots[i]);
            chosen.emplace_back(i, v | notified_bit);
            --n;
        }
    }

    void await_acks(std::vector<std::pair<std::uint32_t, std::uint64_t>>& chosen) {
        auto taken = [&] {
            // acquire: the waiter's store of 0 came after it woke.
            std::erase_if(chosen, [&](const auto& c) { return slots[c.first].load(std::memory_order_acquire) != c.second; });
            return chosen.empty();
        };
        if (spin_until(taken, lock_spin)) return;
        OwnerCheckClock check;
        for (;;) {
            // seq_cst: `acks` before the slots, the reverse of wait()'s order.
            const std::uint32_t a = acks.load(std::memory_order_seq_cst);
            if (taken()) return;
            futex_wait(acks, a, owner_check_interval);
            if (!check.due()) continue;
            // Chosen waiters that have not taken their wake-up for a whole interval: the
            // dead ones' wake-ups go to live waiters instead.
            std::uint32_t lost = 0;
            for (auto& [i, word] : chosen)
                if (slots[i].load(std::memory_order_relaxed) == word && !identity_alive(word & ~notified_bit) &&
                    free_dead(i, word))
                    ++lost;
            if (lost) {
                reap_dead();
                choose(lost, chosen);
            }
        }
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
