// Progress bars of the map family (`.progress = true`, issue 5): the text of a line, the
// throttled drawing of detail::ProgressBar under a fake clock, and what map, starmap,
// map_async, imap and imap_unordered write to stderr (fd 2, redirected to a memfd
// around each call) with the option on and off.
//
// Nothing here asserts a timing: the throttle is tested with a clock the test moves.
#include <catch2/catch.hpp>
#include <multiprocessing.hpp>

#include "support.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace mp = multiprocessing;
using namespace std::chrono_literals;
using mp::detail::format_duration;
using mp::detail::format_progress;
using mp::detail::format_progress_bar;
using mp::detail::format_rate;
using mp::detail::ProgressBar;
using mp::detail::ProgressOutput;
using mp::detail::ProgressState;

namespace {

// ---------------------------------------------------------------------------------
// Helpers

// An in-memory file; what was written to it is read back with contents().
struct MemFile {
    int fd = ::memfd_create("mp-progress-test", MFD_CLOEXEC);
    MemFile() { REQUIRE(fd >= 0); }
    ~MemFile() { ::close(fd); }
    MemFile(const MemFile&) = delete;
    MemFile& operator=(const MemFile&) = delete;
    std::string contents() const {
        std::string out;
        char buf[4096];
        for (off_t at = 0;;) {
            const ssize_t n = ::pread(fd, buf, sizeof buf, at);
            REQUIRE(n >= 0);
            if (n == 0) return out;
            out.append(buf, static_cast<std::size_t>(n));
            at += n;
        }
    }
};

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::string line;
    for (char c : text) {
        if (c == '\n') {
            out.push_back(line);
            line.clear();
        } else {
            line += c;
        }
    }
    if (!line.empty()) out.push_back(line);
    return out;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The clock a ProgressBar reads in these tests: moved by hand.
std::chrono::steady_clock::time_point fake_now{std::chrono::seconds(1000)};
int fake_clock_reads = 0;
std::chrono::steady_clock::time_point read_fake_clock() {
    ++fake_clock_reads;
    return fake_now;
}

ProgressOutput fake_output(int fd, bool terminal, std::size_t columns = 80) {
    return ProgressOutput{.fd = fd, .terminal = terminal, .columns = columns, .now = &read_fake_clock};
}

// ---------------------------------------------------------------------------------
// Tasks

int sqr(int x) { return x * x; }
int mul(int a, int b) { return a * b; }
int fail_on_seven(int x) {
    if (x == 7) throw std::runtime_error("seven");
    return x;
}

}  // namespace

// ---------------------------------------------------------------------------------
// The text of a line

TEST_CASE("progress text: durations and rates", "[progress]") {
    CHECK(format_duration(0) == "0:00");
    CHECK(format_duration(7.4) == "0:07");
    CHECK(format_duration(754) == "12:34");
    CHECK(format_duration(3723) == "1:02:03");
    CHECK(format_duration(-1) == "?");

    CHECK(format_rate(0) == "? items/s");
    CHECK(format_rate(0.25) == "0.25 items/s");
    CHECK(format_rate(12.34) == "12.3 items/s");
    CHECK(format_rate(131.2) == "131 items/s");
    CHECK(format_rate(48200) == "48.2k items/s");
    CHECK(format_rate(3.5e6) == "3.5M items/s");
}

TEST_CASE("progress text: a known total shows count, percent, rate and ETA", "[progress]") {
    // 450 of 1000 in 3 s: 150 items/s, 550 left: ETA 3.67 s.
    const ProgressState running{.label = "map", .done = 450, .total = 1000, .elapsed = 3.0};
    CHECK(format_progress(running) == "map  45% 450/1000  150 items/s  ETA 0:04");

    const ProgressState last{.label = "map", .done = 1000, .total = 1000, .elapsed = 4.0, .final = true};
    CHECK(format_progress(last) == "map 100% 1000/1000  250 items/s  elapsed 0:04");

    // Nothing done yet: neither rate nor ETA can be known.
    const ProgressState start{.label = "starmap", .done = 0, .total = 10, .elapsed = 0.0};
    CHECK(format_progress(start) == "starmap   0% 0/10  ? items/s  ETA ?");

    const ProgressState empty{.label = "map", .done = 0, .total = 0, .elapsed = 0.0, .final = true};
    CHECK(format_progress(empty) == "map 100% 0/0  ? items/s  elapsed 0:00");
}

TEST_CASE("progress text: an unknown total shows the count only", "[progress]") {
    const ProgressState s{.label = "imap", .done = 450, .total = std::nullopt, .elapsed = 3.0};
    CHECK(format_progress(s) == "imap 450 done  150 items/s  elapsed 0:03");
    CHECK(format_progress_bar(s, 80) == "imap 450 done  150 items/s  elapsed 0:03");
}

TEST_CASE("progress text: the terminal bar fits the width it is given", "[progress]") {
    const ProgressState s{.label = "map", .done = 450, .total = 1000, .elapsed = 3.0};
    // Wide: a bar of 30, 45% of it filled (13 of 30).
    CHECK(format_progress_bar(s, 120) ==
          "map  45% [#############-----------------] 450/1000  150 items/s  ETA 0:04");
    // Every width stays within columns - 1, so '\r' always redraws the same row.
    for (std::size_t columns : {120u, 80u, 60u, 50u, 45u, 20u, 1u, 0u}) {
        INFO("columns " << columns);
        CHECK(format_progress_bar(s, columns).size() <= (columns > 0 ? columns - 1 : 0));
    }
    // Too narrow for a bar: the plain text, cut.
    CHECK(format_progress_bar(s, 45) == format_progress(s));
    CHECK(format_progress_bar(s, 20) == format_progress(s).substr(0, 19));
    // Full at the end.
    const ProgressState last{.label = "map", .done = 1000, .total = 1000, .elapsed = 4.0, .final = true};
    CHECK(contains(format_progress_bar(last, 120), "[" + std::string(30, '#') + "]"));
}

// ---------------------------------------------------------------------------------
// ProgressBar: drawing and its throttle, under the fake clock

TEST_CASE("ProgressBar off a terminal: a line every 2 s at most, then a final one", "[progress]") {
    MemFile out;
    fake_now = std::chrono::steady_clock::time_point(std::chrono::seconds(1000));
    {
        ProgressBar bar("map", 100, fake_output(out.fd, /*terminal=*/false));
        CHECK(out.contents().empty());  // no line before there is anything to say
        for (int i = 0; i < 30; ++i) {
            fake_now += 50ms;  // 1.5 s in all: not due yet
            bar.advance(1);
        }
        CHECK(out.contents().empty());
        fake_now += 600ms;  // 2.1 s
        bar.advance(10);
        CHECK(lines_of(out.contents()) == std::vector<std::string>{"map  40% 40/100  19.0 items/s  ETA 0:03"});
        fake_now += 1s;  // 3.1 s: not 2 s after the last line
        bar.advance(10);
        CHECK(lines_of(out.contents()).size() == 1);
        fake_now += 900ms;  // 4.0 s
        bar.advance(50);
        bar.finish();
        bar.finish();     // once only
        bar.advance(1);   // after finish: nothing
    }                     // nor from the destructor
    const auto text = out.contents();
    CHECK(lines_of(text) == std::vector<std::string>{"map  40% 40/100  19.0 items/s  ETA 0:03",
                                                     "map 100% 100/100  25.0 items/s  elapsed 0:04"});
    CHECK(text.back() == '\n');
    CHECK(!contains(text, "\r"));
}

TEST_CASE("ProgressBar on a terminal: one line redrawn with \\r at most 10 times a second", "[progress]") {
    MemFile out;
    fake_now = std::chrono::steady_clock::time_point(std::chrono::seconds(1000));
    {
        ProgressBar bar("imap", 1000, fake_output(out.fd, /*terminal=*/true, 60));
        // Drawn at once, at 0.
        CHECK(out.contents() == "\r" + format_progress_bar({.label = "imap", .done = 0, .total = 1000}, 60));
        // 1000 items over 2 s, one every 2 ms: about 20 redraws, not 1000.
        for (int i = 0; i < 1000; ++i) {
            fake_now += 2ms;
            bar.advance();
        }
        bar.finish();
    }
    const auto text = out.contents();
    const auto redraws = std::count(text.begin(), text.end(), '\r');
    CHECK(redraws >= 2);
    CHECK(redraws <= 22);
    // One line on screen: no newline until the very end.
    CHECK(std::count(text.begin(), text.end(), '\n') == 1);
    CHECK(text.back() == '\n');
    const auto last = text.substr(text.rfind('\r') + 1);
    CHECK(last == format_progress_bar({.label = "imap", .done = 1000, .total = 1000, .elapsed = 2.0, .final = true},
                                      60) +
                      "\n");
    // Each redraw fits the terminal.
    for (std::size_t at = 0; (at = text.find('\r', at)) != std::string::npos; ++at) {
        const auto end = text.find_first_of("\r\n", at + 1);
        CHECK((end == std::string::npos ? text.size() : end) - at - 1 <= 59);
    }
}

TEST_CASE("ProgressBar on a terminal blanks what a longer line left behind", "[progress]") {
    MemFile out;
    fake_now = std::chrono::steady_clock::time_point(std::chrono::seconds(1000));
    {
        ProgressBar bar("imap", std::nullopt, fake_output(out.fd, /*terminal=*/true));
        fake_now += 1s;
        bar.advance(48200);  // "48.2k items/s"
        fake_now += 367s;
        bar.advance(64);     // "131 items/s": two characters shorter
    }
    std::vector<std::string> draws;  // what each '\r' starts
    const auto text = out.contents();
    for (std::size_t at = 0; (at = text.find('\r', at)) != std::string::npos; ++at)
        draws.push_back(text.substr(at + 1, text.find('\r', at + 1) - at - 1));
    REQUIRE(draws.size() == 4);  // at once, two advances, finish (from the destructor)
    CHECK(draws[1] == "imap 48200 done  48.2k items/s  elapsed 0:01");
    CHECK(draws[2] == "imap 48264 done  131 items/s  elapsed 6:08  ");
    CHECK(draws[3] == "imap 48264 done  131 items/s  elapsed 6:08\n");
}

TEST_CASE("ProgressBar reads the clock every few items of a fast stream, every item of a slow one",
          "[progress]") {
    MemFile out;
    fake_now = std::chrono::steady_clock::time_point(std::chrono::seconds(1000));
    ProgressBar bar("imap", std::nullopt, fake_output(out.fd, /*terminal=*/true));
    // Fast: a million items a second.
    fake_clock_reads = 0;
    for (int i = 0; i < 100000; ++i) {
        fake_now += 1us;
        bar.advance();
    }
    CHECK(fake_clock_reads <= 100000 / 32);
    CHECK(fake_clock_reads >= 100000 / 64);
    // Then slow: an item every 300 ms. The clock is read at most 64 items late (here
    // 63 items), then at each item, and each one is drawn.
    const auto draws_before = [&] {
        const auto t = out.contents();
        return std::count(t.begin(), t.end(), '\r');
    }();
    fake_clock_reads = 0;
    for (int i = 0; i < 200; ++i) {
        fake_now += 300ms;
        bar.advance();
    }
    CHECK(fake_clock_reads >= 200 - 64);
    const auto text = out.contents();
    CHECK(std::count(text.begin(), text.end(), '\r') - draws_before >= 200 - 64);
}

// ---------------------------------------------------------------------------------
// The pool's map family

TEST_CASE("progress = false (the default) writes nothing to stderr", "[progress][pool]") {
    std::vector<int> in(100);
    for (int i = 0; i < 100; ++i) in[i] = i;
    mp_test::StderrCapture capture;
    mp::Pool pool(2);
    CHECK(pool.map(sqr, in).size() == 100);
    CHECK(pool.map(sqr, in, {.chunksize = 7}).size() == 100);
    CHECK(pool.map_async(sqr, in).get().size() == 100);
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}};
    CHECK(pool.starmap(mul, pairs) == std::vector<int>{2, 12});
    int count = 0;
    for (int x : pool.imap(sqr, in)) count += x >= 0;
    for (int x : pool.imap_unordered(sqr, in, {.chunksize = 3})) count += x >= 0;
    CHECK(count == 200);
    pool.close();
    pool.join();
    CHECK(capture.stop().empty());
}

TEST_CASE("map with progress: correct results and a final 100/100 line", "[progress][pool]") {
    mp::Pool pool(2);
    std::vector<int> in(100), expected(100);
    for (int i = 0; i < 100; ++i) {
        in[i] = i;
        expected[i] = i * i;
    }
    SECTION("map, chunks of 7 (items are counted, not chunks)") {
        mp_test::StderrCapture capture;
        const auto out = pool.map(sqr, in, {.chunksize = 7, .progress = true});
        const auto text = capture.stop();
        CHECK(out == expected);
        const auto lines = lines_of(text);
        REQUIRE(!lines.empty());
        CHECK(lines.back().starts_with("map 100% 100/100  "));
        CHECK(contains(lines.back(), "items/s"));
        CHECK(contains(lines.back(), "elapsed "));
        CHECK(text.back() == '\n');
        CHECK(!contains(text, "\r"));  // not a terminal: plain lines
    }
    SECTION("map_async: the last line is out before get() returns") {
        mp_test::StderrCapture capture;
        auto result = pool.map_async(sqr, in, {.chunksize = 10, .progress = true});
        CHECK(result.get() == expected);
        const auto lines = lines_of(capture.stop());
        REQUIRE(!lines.empty());
        CHECK(lines.back().starts_with("map 100% 100/100  "));
    }
    SECTION("starmap and starmap_async") {
        std::vector<std::tuple<int, int>> pairs;
        for (int i = 0; i < 50; ++i) pairs.emplace_back(i, 2);
        mp_test::StderrCapture capture;
        const auto out = pool.starmap(mul, pairs, {.progress = true});
        const auto out2 = pool.starmap_async(mul, pairs, {.chunksize = 4, .progress = true}).get();
        const auto lines = lines_of(capture.stop());
        CHECK(out.size() == 50);
        CHECK(out[49] == 98);
        CHECK(out2 == out);
        REQUIRE(lines.size() >= 2);
        CHECK(std::count_if(lines.begin(), lines.end(),
                            [](const std::string& l) { return l.starts_with("starmap 100% 50/50  "); }) == 2);
    }
    SECTION("an empty map: 0/0") {
        mp_test::StderrCapture capture;
        CHECK(pool.map(sqr, std::vector<int>{}, {.progress = true}).empty());
        const auto lines = lines_of(capture.stop());
        REQUIRE(lines.size() == 1);
        CHECK(lines[0].starts_with("map 100% 0/0  "));
    }
    SECTION("a failed map still ends its line") {
        mp_test::StderrCapture capture;
        CHECK_THROWS_WITH(pool.map(fail_on_seven, in, {.chunksize = 5, .progress = true}), "seven");
        const auto text = capture.stop();
        const auto lines = lines_of(text);
        REQUIRE(!lines.empty());
        CHECK(lines.back().starts_with("map "));
        CHECK(!contains(text, "100/100"));
        CHECK(text.back() == '\n');
    }
    pool.close();
    pool.join();
}

TEST_CASE("imap and imap_unordered with progress", "[progress][pool]") {
    mp::Pool pool(2);
    std::vector<int> in(100);
    for (int i = 0; i < 100; ++i) in[i] = i;
    SECTION("imap over a sized range: a total") {
        mp_test::StderrCapture capture;
        std::vector<int> out;
        for (int x : pool.imap(sqr, in, {.chunksize = 3, .progress = true})) out.push_back(x);
        const auto lines = lines_of(capture.stop());
        REQUIRE(out.size() == 100);
        CHECK(out[99] == 99 * 99);
        REQUIRE(!lines.empty());
        CHECK(lines.back().starts_with("imap 100% 100/100  "));
    }
    SECTION("imap_unordered") {
        mp_test::StderrCapture capture;
        long long sum = 0;
        for (int x : pool.imap_unordered(sqr, in, {.progress = true})) sum += x;
        const auto lines = lines_of(capture.stop());
        CHECK(sum == 328350);
        REQUIRE(!lines.empty());
        CHECK(lines.back().starts_with("imap_unordered 100% 100/100  "));
    }
    SECTION("imap over a lazy input of unknown length: the count only") {
        auto lazy = std::views::iota(0) | std::views::take_while([](int x) { return x < 60; });
        static_assert(!std::ranges::sized_range<decltype(lazy)>);
        mp_test::StderrCapture capture;
        int n = 0;
        for (int x : pool.imap(sqr, lazy, {.chunksize = 4, .progress = true})) n += x >= 0;
        const auto lines = lines_of(capture.stop());
        CHECK(n == 60);
        REQUIRE(!lines.empty());
        CHECK(lines.back().starts_with("imap 60 done  "));
        CHECK(!contains(lines.back(), "%"));
    }
    SECTION("an imap dropped early ends its line") {
        mp_test::StderrCapture capture;
        {
            auto it = pool.imap(sqr, in, {.progress = true});
            CHECK(it.next() == 0);
            CHECK(it.next() == 1);
        }
        const auto text = capture.stop();
        const auto lines = lines_of(text);
        // Counted as chunks come back, so some of the prefetched ones may be in it too.
        REQUIRE(lines.size() == 1);
        CHECK(lines[0].starts_with("imap "));
        CHECK(contains(lines[0], "/100  "));
        CHECK(text.back() == '\n');
    }
    pool.close();
    pool.join();
}
