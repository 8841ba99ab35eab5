// Python's multiprocessing.util: the library's logger, get_logger() and log_to_stderr().
//
//     mp::log_to_stderr(mp::logging::INFO);   // [INFO/Process-1] child process calling self.run()
//     mp::get_logger().debug("{} items left", n);
//
// As in Python, the logger is silent until log_to_stderr() gives it somewhere to write:
// get_logger() alone prints nothing. Each record is one line in Python's default format
// for log_to_stderr(), '[%(levelname)s/%(processName)s] %(message)s', written with one
// write(2), so lines from several processes (or threads) sharing a stderr pipe do not
// interleave mid-line (a write of up to PIPE_BUF bytes to a pipe is atomic).
//
// There is one logger per process and it is plain process memory: a fork child (a
// Process or pool worker under the fork start method) inherits its level and its stderr
// output. A spawned child (the spawn start method) is a fresh run of the program and
// starts silent, as in Python, unless it calls log_to_stderr() itself.
//
// Undo log_to_stderr() with get_logger().remove_stderr_handler() and, to forget the
// level, get_logger().set_level(mp::logging::NOTSET).
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

#include <unistd.h>

#include <fmt/format.h>

#include "context.hpp"

namespace multiprocessing {

// Python's logging levels, with the two that multiprocessing.util adds.
namespace logging {
inline constexpr int NOTSET = 0;
inline constexpr int SUBDEBUG = 5;
inline constexpr int DEBUG = 10;
inline constexpr int INFO = 20;
inline constexpr int SUBWARNING = 25;
inline constexpr int WARNING = 30;
inline constexpr int ERROR = 40;
inline constexpr int CRITICAL = 50;
}  // namespace logging

// The "multiprocessing" logger. Messages are {fmt} format strings checked at compile
// time: get_logger().info("worker exiting after {} tasks", n). A disabled call costs one
// atomic load; its arguments are formatted only when the record is written. Logging
// never throws: a record that cannot be built (out of memory) is dropped.
class Logger {
public:
    Logger(const Logger&) = delete;
    Logger& operator=(const Logger&) = delete;

    static constexpr std::string_view name() noexcept { return "multiprocessing"; }

    // Python's setLevel(): records below `level` are dropped. NOTSET (the default) means
    // WARNING, the level Python's logger then inherits from the root logger.
    void set_level(int level) noexcept {
        std::uint64_t old = state_.load(std::memory_order_relaxed);
        // relaxed: the word is the whole state; nothing else is published with it.
        while (!state_.compare_exchange_weak(old, (old & stderr_bit) | static_cast<std::uint32_t>(level),
                                             std::memory_order_relaxed)) {
        }
    }
    int level() const noexcept { return level_of(state_.load(std::memory_order_relaxed)); }
    int effective_level() const noexcept { return effective(state_.load(std::memory_order_relaxed)); }

    // Whether a record at `level` would be written now: the logger has an output and
    // `level` reaches its effective level. (Python's isEnabledFor() looks at the level
    // only, but there a logger without a handler still falls back to printing.)
    bool is_enabled_for(int level) const noexcept {
        // relaxed: a filter, not a synchronization point; a thread that races with
        // set_level() may write or drop one record around the change, as in Python.
        const std::uint64_t s = state_.load(std::memory_order_relaxed);
        return (s & stderr_bit) && level >= effective(s);
    }

    // What log_to_stderr() attaches (idempotent), and how to detach it again.
    void add_stderr_handler() noexcept { state_.fetch_or(stderr_bit, std::memory_order_relaxed); }
    void remove_stderr_handler() noexcept { state_.fetch_and(~stderr_bit, std::memory_order_relaxed); }
    bool has_stderr_handler() const noexcept { return state_.load(std::memory_order_relaxed) & stderr_bit; }

    template <class... Args>
    void log(int level, fmt::format_string<Args...> format, Args&&... args) noexcept {
        if (is_enabled_for(level)) write_record(level, format, fmt::make_format_args(args...));
    }
    template <class... Args>
    void debug(fmt::format_string<Args...> format, Args&&... args) noexcept {
        log(logging::DEBUG, format, std::forward<Args>(args)...);
    }
    template <class... Args>
    void info(fmt::format_string<Args...> format, Args&&... args) noexcept {
        log(logging::INFO, format, std::forward<Args>(args)...);
    }
    template <class... Args>
    void warning(fmt::format_string<Args...> format, Args&&... args) noexcept {
        log(logging::WARNING, format, std::forward<Args>(args)...);
    }
    template <class... Args>
    void error(fmt::format_string<Args...> format, Args&&... args) noexcept {
        log(logging::ERROR, format, std::forward<Args>(args)...);
    }
    template <class... Args>
    void critical(fmt::format_string<Args...> format, Args&&... args) noexcept {
        log(logging::CRITICAL, format, std::forward<Args>(args)...);
    }

private:
    friend Logger& get_logger() noexcept;
    constexpr Logger() noexcept = default;

    // The low 32 bits hold the level, bit 32 whether stderr is attached: one word, so
    // is_enabled_for() is one load and no lock is ever held (a fork child may log even
    // if the fork happened in the middle of another thread's set_level()).
    static constexpr std::uint64_t stderr_bit = std::uint64_t(1) << 32;
    static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
                  "multiprocessing::Logger needs a lock-free 64-bit atomic, to stay usable in fork children");

    static int level_of(std::uint64_t s) noexcept { return static_cast<std::int32_t>(static_cast<std::uint32_t>(s)); }
    static int effective(std::uint64_t s) noexcept {
        const int l = level_of(s);
        return l == logging::NOTSET ? logging::WARNING : l;
    }
    static void append(fmt::memory_buffer& out, std::string_view s) { out.append(s.data(), s.data() + s.size()); }

    // Python's logging.getLevelName(), with multiprocessing's SUBDEBUG and SUBWARNING.
    static void append_level_name(fmt::memory_buffer& out, int level) {
        switch (level) {
            case logging::NOTSET: return append(out, "NOTSET");
            case logging::SUBDEBUG: return append(out, "SUBDEBUG");
            case logging::DEBUG: return append(out, "DEBUG");
            case logging::INFO: return append(out, "INFO");
            case logging::SUBWARNING: return append(out, "SUBWARNING");
            case logging::WARNING: return append(out, "WARNING");
            case logging::ERROR: return append(out, "ERROR");
            case logging::CRITICAL: return append(out, "CRITICAL");
            default: fmt::format_to(fmt::appender(out), "Level {}", level);
        }
    }

    static void write_record(int level, fmt::string_view format, fmt::format_args args) noexcept {
        const int saved_errno = errno;  // a log call must not disturb the caller's error check
        try {
            fmt::memory_buffer line;
            line.push_back('[');
            append_level_name(line, level);
            line.push_back('/');
            append(line, current_process().name());
            append(line, "] ");
            fmt::vformat_to(fmt::appender(line), format, args);
            line.push_back('\n');
            const char* p = line.data();
            std::size_t left = line.size();
            while (left > 0) {
                const ssize_t n = ::write(STDERR_FILENO, p, left);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) break;  // nowhere to write: drop the record, as a closed stream would
                p += n;
                left -= static_cast<std::size_t>(n);
            }
        } catch (...) {
            // The record is lost; logging must not turn into the program's failure.
        }
        errno = saved_errno;
    }

    std::atomic<std::uint64_t> state_{0};  // level NOTSET, no output: silent
};

// The logger of this process (Python's multiprocessing.get_logger()).
inline Logger& get_logger() noexcept {
    // Constant-initialized: no guard variable that a fork could catch half-set, and
    // usable from any static constructor or destructor.
    static constinit Logger logger;
    return logger;
}

// Python's multiprocessing.log_to_stderr(): attaches stderr output to the logger (once,
// however often it is called) and, if given, sets its level. Returns the logger.
inline Logger& log_to_stderr(std::optional<int> level = std::nullopt) noexcept {
    Logger& logger = get_logger();
    logger.add_stderr_handler();
    if (level) logger.set_level(*level);
    return logger;
}

}  // namespace multiprocessing
