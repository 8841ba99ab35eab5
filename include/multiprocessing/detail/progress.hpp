// The progress bar of a pool's map family (`.progress = true`): drawn on stderr by the
// parent as results come back, never by a worker.
//
// On a terminal it redraws one line in place ('\r'), at most ten times a second, and
// ends it with a newline. Anywhere else (a log file, a pipe, CI) a line per redraw would
// flood the log, so it writes a plain line at most every two seconds, plus a last one.
#pragma once

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace multiprocessing::detail {

// What one line shows. Kept apart from the drawing so that the text can be tested
// without a clock or a terminal.
struct ProgressState {
    std::string_view label;                 // "map", "imap", ...
    std::uint64_t done = 0;                 // items, not chunks
    std::optional<std::uint64_t> total;     // empty: a lazy input of unknown length
    double elapsed = 0;                     // seconds since the call began
    bool final = false;                     // the last line: elapsed time instead of ETA
};

// "0:07", "12:34", "1:02:03".
inline std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "?";
    const auto s = static_cast<std::uint64_t>(std::llround(seconds));
    if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    return fmt::format("{}:{:02}", s / 60, s % 60);
}

// Three significant digits or so, whatever the scale: "0.25 items/s", "131 items/s",
// "48.2k items/s".
inline std::string format_rate(double per_second) {
    if (!std::isfinite(per_second) || !(per_second > 0)) return "? items/s";
    if (per_second >= 1e6) return fmt::format("{:.1f}M items/s", per_second / 1e6);
    if (per_second >= 1e4) return fmt::format("{:.1f}k items/s", per_second / 1e3);
    if (per_second >= 100) return fmt::format("{:.0f} items/s", per_second);
    if (per_second >= 10) return fmt::format("{:.1f} items/s", per_second);
    return fmt::format("{:.2f} items/s", per_second);
}

namespace progress_text {
// The average rate since the start: steadier than a recent-window rate for the uneven
// arrivals of chunked results, and what the ETA is computed from.
inline double rate(const ProgressState& s) { return s.elapsed > 0 && s.done > 0 ? s.done / s.elapsed : 0.0; }

inline std::string head(const ProgressState& s) {
    if (!s.total) return std::string(s.label);
    const std::uint64_t percent = *s.total == 0 ? 100 : std::min<std::uint64_t>(100, s.done * 100 / *s.total);
    return fmt::format("{} {:3}%", s.label, percent);
}

inline std::string tail(const ProgressState& s) {
    const double r = rate(s);
    if (!s.total) return fmt::format("{} done  {}  elapsed {}", s.done, format_rate(r), format_duration(s.elapsed));
    std::string when;
    if (s.final)
        when = "elapsed " + format_duration(s.elapsed);
    else if (s.done >= *s.total)
        when = "ETA 0:00";
    else
        when = "ETA " + (r > 0 ? format_duration(static_cast<double>(*s.total - s.done) / r) : std::string("?"));
    return fmt::format("{}/{}  {}  {}", s.done, *s.total, format_rate(r), when);
}
}  // namespace progress_text

// The plain line (no bar), as written when stderr is not a terminal:
// "map  45% 450/1000  131 items/s  ETA 0:04".
inline std::string format_progress(const ProgressState& s) {
    return progress_text::head(s) + ' ' + progress_text::tail(s);
}

// The terminal line, fitted to `columns` (one column is kept free: writing the last
// one makes some terminals wrap, and '\r' would then redraw on the wrong row):
// "map  45% [#########-----------] 450/1000  131 items/s  ETA 0:04". The bar shrinks,
// then goes, then the text is cut, as the terminal narrows.
inline std::string format_progress_bar(const ProgressState& s, std::size_t columns) {
    constexpr std::size_t max_bar = 30, min_bar = 5;
    const std::size_t room = columns > 1 ? columns - 1 : 0;
    const std::string head = progress_text::head(s), tail = progress_text::tail(s);
    const std::size_t text = head.size() + 1 + tail.size();
    if (!s.total || text + 3 + min_bar > room) {
        std::string line = head + ' ' + tail;
        if (line.size() > room) line.resize(room);
        return line;
    }
    const std::size_t width = std::min(max_bar, room - text - 3);
    const std::uint64_t total = *s.total;
    const std::size_t filled =
        total == 0 ? width : static_cast<std::size_t>(std::min<std::uint64_t>(s.done, total) * width / total);
    return fmt::format("{} [{}{}] {}", head, std::string(filled, '#'), std::string(width - filled, '-'), tail);
}

// Where and how a bar draws; tests pass a memfd, a forced terminal mode and a fake clock.
struct ProgressOutput {
    int fd = STDERR_FILENO;
    std::optional<bool> terminal = {};                 // empty: isatty(fd), once, when the bar is made
    std::optional<std::size_t> columns = {};           // empty: the terminal's width (80 if unknown)
    std::chrono::steady_clock::time_point (*now)() = &std::chrono::steady_clock::now;
};

// Counts finished items and redraws, throttled, from whichever thread advances it.
// advance() is cheap enough to call per item (the pool calls it per chunk): an atomic
// add and a compare. The clock is read only every few items (a read costs ~40 ns on a VM's
// kvm-clock, a third of imap's own cost per item), and only a due redraw takes the
// mutex and writes.
class ProgressBar {
public:
    using Clock = std::chrono::steady_clock;
    static constexpr Clock::duration terminal_interval = std::chrono::milliseconds(100);
    static constexpr Clock::duration log_interval = std::chrono::seconds(2);

    ProgressBar(std::string label, std::optional<std::uint64_t> total, ProgressOutput output = {})
        : label_(std::move(label)),
          total_(total),
          output_(output),
          terminal_(output.terminal.value_or(::isatty(output.fd) == 1)),
          columns_(output.columns.value_or(terminal_width(output.fd))),
          interval_(terminal_ ? terminal_interval : log_interval),
          start_(output.now()) {
        // relaxed, both: set before the bar is shared with any other thread.
        next_draw_.store((start_ + interval_).time_since_epoch().count(), std::memory_order_relaxed);
        last_clock_read_.store(start_.time_since_epoch().count(), std::memory_order_relaxed);
        // On a terminal, show at once that the work began (the first result may be slow).
        if (terminal_) {
            std::lock_guard lock(draw_mutex_);
            draw(start_, false);
        }
    }
    ProgressBar(const ProgressBar&) = delete;
    ProgressBar& operator=(const ProgressBar&) = delete;
    // A bar left unfinished (a path that forgot finish()) must not leave the cursor
    // mid-line.
    ~ProgressBar() { finish(); }

    void advance(std::uint64_t n = 1) noexcept {
        // relaxed: a plain count. A draw that races with it may show one chunk too few,
        // which the next draw corrects; finish() is called after the last advance by
        // something that already orders the two (the same thread, or the result slot),
        // and a single atomic's modifications are seen in order by coherence.
        const std::uint64_t done = done_.fetch_add(n, std::memory_order_relaxed) + n;
        // relaxed: a hint shared by the advancing threads; a stale value costs or saves
        // one clock read, nothing else.
        if (done < check_clock_at_.load(std::memory_order_relaxed)) return;
        const Clock::time_point now = output_.now();
        check_clock_at_.store(done + clock_stride(now), std::memory_order_relaxed);
        const Clock::rep ticks = now.time_since_epoch().count();
        // relaxed: only a hint that spares the mutex between draws; it is read again
        // under the mutex before drawing.
        if (ticks < next_draw_.load(std::memory_order_relaxed)) return;
        std::unique_lock lock(draw_mutex_, std::try_to_lock);
        // Another thread drawing right now shows (nearly) our count: no need to wait for it.
        if (!lock.owns_lock() || finished_) return;
        // relaxed: under draw_mutex_, which orders it with the other draws' stores.
        if (ticks < next_draw_.load(std::memory_order_relaxed)) return;
        // relaxed: the mutex publishes it to the next drawer; fast-path readers only
        // need some recent value.
        next_draw_.store((now + interval_).time_since_epoch().count(), std::memory_order_relaxed);
        draw(now, false);
    }

    // Draws the last line (and, on a terminal, the newline). Later calls, and later
    // advances, do nothing.
    void finish() noexcept {
        std::lock_guard lock(draw_mutex_);
        if (finished_) return;
        finished_ = true;
        draw(output_.now(), true);
    }

    std::uint64_t done() const noexcept {
        // relaxed: a snapshot of a count.
        return done_.load(std::memory_order_relaxed);
    }

private:
    // How many items may pass before the clock is read again. It doubles (up to 64)
    // while reads come less than an eighth of the redraw interval apart, and drops to 1
    // as soon as they do not: a fast stream reads the clock rarely, a slow one at every
    // item, and one that turns slow is drawn again at most 64 items later.
    std::uint64_t clock_stride(Clock::time_point now) noexcept {
        constexpr std::uint64_t max_stride = 64;
        // relaxed, both: hints that only the advancing threads share; a race between
        // two of them costs or saves a clock read, never a count or a draw.
        const Clock::time_point last{Clock::duration(
            last_clock_read_.exchange(now.time_since_epoch().count(), std::memory_order_relaxed))};
        const std::uint64_t stride =
            now - last < interval_ / 8 ? std::min(max_stride, 2 * stride_.load(std::memory_order_relaxed)) : 1;
        stride_.store(stride, std::memory_order_relaxed);
        return stride;
    }

    static std::size_t terminal_width(int fd) {
        winsize ws{};
        if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
        return 80;
    }

    // Called with draw_mutex_ held.
    void draw(Clock::time_point now, bool final) noexcept {
        try {
            const ProgressState state{label_, done(), total_, std::chrono::duration<double>(now - start_).count(),
                                      final};
            std::string out;
            if (terminal_) {
                const std::string line = format_progress_bar(state, columns_);
                out = '\r' + line;
                // Blank what a longer earlier line left to the right.
                if (line.size() < drawn_width_) out.append(drawn_width_ - line.size(), ' ');
                drawn_width_ = line.size();
                if (final) out += '\n';
            } else {
                out = format_progress(state) + '\n';
            }
            write_all(out);
        } catch (...) {
            // Out of memory while formatting: a progress line is not worth failing the map for.
        }
    }

    // One write per line, so that the line is not torn by other threads' stderr output.
    void write_all(std::string_view text) const noexcept {
        const int saved_errno = errno;  // the caller's errno is none of our business
        while (!text.empty()) {
            const ssize_t n = ::write(output_.fd, text.data(), text.size());
            if (n < 0) {
                if (errno == EINTR) continue;
                break;  // stderr closed (or non-blocking and full): drop the line, never fail the map
            }
            text.remove_prefix(static_cast<std::size_t>(n));
        }
        errno = saved_errno;
    }

    const std::string label_;
    const std::optional<std::uint64_t> total_;
    const ProgressOutput output_;
    const bool terminal_;
    const std::size_t columns_;
    const Clock::duration interval_;
    const Clock::time_point start_;
    std::atomic<std::uint64_t> done_{0};
    std::atomic<std::uint64_t> check_clock_at_{0};  // the count at which advance() next reads the clock
    std::atomic<std::uint64_t> stride_{1};          // see clock_stride()
    std::atomic<Clock::rep> last_clock_read_{0};    // set to start_ by the constructor
    std::atomic<Clock::rep> next_draw_{0};  // when the next redraw is due, as a time_since_epoch count
    std::mutex draw_mutex_;
    bool finished_ = false;        // guarded by draw_mutex_
    std::size_t drawn_width_ = 0;  // guarded by draw_mutex_: the terminal line's length
};

}  // namespace multiprocessing::detail
