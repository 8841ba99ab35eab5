// Process-shared wait/wake on a 32-bit atomic word that lives in shared memory.
//
// The words are waited on with the shared (non-PRIVATE) futex operations, since the
// waker may be another process mapping the same page.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <ctime>
#include <optional>

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace multiprocessing::detail {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "futex words must be plain lock-free 32-bit atomics");

inline std::uint32_t* futex_address(std::atomic<std::uint32_t>& word) noexcept {
    return reinterpret_cast<std::uint32_t*>(&word);
}

// Sleeps while `word == expected`, at most `timeout` (none: no limit). Returns on a
// wake, a change of the word, a signal or the timeout; callers re-check their condition.
inline void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                       std::optional<std::chrono::nanoseconds> timeout = std::nullopt) noexcept {
    timespec ts{};
    timespec* tsp = nullptr;
    if (timeout) {
        auto ns = std::max<std::int64_t>(0, timeout->count());
        ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
        tsp = &ts;
    }
    ::syscall(SYS_futex, futex_address(word), FUTEX_WAIT, expected, tsp, nullptr, 0);
}

inline void futex_wake(std::atomic<std::uint32_t>& word, int count = INT_MAX) noexcept {
    ::syscall(SYS_futex, futex_address(word), FUTEX_WAKE, count, nullptr, nullptr, 0);
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// How long an idle side polls before it sleeps. Polling keeps the round trip free of
// system calls while the other side is busy; sleeping keeps an idle pool off the CPU.
// The machine may have fewer cores than busy threads, so after a short burst of
// pause-spinning the poller yields its core instead of burning its time slice.
struct SpinPolicy {
    int pause_spins = 200;                     // a few µs of pause
    std::chrono::microseconds yield_for{50};                 // then sched_yield polling
};

// Polls `ready()` per `policy`; returns true as soon as it holds, false when the
// polling budget is spent (the caller then sleeps on its futex and polls again).
template <class Ready>
bool spin_until(Ready&& ready, const SpinPolicy& policy = {}) {
    for (int i = 0; i < policy.pause_spins; ++i) {
        if (ready()) return true;
        cpu_relax();
    }
    const auto until = std::chrono::steady_clock::now() + policy.yield_for;
    do {
        if (ready()) return true;
        ::sched_yield();
    } while (std::chrono::steady_clock::now() < until);
    return ready();
}

}  // namespace multiprocessing::detail
