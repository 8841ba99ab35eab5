// When a timed wait ends. Every blocking call has a timed form (API.md), and they all
// count down the same way: a Deadline is made once from the caller's timeout and asked,
// at each wake-up, whether it has passed and how long the next sleep may be.
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <optional>
#include <string>

#include <poll.h>

namespace multiprocessing::detail {

using Clock = std::chrono::steady_clock;

class Deadline {
public:
    // Never: an untimed wait.
    Deadline() = default;
    // `timeout` from now. Zero, negative or NaN means "do not wait" (as in Python); one
    // too large for the clock (beyond ~30 years) means never.
    explicit Deadline(std::chrono::duration<double> timeout) {
        const double seconds = timeout.count();
        if (!(seconds > 0))
            at_ = Clock::now();
        else if (seconds <= 1e9)
            at_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(timeout);
    }
    static Deadline now() { return Deadline(std::chrono::duration<double>(0)); }
    // Python's timeout=None is no deadline.
    static Deadline after(std::optional<std::chrono::duration<double>> timeout) {
        return timeout ? Deadline(*timeout) : Deadline();
    }

    bool expired() const { return at_ && Clock::now() >= *at_; }
    bool timed() const noexcept { return at_.has_value(); }
    const std::optional<Clock::time_point>& at() const noexcept { return at_; }
    // What is left (zero once passed), or nothing for an untimed wait.
    std::optional<std::chrono::nanoseconds> remaining() const {
        if (!at_) return std::nullopt;
        return std::max(std::chrono::nanoseconds(0),
                        std::chrono::duration_cast<std::chrono::nanoseconds>(*at_ - Clock::now()));
    }
    // How long to sleep next: until the deadline, but at most `cap`.
    std::chrono::nanoseconds sleep_for(std::chrono::nanoseconds cap) const {
        const auto left = remaining();
        return left ? std::min(*left, cap) : cap;
    }

private:
    std::optional<Clock::time_point> at_;
};

// ::ppoll until one of `fds` has an event or the deadline passes, retrying after a signal
// with the time that is left (never the whole timeout again). Returns the number of fds
// with events (0: the deadline passed), or -1 with errno for an error other than EINTR.
inline int poll_until(pollfd* fds, nfds_t n, const Deadline& deadline) noexcept {
    for (;;) {
        timespec left{};
        timespec* wait = nullptr;
        if (const auto remaining = deadline.remaining()) {
            const auto ns = remaining->count();
            left.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
            left.tv_nsec = static_cast<long>(ns % 1'000'000'000);
            wait = &left;
        }
        const int r = ::ppoll(fds, n, wait, nullptr);
        if (r >= 0 || errno != EINTR) return r;
    }
}

// "2.5 s", for error messages about a timeout.
inline std::string describe_seconds(std::chrono::duration<double> timeout) {
    char text[64];
    std::snprintf(text, sizeof text, "%g s", timeout.count());
    return text;
}

}  // namespace multiprocessing::detail
