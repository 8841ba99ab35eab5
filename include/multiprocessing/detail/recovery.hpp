// How a claim on a shared object survives the death of its claimant, for every
// primitive in sync.hpp. The design, in four points:
//
// 1. A claim is one word. Whoever holds something (a lock, a BoundedSemaphore unit, a
//    Condition waiter's registration, a Barrier party's place) is named by one 64-bit
//    identity, and the claim IS that identity stored in the word of the thing held: a
//    lock word, a unit's slot, a waiter's slot. Taking it is one CAS 0 -> identity;
//    giving it back one CAS identity -> 0. There is no separate record to keep in step
//    with a counter, so there is no instant at which the unit has moved but the record
//    has not (or the reverse).
//
// 2. An identity is never a bare pid. It is the task id (22 bits: pid_max is at most
//    2^22) plus the task's start time (field 22 of /proc/TID/stat, clock ticks since
//    boot, 41 bits: millions of years) packed into one word. A reused pid has another
//    start time, so it is another identity. Each process and thread reads its own start
//    time once and caches it (the caches are dropped in a fork child). Bit 31 is left
//    out of the identity: the word that holds it uses that bit as a flag (a lock's
//    "someone sleeps" bit, a Condition slot's "notified" bit), and the low 32 bits,
//    holding the task id and that flag, are the futex word (futex works on 32 bits).
//
// 3. An owner is found dead when /proc/TID/task/TID/stat is gone, is a zombie, or shows
//    another start time. Only a waiter that has waited `owner_check_interval` (counted
//    over its whole wait, not one uninterrupted sleep, so steady traffic does not hide
//    a dead owner) asks; the fast paths never read /proc.
//
// 4. Undoing a claim is one CAS of the word from the dead identity to 0 (or to the
//    recoverer's own identity, for a lock). A dead process writes nothing more, so its
//    identity stays in the word until that CAS, and exactly one recoverer's CAS wins. A
//    recoverer killed at any instruction either has not done its CAS (the claim is still
//    there, and the next recoverer finds it) or has (the unit is free, or held by the
//    recoverer, whose own death is then recovered the same way). Nothing is ever erased
//    in one step and given back in another. Counters beside the claims (a semaphore's
//    release sequence, a Condition's acknowledgement count) are only futex words:
//    losing an increment costs a sleeper at most one check interval, never a unit.
//
// What this does not cover: a holder that lived less than one clock tick (10 ms) and
// whose pid was reused within that tick (start times are in ticks; pids are handed out
// in turn, so a reuse needs the pid range to wrap first); processes in different PID
// namespaces sharing an object (a
// task id means nothing across them), and a system without /proc (then no one is ever
// found dead by start time; a task that no longer exists is still found by kill(0)).
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <optional>

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shared_object.hpp"

namespace multiprocessing::detail {

static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  sizeof(std::atomic<std::uint64_t>) == sizeof(std::uint64_t),
              "claims are 64-bit atomics in shared memory: they must be lock-free plain words");

// How long a blocked waiter waits (in total) before it asks whether the owner lives.
inline constexpr std::chrono::milliseconds owner_check_interval{100};

// ---- identities ----------------------------------------------------------------------------

using Identity = std::uint64_t;

inline constexpr std::uint64_t identity_flag = 0x80000000u;  // never part of an identity
inline constexpr std::uint64_t task_mask = 0x3fffffu;        // 22 bits

inline constexpr Identity pack_identity(pid_t task, std::uint64_t start) noexcept {
    return (static_cast<std::uint64_t>(task) & task_mask) | ((start & 0x1ff) << 22) | ((start >> 9) << 32);
}
inline constexpr pid_t identity_task(Identity id) noexcept { return static_cast<pid_t>(id & task_mask); }

struct TaskStat {
    bool exists = false;     // false: gone or a zombie
    bool readable = false;   // /proc answered
    std::uint64_t start = 0; // field 22
};

// Reads /proc/TID/task/TID/stat (valid for a process's main thread and for any other
// thread alike). Only on slow paths.
inline TaskStat read_task_stat(pid_t task) noexcept {
    TaskStat st;
    if (task <= 0) return st;
    char path[80];
    std::snprintf(path, sizeof path, "/proc/%d/task/%d/stat", static_cast<int>(task), static_cast<int>(task));
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ESRCH) {
            st.readable = true;
            return st;
        }
        // No /proc: fall back to kill(0), which cannot see pid reuse.
        st.exists = !(::kill(task, 0) != 0 && errno == ESRCH);
        return st;
    }
    char buf[1024];
    ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) {
        st.readable = true;  // a task that vanished while we read it
        return st;
    }
    buf[n] = '\0';
    // The command name in parentheses may itself hold ") ": the state follows the last ')'.
    const char* p = std::strrchr(buf, ')');
    if (!p || p[1] == '\0' || p[2] == '\0') {
        st.exists = true;
        return st;
    }
    st.readable = true;
    const char state = p[2];
    st.exists = state != 'Z' && state != 'X' && state != 'x';
    // Fields after the state: 4 (ppid) ... 22 (starttime): skip 19 separators from field 3.
    const char* q = p + 2;
    for (int field = 3; field < 22 && q; ++field) {
        q = std::strchr(q, ' ');
        if (q) ++q;
    }
    if (q) st.start = std::strtoull(q, nullptr, 10);
    return st;
}

// The one question recovery asks. A task that exists with another start time is a
// reused pid: the owner we know is dead.
inline bool identity_alive(Identity id) noexcept {
    const TaskStat st = read_task_stat(identity_task(id));
    if (!st.exists) return false;
    if (!st.readable) return true;  // no /proc: kill(0) said it exists
    return pack_identity(identity_task(id), st.start) == (id & ~identity_flag);
}

// The identity of `task` (this process or thread) as it is now. Cached by the callers
// below, in shared_object.hpp's caches, which a fork child drops.
inline Identity compute_identity(pid_t task) noexcept {
    install_identity_fork_handler();
    const TaskStat st = read_task_stat(task);
    return pack_identity(task, st.start);
}

// This thread, as a lock holder or a waiter. One thread-local load once computed.
inline Identity thread_identity() noexcept {
    Identity& id = thread_identity_cache();
    if (__builtin_expect(id == 0, 0)) id = compute_identity(current_tid());
    return id;
}

// This process, as a BoundedSemaphore holder (units belong to the process, as any of
// its threads may release them).
inline Identity process_identity() noexcept {
    // relaxed: every thread computes the same value; a race only repeats the read.
    Identity id = process_identity_cache().load(std::memory_order_relaxed);
    if (__builtin_expect(id == 0, 0)) {
        id = compute_identity(current_pid());
        process_identity_cache().store(id, std::memory_order_relaxed);
    }
    return id;
}

// ---- futex on a claim word's low half --------------------------------------------------------

// The low 32 bits of a 64-bit claim word (the task id and the flag bit), where the
// kernel compares for FUTEX_WAIT. The word is only ever written whole, by 64-bit
// atomics; the kernel's 32-bit read of its low half is atomic as well.
inline std::uint32_t* futex_low_half(std::atomic<std::uint64_t>& word) noexcept {
    auto* p = reinterpret_cast<std::uint32_t*>(&word);
    return std::endian::native == std::endian::little ? p : p + 1;
}

inline void futex_wait_low(std::atomic<std::uint64_t>& word, std::uint64_t expected,
                           std::chrono::nanoseconds timeout) noexcept {
    const auto ns = std::max<std::int64_t>(0, timeout.count());
    timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    ::syscall(SYS_futex, futex_low_half(word), FUTEX_WAIT, static_cast<std::uint32_t>(expected), &ts, nullptr, 0);
}

inline void futex_wake_low(std::atomic<std::uint64_t>& word, int count = INT_MAX) noexcept {
    ::syscall(SYS_futex, futex_low_half(word), FUTEX_WAKE, count, nullptr, nullptr, 0);
}

// ---- the waiter's clock --------------------------------------------------------------------

// Counts a waiter's whole wait, so that it asks about the owner every
// owner_check_interval however often it is woken in between.
class OwnerCheckClock {
public:
    bool due() noexcept {
        const auto now = std::chrono::steady_clock::now();
        if (now - last_ < owner_check_interval) return false;
        last_ = now;
        return true;
    }
    // The owner changed: a new owner gets a full interval.
    void restart() noexcept { last_ = std::chrono::steady_clock::now(); }

private:
    std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

}  // namespace multiprocessing::detail
