// Python's multiprocessing.synchronize: Lock, RLock, Semaphore, BoundedSemaphore,
// Condition, Event, Barrier. All are process-shared handles: copies, in this process or
// in a child (by inheritance or as a Process argument), are the same object.
//
// What a process that dies leaves behind (docs/recovery.md; detail/recovery.hpp for the
// design): a Lock or RLock is taken over by the next acquire() (after at most about
// 100 ms of waiting); a BoundedSemaphore gets back the units the dead process held; a
// plain Semaphore, as Python's, gets nothing back (an acquire may mean "took an item");
// a dead Condition waiter never blocks notify() nor takes a live waiter's wake-up; a
// Barrier party that dies inside wait() breaks the barrier. A lock taken over is held by
// the new owner as if the dead one had released it; whatever data the lock protected may
// be half-updated, exactly as the dead process left it.
//
// Under spawn and forkserver, a lock (any of these) passed as a Process argument or a
// pool initarg reaches the child as the same object: its segment's fd is passed along
// (detail/reduction.hpp). A Barrier with an action cannot be passed so: the action is
// code and state of this process.
//
// Who counts as the holder: for Lock and RLock, the thread that acquired (so a Lock
// held by a thread that has since ended is taken over too, where Python's would stay
// locked until someone released it); for a BoundedSemaphore, the process.
#pragma once

#include <chrono>
#include <climits>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <variant>

#include "context.hpp"
#include "detail/shared_object.hpp"
#include "detail/sync.hpp"
#include "errors.hpp"

namespace multiprocessing {

namespace detail {

// acquire(), acquire(block), acquire(timeout), acquire(block, timeout), and the
// Lockable / TimedLockable names std::lock_guard and std::unique_lock use, for every
// lock-like class, from its `bool acquire_until(const Deadline&)`.
template <class Self>
class Acquirable {
public:
    bool acquire(bool block = true) { return self().acquire_until(block ? Deadline{} : Deadline::now()); }
    bool acquire(Timeout timeout) { return self().acquire_until(Deadline(timeout)); }
    // Python's acquire(block, timeout): the timeout only counts when blocking.
    bool acquire(bool block, Timeout timeout) { return block ? acquire(timeout) : acquire(false); }

    void lock() { acquire(); }
    bool try_lock() { return acquire(false); }
    template <class Rep, class Period>
    bool try_lock_for(std::chrono::duration<Rep, Period> d) {
        return acquire(std::chrono::duration_cast<Timeout>(d));
    }
    template <class C, class D>
    bool try_lock_until(std::chrono::time_point<C, D> t) {
        return try_lock_for(t - C::now());
    }
    void unlock() { self().release(); }

private:
    Self& self() { return static_cast<Self&>(*this); }
};

}  // namespace detail

// A non-recursive lock. Any thread of any process may release it (as Python's).
class Lock : public detail::Acquirable<Lock> {
public:
    static constexpr bool is_process_shared_handle = true;

    Lock() : state_(detail::SharedBlock<detail::OwnerLock>::create(0, "mp-lock")) {}

    using Acquirable::acquire;
    bool acquire_until(const detail::Deadline& deadline) { return state_->acquire(deadline); }
    void release() {
        if (!state_->release()) throw ValueError("Lock.release: the lock is not acquired");
    }

    // The calling thread holds it (Python's _is_mine, used by Condition).
    bool held_by_me() const noexcept { return state_->held_by_me(); }

    using reduced_type = detail::ReducedBlock;
    reduced_type reduce(detail::PassedFds& fds) const { return state_.reduce(fds); }
    static Lock rebuild(const reduced_type& r) { return Lock(decltype(state_)::rebuild(r)); }

private:
    friend class Condition;
    explicit Lock(detail::SharedBlock<detail::OwnerLock> state) : state_(std::move(state)) {}
    detail::SharedBlock<detail::OwnerLock> state_;
};

// A lock its holding thread may take again; it is free once released as often.
class RLock : public detail::Acquirable<RLock> {
public:
    static constexpr bool is_process_shared_handle = true;

    RLock() : state_(detail::SharedBlock<detail::RecursiveLock>::create(0, "mp-rlock")) {}

    using Acquirable::acquire;
    bool acquire_until(const detail::Deadline& deadline) { return state_->acquire(deadline); }
    void release() {
        if (!state_->release())
            throw ValueError("RLock.release: this thread does not hold the lock (only its owner may release it)");
    }

    bool held_by_me() const noexcept { return state_->owner.held_by_me(); }

    using reduced_type = detail::ReducedBlock;
    reduced_type reduce(detail::PassedFds& fds) const { return state_.reduce(fds); }
    static RLock rebuild(const reduced_type& r) { return RLock(decltype(state_)::rebuild(r)); }

private:
    friend class Condition;
    explicit RLock(detail::SharedBlock<detail::RecursiveLock> state) : state_(std::move(state)) {}
    detail::SharedBlock<detail::RecursiveLock> state_;
};

class Semaphore : public detail::Acquirable<Semaphore> {
public:
    static constexpr bool is_process_shared_handle = true;

    explicit Semaphore(int value = 1) : Semaphore(value, UINT32_MAX, "Semaphore") {}

    using Acquirable::acquire;
    bool acquire_until(const detail::Deadline& deadline) { return state_->acquire(deadline); }
    void release() {
        if (!state_->release())
            throw ValueError("BoundedSemaphore.release: released too many times (above its initial value " +
                             std::to_string(state_->bound) + ")");
    }
    // A snapshot, as Python's get_value() is.
    int get_value() const noexcept { return static_cast<int>(state_->get_value()); }

    using reduced_type = detail::ReducedBlock;
    reduced_type reduce(detail::PassedFds& fds) const { return state_.reduce(fds); }
    static Semaphore rebuild(const reduced_type& r) { return Semaphore(adopt(r)); }

protected:
    Semaphore(int value, std::uint32_t bound, const char* what)
        : state_(make(value, bound == UINT32_MAX ? UINT32_MAX : static_cast<std::uint32_t>(value), what)) {}
    explicit Semaphore(detail::SharedBlock<detail::CountingSemaphore> state) : state_(std::move(state)) {}
    static detail::SharedBlock<detail::CountingSemaphore> adopt(const reduced_type& r) {
        return detail::SharedBlock<detail::CountingSemaphore>::rebuild(r);
    }

private:
    static detail::SharedBlock<detail::CountingSemaphore> make(int value, std::uint32_t bound, const char* what) {
        using CS = detail::CountingSemaphore;
        if (value < 0) throw ValueError(std::string(what) + ": the initial value must be >= 0");
        // Each unit of a BoundedSemaphore is a slot in shared memory (detail/sync.hpp).
        if (bound != CS::unbounded && bound > CS::max_bound)
            throw ValueError(std::string(what) + ": the initial value " + std::to_string(value) +
                             " is above the limit of " + std::to_string(CS::max_bound) +
                             " units (each unit is recorded in shared memory so that a dying holder's "
                             "units come back); use a Semaphore for a larger count");
        return detail::SharedBlock<CS>::create(CS::extra_bytes(bound), "mp-semaphore",
                                               static_cast<std::uint32_t>(value), bound);
    }
    detail::SharedBlock<detail::CountingSemaphore> state_;
};

// A Semaphore whose release() above the initial value throws ValueError.
class BoundedSemaphore : public Semaphore {
public:
    explicit BoundedSemaphore(int value = 1) : Semaphore(value, 0, "BoundedSemaphore") {}

    // The bound lives in the shared state, so the rebuilt handle keeps it.
    static BoundedSemaphore rebuild(const reduced_type& r) { return BoundedSemaphore(adopt(r)); }

private:
    explicit BoundedSemaphore(detail::SharedBlock<detail::CountingSemaphore> state) : Semaphore(std::move(state)) {}
};

// A condition variable over a Lock or an RLock (its own RLock by default, as Python's).
class Condition : public detail::Acquirable<Condition> {
public:
    static constexpr bool is_process_shared_handle = true;

    Condition() : Condition(RLock()) {}
    explicit Condition(Lock lock) : lock_(std::move(lock)), state_(make_state()) {}
    explicit Condition(RLock lock) : lock_(std::move(lock)), state_(make_state()) {}

    using Acquirable::acquire;
    bool acquire_until(const detail::Deadline& deadline) {
        return std::visit([&](auto& l) { return l.acquire_until(deadline); }, lock_);
    }
    void release() {
        std::visit([](auto& l) { l.release(); }, lock_);
    }

    // Releases the lock, sleeps until notified, retakes the lock. wait(timeout) returns
    // false if it timed out (it has retaken the lock either way).
    bool wait() { return wait_until(detail::Deadline{}); }
    bool wait(Timeout timeout) { return wait_until(detail::Deadline(timeout)); }

    // Waits until pred() holds; returns its last value (false: timed out).
    template <class Predicate>
    bool wait_for(Predicate pred) {
        return wait_for_until(pred, detail::Deadline{});
    }
    template <class Predicate>
    bool wait_for(Predicate pred, Timeout timeout) {
        return wait_for_until(pred, detail::Deadline(timeout));
    }

    // Wakes up to n of the threads waiting now. Like Python's, it returns once they have
    // taken their wake-ups, so that none goes to a thread that starts waiting later.
    void notify(int n = 1) {
        require_held("notify");
        if (n > 0) state_->notify(static_cast<std::uint32_t>(n));
    }
    void notify_all() { notify(INT_MAX); }

    struct reduced_type {
        bool recursive;  // the lock is an RLock
        detail::ReducedBlock lock;
        detail::ReducedBlock state;
    };
    reduced_type reduce(detail::PassedFds& fds) const {
        const bool recursive = std::holds_alternative<RLock>(lock_);
        auto lock = std::visit([&](const auto& l) { return l.reduce(fds); }, lock_);
        return {recursive, lock, state_.reduce(fds)};
    }
    static Condition rebuild(const reduced_type& r) {
        auto state = decltype(state_)::rebuild(r.state);
        if (r.recursive) return Condition(RLock::rebuild(r.lock), std::move(state));
        return Condition(Lock::rebuild(r.lock), std::move(state));
    }

private:
    template <class L>
    Condition(L lock, detail::SharedBlock<detail::ConditionState> state)
        : lock_(std::move(lock)), state_(std::move(state)) {}
    static detail::SharedBlock<detail::ConditionState> make_state() {
        return detail::SharedBlock<detail::ConditionState>::create(0, "mp-condition");
    }
    void require_held(const char* what) const {
        const bool held = std::visit([](const auto& l) { return l.held_by_me(); }, lock_);
        if (!held)
            throw ValueError(std::string("Condition.") + what +
                             ": the calling thread must hold the condition's lock (acquire it first)");
    }
    bool wait_until(const detail::Deadline& deadline) {
        require_held("wait");
        if (auto* rlock = std::get_if<RLock>(&lock_)) {
            auto& r = *rlock->state_;
            std::uint32_t depth = 0;
            return state_->wait(deadline, [&] { depth = r.release_all(); }, [&] { r.reacquire(depth); });
        }
        auto& l = *std::get<Lock>(lock_).state_;
        return state_->wait(deadline, [&] { l.release(); }, [&] { l.acquire(detail::Deadline{}); });
    }
    template <class Predicate>
    bool wait_for_until(Predicate& pred, const detail::Deadline& deadline) {
        bool result = pred();
        while (!result) {
            if (deadline.expired()) break;
            wait_until(deadline);
            result = pred();
        }
        return result;
    }

    std::variant<RLock, Lock> lock_;
    detail::SharedBlock<detail::ConditionState> state_;
};

class Event {
public:
    static constexpr bool is_process_shared_handle = true;

    Event() : state_(detail::SharedBlock<detail::EventState>::create(0, "mp-event")) {}

    bool is_set() const noexcept { return state_->is_set(); }
    void set() noexcept { state_->set(); }
    void clear() noexcept { state_->clear(); }
    // True once set; wait(timeout) returns false if it ran out first.
    bool wait() { return state_->wait(detail::Deadline{}); }
    bool wait(Timeout timeout) { return state_->wait(detail::Deadline(timeout)); }

    using reduced_type = detail::ReducedBlock;
    reduced_type reduce(detail::PassedFds& fds) const { return state_.reduce(fds); }
    static Event rebuild(const reduced_type& r) { return Event(decltype(state_)::rebuild(r)); }

private:
    explicit Event(detail::SharedBlock<detail::EventState> state) : state_(std::move(state)) {}
    detail::SharedBlock<detail::EventState> state_;
};

namespace detail {

// Python's threading.Barrier, with its lock and condition in shared memory. Each party
// inside wait() (counted in `count`) also holds one member slot (after this struct, one
// per party): its thread's identity, claimed and freed under the lock together with
// `count`. Waiters look at the slots every barrier_check_interval; a dead party's slot is
// freed (one CAS), and the barrier breaks, so no one waits for a party that cannot come.
struct alignas(8) BarrierState {
    enum : std::int32_t { filling = 0, draining = 1, resetting = -1, broken = -2 };
    static constexpr std::uint32_t max_parties = 65536;

    explicit BarrierState(std::uint32_t n) : parties(n) {
        for (std::uint32_t i = 0; i < parties; ++i) ::new (&members()[i]) std::atomic<std::uint64_t>(0);
    }
    static std::size_t extra_bytes(std::uint32_t n) noexcept { return std::size_t(n) * sizeof(std::uint64_t); }
    std::atomic<std::uint64_t>* members() noexcept {
        return std::launder(reinterpret_cast<std::atomic<std::uint64_t>*>(this + 1));
    }

    OwnerLock lock;
    ConditionState cond;
    std::int32_t state = filling;   // guarded by lock
    std::uint32_t count = 0;        // guarded by lock: the members' slots in use
    std::int64_t last_check_ns = 0; // guarded by lock: steady clock of the last look at the slots
    const std::uint32_t parties;
};

// How often waiters on a barrier look for parties that died.
inline constexpr std::chrono::milliseconds barrier_check_interval{200};

}  // namespace detail

class Barrier {
public:
    static constexpr bool is_process_shared_handle = true;

    // `action` runs in one of the waiters (the last to arrive) before any is released;
    // `timeout` is the default for wait().
    explicit Barrier(int parties, std::function<void()> action = {}, std::optional<Timeout> timeout = {})
        : state_(make(parties)), action_(std::move(action)), default_timeout_(timeout) {}

    // Returns this waiter's arrival index, 0 .. parties-1. Throws BrokenBarrierError if
    // the barrier is or becomes broken, aborted or reset while waiting, or if the wait
    // times out (which breaks it for everyone, as in Python), or if a party dies inside
    // wait() (the others learn it within about barrier_check_interval).
    int wait() { return wait_until(detail::Deadline::after(default_timeout_)); }
    int wait(Timeout timeout) { return wait_until(detail::Deadline(timeout)); }

    // Back to the empty state; waiters now waiting get BrokenBarrierError.
    void reset() {
        Guard g(*state_);
        auto& s = *state_;
        if (s.count > 0) {
            if (s.state == S::filling || s.state == S::broken) s.state = S::resetting;
        } else {
            s.state = S::filling;
        }
        s.cond.notify(UINT32_MAX);
    }
    // Breaks it: current and future waiters get BrokenBarrierError until reset().
    void abort() {
        Guard g(*state_);
        break_barrier();
    }

    int parties() const noexcept { return static_cast<int>(state_->parties); }
    int n_waiting() const {
        Guard g(*state_);
        return state_->state == S::filling ? static_cast<int>(state_->count) : 0;
    }
    bool broken() const {
        Guard g(*state_);
        return state_->state == S::broken;
    }

    // The action cannot cross (it is code and state of this process); the default
    // timeout does.
    struct reduced_type {
        detail::ReducedBlock state;
        bool has_timeout;
        double timeout_seconds;
    };
    reduced_type reduce(detail::PassedFds& fds) const {
        if (action_)
            throw ValueError(
                "Barrier: a barrier with an action cannot be passed to a process started by spawn or forkserver "
                "(the action is code of this process); use the fork start method, or a barrier without an action "
                "and run the action after wait() where it returns 0");
        return {state_.reduce(fds), default_timeout_.has_value(),
                default_timeout_ ? default_timeout_->count() : 0.0};
    }
    static Barrier rebuild(const reduced_type& r) {
        std::optional<Timeout> timeout;
        if (r.has_timeout) timeout = Timeout(r.timeout_seconds);
        return Barrier(decltype(state_)::rebuild(r.state), timeout);
    }

private:
    Barrier(detail::SharedBlock<detail::BarrierState> state, std::optional<Timeout> timeout)
        : state_(std::move(state)), default_timeout_(timeout) {}
    using S = detail::BarrierState;
    struct Guard {
        explicit Guard(S& s) : s_(s) { Barrier::lock(s_); }
        ~Guard() { s_.lock.release(); }
        S& s_;
    };

    // A holder of the barrier's lock that died may have left `count` and the slots out of
    // step, and the others waiting for it: count from the slots again, and break.
    static void lock(S& s) {
        bool recovered = false;
        s.lock.acquire(detail::Deadline{}, &recovered);
        if (!recovered) return;
        check_members(s, true);
        s.count = 0;
        for (std::uint32_t i = 0; i < s.parties; ++i)
            s.count += s.members()[i].load(std::memory_order_relaxed) != 0;
        if (s.state == S::filling) break_barrier(s);
        else if (s.count == 0 && s.state != S::broken) finish_round(s);
    }

    // Frees the slots of dead parties (under the lock) at most every
    // barrier_check_interval unless forced; a death breaks a filling barrier.
    static void check_members(S& s, bool force) {
        const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     detail::Clock::now().time_since_epoch()).count();
        if (!force && now - s.last_check_ns < std::chrono::nanoseconds(detail::barrier_check_interval).count()) return;
        s.last_check_ns = now;
        std::uint32_t dead = 0;
        for (std::uint32_t i = 0; i < s.parties; ++i) {
            auto& m = s.members()[i];
            std::uint64_t v = m.load(std::memory_order_relaxed);
            // relaxed: the slot is guarded by the lock; the CAS only keeps one freer.
            if (v != 0 && !detail::identity_alive(v) &&
                m.compare_exchange_strong(v, 0, std::memory_order_relaxed))
                ++dead;
        }
        if (!dead) return;
        s.count -= std::min(dead, s.count);
        if (s.state == S::filling) {
            break_barrier(s);
        } else if (s.count == 0 && (s.state == S::draining || s.state == S::resetting)) {
            // The round was over for it already: only its leaving was missing.
            finish_round(s);
        }
    }

    static detail::SharedBlock<S> make(int parties) {
        if (parties < 1) throw ValueError("Barrier: parties must be at least 1");
        if (static_cast<std::uint32_t>(parties) > S::max_parties)
            throw ValueError("Barrier: " + std::to_string(parties) + " parties is above the limit of " +
                             std::to_string(S::max_parties) + " (each party inside wait() is recorded in shared memory)");
        return detail::SharedBlock<S>::create(S::extra_bytes(static_cast<std::uint32_t>(parties)), "mp-barrier",
                                              static_cast<std::uint32_t>(parties));
    }

    // Sleeps on the condition until pred() or the deadline; false if it ran out. Wakes
    // every barrier_check_interval to look for dead parties.
    template <class Pred>
    bool cond_wait_for(Pred pred, const detail::Deadline& deadline) {
        auto& s = *state_;
        while (!pred()) {
            if (deadline.expired()) return pred();
            const detail::Deadline slice(std::chrono::duration<double>(deadline.sleep_for(detail::barrier_check_interval)));
            s.cond.wait(slice, [&] { s.lock.release(); }, [&] { lock(s); });
            check_members(s, false);
        }
        return true;
    }

    int wait_until(const detail::Deadline& deadline) {
        Guard g(*state_);
        auto& s = *state_;
        // Let a previous round drain, or a reset finish, before joining.
        cond_wait_for([&] { return s.state != S::draining && s.state != S::resetting; }, detail::Deadline{});
        if (s.state == S::broken) throw BrokenBarrierError("Barrier.wait: the barrier is broken");
        // Claimed together with count++ (under the lock): a party is counted exactly while
        // its slot names it.
        std::uint32_t member = 0;
        while (member < s.parties && s.members()[member].load(std::memory_order_relaxed) != 0) ++member;
        if (member == s.parties) {  // cannot happen while count matches the slots
            break_barrier(s);
            throw BrokenBarrierError("Barrier.wait: more parties inside wait() than the barrier has");
        }
        s.members()[member].store(detail::thread_identity(), std::memory_order_relaxed);
        const auto index = s.count++;
        try {
            if (index + 1 == s.parties) {
                release_all();
            } else if (!cond_wait_for([&] { return s.state != S::filling; }, deadline)) {
                break_barrier(s);
                throw BrokenBarrierError("Barrier.wait: timed out, which breaks the barrier for every waiter");
            } else if (s.state < 0) {
                throw BrokenBarrierError(
                    "Barrier.wait: the barrier was broken (aborted, reset, or a party died) while waiting");
            }
        } catch (...) {
            leave(member);
            throw;
        }
        leave(member);
        return static_cast<int>(index);
    }

    void release_all() {
        try {
            if (action_) action_();
        } catch (...) {
            break_barrier(*state_);
            throw;
        }
        state_->state = S::draining;
        state_->cond.notify(UINT32_MAX);
    }
    void leave(std::uint32_t member) {
        auto& s = *state_;
        // A checker may have found us dead and freed the slot only if we were: we are not.
        if (s.members()[member].exchange(0, std::memory_order_relaxed) == 0) return;
        if (--s.count == 0 && (s.state == S::resetting || s.state == S::draining)) finish_round(s);
    }
    static void finish_round(S& s) {
        s.state = S::filling;
        s.cond.notify(UINT32_MAX);
    }
    static void break_barrier(S& s) {
        s.state = S::broken;
        s.cond.notify(UINT32_MAX);
    }
    void break_barrier() { break_barrier(*state_); }

    detail::SharedBlock<S> state_;
    std::function<void()> action_;  // lives in each process (a fork child has its copy)
    std::optional<Timeout> default_timeout_;
};

// Context's factories (declared in context.hpp).
template <class... A>
auto Context::Lock(A&&... args) const {
    return multiprocessing::Lock(std::forward<A>(args)...);
}
template <class... A>
auto Context::RLock(A&&... args) const {
    return multiprocessing::RLock(std::forward<A>(args)...);
}
template <class... A>
auto Context::Semaphore(A&&... args) const {
    return multiprocessing::Semaphore(std::forward<A>(args)...);
}
template <class... A>
auto Context::BoundedSemaphore(A&&... args) const {
    return multiprocessing::BoundedSemaphore(std::forward<A>(args)...);
}
template <class... A>
auto Context::Condition(A&&... args) const {
    return multiprocessing::Condition(std::forward<A>(args)...);
}
template <class... A>
auto Context::Event(A&&... args) const {
    return multiprocessing::Event(std::forward<A>(args)...);
}
template <class... A>
auto Context::Barrier(A&&... args) const {
    return multiprocessing::Barrier(std::forward<A>(args)...);
}

}  // namespace multiprocessing
