// util.hpp: get_logger() and log_to_stderr(), as Python's multiprocessing.util has them.
//
// What the library logs goes to fd 2 of whichever process logs it, so each test points
// fd 2 at a temporary file for the length of the action (children inherit it, so their
// lines land there too) and reads it back. Every test leaves the logger as it found it:
// silent (no stderr output, level NOTSET). Children only use plain POSIX calls.
#include <catch2/catch.hpp>

#include <multiprocessing.hpp>

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <numeric>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

using mp_test::StderrCapture;

namespace {

// Puts the logger back to its default state (silent) at the end of a test.
struct ResetLogger {
    ~ResetLogger() {
        mp::get_logger().remove_stderr_handler();
        mp::get_logger().set_level(mp::logging::NOTSET);
    }
};

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

std::size_t count_matching(const std::string& text, const std::string& pattern) {
    const std::regex re(pattern);
    std::size_t n = 0;
    for (const auto& line : lines_of(text)) n += std::regex_match(line, re);
    return n;
}

bool contains_line(const std::string& text, const std::string& line) {
    for (const auto& l : lines_of(text))
        if (l == line) return true;
    return false;
}

// Tasks and targets (run in children).
int square(int x) { return x * x; }
void noop() {}
void throw_from_target() { throw std::runtime_error("boom from the target"); }
int kill_self(int) {
    ::raise(SIGKILL);
    return 0;
}
void failing_initializer() { throw std::runtime_error("no database here"); }
void log_from_child() {
    mp::get_logger().debug("debug from {}", "the child");
    mp::get_logger().info("info from {}", "the child");
}

void run_a_pool_and_a_process() {
    {
        mp::Pool pool(2);
        std::vector<int> v(20);
        std::iota(v.begin(), v.end(), 0);
        CHECK(pool.map(square, v).at(19) == 361);
        CHECK_THROWS_AS(pool.apply(kill_self, 1), mp::WorkerLostError);
        pool.close();
        pool.join();
    }
    mp::Process p(noop);
    mp_test::Reaper reaper{p};
    p.start();
    REQUIRE(p.join(10s));
    CHECK(p.exitcode() == 0);
}

}  // namespace

// A type whose formatting can be counted.
struct Counted {};
inline int formatted = 0;
template <>
struct fmt::formatter<Counted> : fmt::formatter<std::string_view> {
    template <class FormatContext>
    auto format(const Counted&, FormatContext& ctx) const {
        ++formatted;
        return fmt::formatter<std::string_view>::format("counted", ctx);
    }
};

TEST_CASE("The logger is silent by default: a pool and a process write nothing to stderr", "[logging]") {
    ResetLogger reset;
    auto& logger = mp::get_logger();
    CHECK(logger.name() == "multiprocessing");
    CHECK(logger.level() == mp::logging::NOTSET);
    CHECK_FALSE(logger.has_stderr_handler());
    CHECK_FALSE(logger.is_enabled_for(mp::logging::CRITICAL));

    StderrCapture capture;
    run_a_pool_and_a_process();
    logger.critical("nobody hears this: {}", 42);
    const std::string err = capture.stop();
    INFO("stderr: " << err);
    CHECK(err.empty());
}

TEST_CASE("log_to_stderr(INFO): a Process's child says it calls run() and with which exit code", "[logging]") {
    ResetLogger reset;
    auto& logger = mp::log_to_stderr(mp::logging::INFO);
    CHECK(&logger == &mp::get_logger());
    CHECK(logger.level() == mp::logging::INFO);
    CHECK(logger.is_enabled_for(mp::logging::INFO));
    CHECK_FALSE(logger.is_enabled_for(mp::logging::DEBUG));

    mp::Process ok(noop);
    mp::Process fails(throw_from_target);
    mp_test::Reaper r1{ok}, r2{fails};
    StderrCapture capture;
    ok.start();
    REQUIRE(ok.join(10s));
    fails.start();
    REQUIRE(fails.join(10s));
    const std::string err = capture.stop();
    INFO("stderr: " << err);

    CHECK(count_matching(err, R"(\[INFO/Process-[0-9]+\] child process calling self\.run\(\))") == 2);
    CHECK(contains_line(err, "[INFO/" + ok.name() + "] child process calling self.run()"));
    CHECK(contains_line(err, "[INFO/" + ok.name() + "] process exiting with exitcode 0"));
    CHECK(contains_line(err, "[INFO/" + fails.name() + "] child process calling self.run()"));
    CHECK(contains_line(err, "[INFO/" + fails.name() + "] process exiting with exitcode 1"));
    // The existing report of the exception still comes first, as in Python.
    CHECK_THAT(err, Catch::Contains("Process " + fails.name() + ":\nstd::runtime_error: boom from the target\n[INFO/" +
                                    fails.name() + "] process exiting with exitcode 1\n"));
}

TEST_CASE("A pool worker killed by SIGKILL is logged as a WARNING naming its pid", "[logging][pool]") {
    ResetLogger reset;
    mp::log_to_stderr();  // no level: Python's effective WARNING
    CHECK(mp::get_logger().level() == mp::logging::NOTSET);
    CHECK(mp::get_logger().effective_level() == mp::logging::WARNING);

    StderrCapture capture;
    pid_t victim = 0;
    {
        mp::Pool pool(1);
        const auto pids = pool.worker_pids();
        REQUIRE(pids.size() == 1);
        victim = pids[0];
        CHECK_THROWS_AS(pool.apply(kill_self, 1), mp::WorkerLostError);
        CHECK(pool.apply(square, 3) == 9);  // the replacement serves
    }
    const std::string err = capture.stop();
    INFO("stderr: " << err);
    CHECK(contains_line(err, "[WARNING/MainProcess] pool worker (pid " + std::to_string(victim) +
                                 ") was killed by SIGKILL; replacing it"));
    // Nothing below WARNING: not the lost task (INFO), not the pool's DEBUG lines.
    CHECK(count_matching(err, R"(\[WARNING/[^\]]+\] .*)") == lines_of(err).size());
}

TEST_CASE("Level filtering: DEBUG lines only at DEBUG, INFO lines from the pool's workers", "[logging][pool]") {
    ResetLogger reset;
    auto run_pool = [] {
        mp::Pool pool(2);
        std::vector<int> v(8);
        std::iota(v.begin(), v.end(), 0);
        CHECK(pool.map(square, v, {.chunksize = 1}).at(7) == 49);
        CHECK_THROWS_AS(pool.apply(kill_self, 1), mp::WorkerLostError);
        pool.close();
        pool.join();
    };

    SECTION("INFO") {
        mp::log_to_stderr(mp::logging::INFO);
        StderrCapture capture;
        run_pool();
        mp::get_logger().debug("a debug line from {}", "the parent");
        mp::get_logger().info("an info line from {}", "the parent");
        mp::Process p(log_from_child);
        mp_test::Reaper reaper{p};
        p.start();
        REQUIRE(p.join(10s));
        const std::string err = capture.stop();
        INFO("stderr: " << err);
        CHECK(count_matching(err, R"(\[DEBUG/.*)") == 0);
        CHECK(contains_line(err, "[INFO/MainProcess] an info line from the parent"));
        CHECK(contains_line(err, "[INFO/" + p.name() + "] info from the child"));
        // The two workers that ran to the end; the killed one said nothing.
        CHECK(count_matching(err, R"(\[INFO/ForkPoolWorker-[0-9]+\] worker exiting after [0-9]+ tasks)") == 2);
        CHECK(count_matching(err, R"(\[WARNING/MainProcess\] pool worker \(pid [0-9]+\) was killed by SIGKILL; replacing it)") == 1);
        CHECK(count_matching(err, R"(\[INFO/MainProcess\] task failed with WorkerLostError: its worker \(pid [0-9]+\) died while running it)") == 1);
    }
    SECTION("DEBUG") {
        mp::log_to_stderr(mp::logging::DEBUG);
        mp::log_to_stderr(mp::logging::DEBUG);  // idempotent: still one line per record
        StderrCapture capture;
        run_pool();
        mp::get_logger().debug("a debug line from {}", "the parent");
        const std::string err = capture.stop();
        INFO("stderr: " << err);
        CHECK(count_matching(err, R"(\[DEBUG/MainProcess\] a debug line from the parent)") == 1);
        // Two workers at the start, one replacing the killed one.
        CHECK(count_matching(err, R"(\[DEBUG/MainProcess\] added worker ForkPoolWorker-[0-9]+ \(pid [0-9]+\))") == 3);
        CHECK(contains_line(err, "[DEBUG/MainProcess] closing pool"));
        CHECK(contains_line(err, "[DEBUG/MainProcess] joining pool"));
        CHECK(count_matching(err, R"(\[DEBUG/MainProcess\] terminating pool)") == 1);  // the destructor's
    }
    SECTION("Level names, Python's and multiprocessing's own") {
        mp::log_to_stderr(mp::logging::SUBDEBUG);
        StderrCapture capture;
        mp::get_logger().log(mp::logging::SUBDEBUG, "sub {}", "debug");
        mp::get_logger().log(mp::logging::SUBWARNING, "sub {}", "warning");
        mp::get_logger().warning("w");
        mp::get_logger().error("e");
        mp::get_logger().critical("c");
        mp::get_logger().log(42, "custom");
        mp::get_logger().set_level(mp::logging::ERROR);
        mp::get_logger().warning("dropped");
        const std::string err = capture.stop();
        CHECK(err == "[SUBDEBUG/MainProcess] sub debug\n[SUBWARNING/MainProcess] sub warning\n"
                     "[WARNING/MainProcess] w\n[ERROR/MainProcess] e\n[CRITICAL/MainProcess] c\n"
                     "[Level 42/MainProcess] custom\n");
    }
}

TEST_CASE("maxtasksperchild: a retiring worker is a DEBUG line, not a WARNING", "[logging][pool]") {
    ResetLogger reset;
    mp::log_to_stderr(mp::logging::DEBUG);
    StderrCapture capture;
    {
        mp::Pool pool({.processes = 1, .maxtasksperchild = 2});
        std::vector<int> v(4);
        std::iota(v.begin(), v.end(), 0);
        CHECK(pool.map(square, v, {.chunksize = 1}).at(3) == 9);
        pool.close();
        pool.join();
    }
    const std::string err = capture.stop();
    INFO("stderr: " << err);
    CHECK(count_matching(err, R"(\[INFO/ForkPoolWorker-[0-9]+\] worker exiting after 2 tasks)") == 2);
    CHECK(count_matching(err, R"(\[DEBUG/MainProcess\] pool worker \(pid [0-9]+\) exited with code 0 after its maxtasksperchild tasks; replacing it)") >= 1);
    CHECK(count_matching(err, R"(\[WARNING/.*)") == 0);
}

TEST_CASE("A failing initializer: the plain message without logging, an ERROR line with it", "[logging][pool]") {
    ResetLogger reset;
    const std::string plain = "multiprocessing: the pool's initializer failed in worker ";
    SECTION("logging off") {
        StderrCapture capture;
        mp::Pool pool({.processes = 1, .initializer = failing_initializer});
        CHECK(capture.wait_for(plain));
        pool.terminate();
        pool.join();
        const std::string err = capture.stop();
        INFO("stderr: " << err);
        CHECK_THAT(err, Catch::Contains("std::runtime_error: no database here"));
        CHECK_THAT(err, !Catch::Contains("[ERROR/"));
    }
    SECTION("logging on") {
        mp::log_to_stderr(mp::logging::ERROR);
        StderrCapture capture;
        mp::Pool pool({.processes = 1, .initializer = failing_initializer});
        CHECK(capture.wait_for("no database here"));
        pool.terminate();
        pool.join();
        const std::string err = capture.stop();
        INFO("stderr: " << err);
        CHECK(count_matching(err, R"(\[ERROR/ForkPoolWorker-[0-9]+\] the pool's initializer failed in worker [0-9]+: std::runtime_error: no database here)") >= 1);
        CHECK_THAT(err, !Catch::Contains(plain));
    }
}

TEST_CASE("A disabled call formats nothing, and detaching stderr keeps the level", "[logging]") {
    ResetLogger reset;
    auto& logger = mp::get_logger();
    formatted = 0;
    logger.critical("{}", Counted{});  // silent by default
    CHECK(formatted == 0);

    mp::log_to_stderr(mp::logging::WARNING);
    CHECK_FALSE(logger.is_enabled_for(mp::logging::INFO));
    CHECK(logger.is_enabled_for(mp::logging::WARNING));
    StderrCapture capture;
    logger.info("{}", Counted{});
    CHECK(formatted == 0);
    logger.warning("{}", Counted{});
    CHECK(formatted == 1);

    logger.remove_stderr_handler();
    CHECK_FALSE(logger.has_stderr_handler());
    CHECK_FALSE(logger.is_enabled_for(mp::logging::CRITICAL));
    CHECK(logger.level() == mp::logging::WARNING);  // detaching keeps the level
    logger.critical("{}", Counted{});
    CHECK(formatted == 1);
    CHECK(capture.stop() == "[WARNING/MainProcess] counted\n");
}
