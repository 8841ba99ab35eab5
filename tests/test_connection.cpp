// Pipe and Connection: a port of the behaviours CPython checks in _TestConnection,
// _TestPoll and TestWait (Lib/test/_test_multiprocessing.py), written for the C++ API,
// plus what C++ adds: typed messages, timed recv, threads sharing one end, and a peer
// that dies (SIGKILL, mid-message) without hanging or killing us.
//
// Children get their end as a Process argument (the default start method is fork, so
// they also inherit every other fd: as in Python, an end reaches EOF only once every
// process holding the other end has closed it). No Catch2 macro ever runs in a child.
#include <catch2/catch.hpp>

#include <multiprocessing.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <complex>
#include <deque>
#include <filesystem>
#include <forward_list>
#include <functional>
#include <list>
#include <unordered_map>
#include <unordered_set>
#include <valarray>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <variant>
#include <vector>

#include "support.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;
using mp_test::seconds_since;
using Clock = std::chrono::steady_clock;

namespace {

// ---------------------------------------------------------------------------------
// Values that cross.

using mp_test::Point;
using mp_test::Record;

using Mixed = std::variant<int, std::string, std::vector<double>, Point, std::map<std::string, int>, Record>;

static_assert(mp::Connection<int>::is_process_shared_handle);
static_assert(std::is_copy_constructible_v<mp::Connection<int>> && std::is_copy_assignable_v<mp::Connection<int>>);

std::string text_of(std::span<const std::byte> b) {
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

std::span<const std::byte> view(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

using mp_test::Reaper;

// ---------------------------------------------------------------------------------
// Targets (run in the child).

// CPython's _echo: sends every message back, until the empty one (or EOF).
template <class T>
void echo_bytes(mp::Connection<T> conn) {
    try {
        for (;;) {
            auto message = conn.recv_bytes();
            if (message.empty()) break;
            conn.send_bytes(message);
        }
    } catch (const mp::EOFError&) {
    }
    conn.close();
}

// The typed twin: `count` values, each decoded here and encoded again.
template <class T>
void echo_values(mp::Connection<T> conn, int count) {
    for (int i = 0; i < count; ++i) conn.send(conn.recv());
}

template <class T>
void send_one_and_wait(mp::Connection<T> conn, T value) {
    conn.send(value);
    ::pause();  // until killed
}

void send_later(mp::Connection<std::string> conn, int delay_ms, std::string message) {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    conn.send(message);
}

// CPython's _child_strings: messages spaced out in time, then close.
void send_strings_slowly(mp::Connection<std::string> conn, std::vector<std::string> strings) {
    for (const auto& s : strings) {
        std::this_thread::sleep_for(20ms);
        conn.send_bytes(view(s));
    }
    conn.close();
}

// CPython's _child_dont_merge.
void send_three_quickly(mp::Connection<std::string> conn) {
    conn.send_bytes(view("a"));
    conn.send_bytes(view("b"));
    conn.send_bytes(view("cd"));
}

// Starts a frame that claims 1000 bytes, writes 10 of them and dies.
void die_mid_message(mp::Connection<std::string> conn) {
    std::byte frame[8 + 10] = {};
    frame[0] = std::byte{0xe8};  // 1000, little-endian
    frame[1] = std::byte{0x03};
    mp_test::put_bytes(conn.fileno(), frame, sizeof frame);
    ::_exit(0);
}

// Waits for a go message, answers with its index, `rounds` times.
void answer_when_asked(mp::Connection<int> conn, int index, int rounds) {
    for (int i = 0; i < rounds; ++i) {
        (void)conn.recv();
        conn.send(index);
    }
}

void square_server(mp::Connection<std::int64_t> conn, int rounds) {
    for (int i = 0; i < rounds; ++i) {
        std::int64_t n = conn.recv();
        conn.send(n * n);
        conn.send(static_cast<std::int64_t>(::getpid()));
    }
}

// ---------------------------------------------------------------------------------

template <class T>
void check_round_trips(const T& value) {
    auto [a, b] = mp::Pipe<T>();
    a.send(value);
    CHECK(b.recv() == value);
    b.send(value);
    CHECK(a.recv() == value);
    auto [r, w] = mp::Pipe<T>(false);
    w.send(value);
    CHECK(r.recv() == value);
}

template <class F>
double seconds_to_run(F&& f) {
    auto t0 = Clock::now();
    f();
    return seconds_since(t0);
}

}  // namespace

// ---------------------------------------------------------------------------------
// Sending and receiving values.

TEST_CASE("A duplex Pipe carries values both ways, a one-way Pipe from second to first", "[connection]") {
    check_round_trips(42);
    check_round_trips(-1.5);
    check_round_trips(std::string("hello world"));
    check_round_trips(std::string());
    check_round_trips(std::vector<int>{1, 2, 3, 4});
    check_round_trips(Point{1.875, -6.25});
    check_round_trips(std::map<std::string, int>{{"one", 1}, {"two", 2}});
    check_round_trips(Record{"r", {7, 8, 9}});
    check_round_trips(std::vector<std::string>(100, "x"));
    check_round_trips(std::optional<int>{});
}

TEST_CASE("Messages keep their order and their boundaries", "[connection]") {
    auto [a, b] = mp::Pipe<std::string>();
    for (int i = 0; i < 100; ++i) a.send(std::string(static_cast<std::size_t>(i), 'a' + i % 26));
    for (int i = 0; i < 100; ++i) CHECK(b.recv() == std::string(static_cast<std::size_t>(i), 'a' + i % 26));
    CHECK_FALSE(b.poll());
}

TEST_CASE("Values of several types cross to a child and back", "[connection]") {
    const std::vector<Mixed> values = {
        Mixed(7),
        Mixed(std::string("hello")),
        Mixed(std::vector<double>{1, 2.25}),
        Mixed(Point{3, 4}),
        Mixed(std::map<std::string, int>{{"a", 1}}),
        Mixed(Record{"name", {1, 2}}),
    };
    auto [conn, child_conn] = mp::Pipe<Mixed>();
    mp::Process p(echo_values<Mixed>, child_conn, static_cast<int>(values.size()));
    Reaper reaper{p};
    p.start();
    for (const auto& v : values) {
        conn.send(v);
        CHECK(conn.recv(5s) == v);
    }
    p.join();
    CHECK(p.exitcode() == 0);
}

namespace {

// One value, to a child and back through a Pipe: encoded and decoded in both processes.
template <class T, class Equal = std::equal_to<>>
void check_crosses_and_back(const T& value, Equal equal = {}) {
    auto [conn, child_conn] = mp::Pipe<T>();
    mp::Process p(echo_values<T>, child_conn, 1);
    Reaper reaper{p};
    p.start();
    conn.send(value);
    const T back = conn.recv(5s);
    CHECK(equal(back, value));
    REQUIRE(p.join(5s));
    CHECK(p.exitcode() == 0);
}

std::filesystem::path parent_of(std::filesystem::path path) { return path.parent_path(); }

}  // namespace

// API.md, "Small conveniences": every standard value type crosses. One of each kind, with
// contents (an empty one is checked by the fuzz corpora and the codec tests).
TEST_CASE("Every standard value type crosses to a child and back", "[connection]") {
    using namespace std::string_literals;
    check_crosses_and_back(std::filesystem::path("/tmp/data dir/файл.txt"));
    check_crosses_and_back(std::pair<int, std::string>{1, "one"});
    check_crosses_and_back(std::tuple<int, double, std::string>{1, 2.5, "three"});
    check_crosses_and_back(std::optional<std::string>("set"));
    check_crosses_and_back(std::variant<std::monostate, int, std::string>("alternative 2"));
    check_crosses_and_back(std::variant<std::monostate, int>());
    check_crosses_and_back(std::array<std::string, 2>{"a", "b"});
    check_crosses_and_back(std::vector<bool>{true, false, true});
    check_crosses_and_back(std::deque<int>{1, 2, 3});
    check_crosses_and_back(std::list<std::string>{"x", "y"});
    check_crosses_and_back(std::forward_list<int>{3, 2, 1});
    check_crosses_and_back(std::set<int>{3, 1, 2});
    check_crosses_and_back(std::multiset<int>{1, 1, 2});
    check_crosses_and_back(std::map<std::string, std::vector<int>>{{"k", {1, 2}}});
    check_crosses_and_back(std::multimap<int, int>{{1, 1}, {1, 2}});
    check_crosses_and_back(std::unordered_map<std::string, int>{{"a", 1}, {"b", 2}});
    check_crosses_and_back(std::unordered_multimap<int, int>{{1, 1}, {1, 2}});
    check_crosses_and_back(std::unordered_set<std::string>{"p", "q"});
    check_crosses_and_back(std::unordered_multiset<int>{4, 4});
    check_crosses_and_back(std::bitset<70>("1" + std::string(68, '0') + "1"));
    check_crosses_and_back(std::complex<double>(1.5, -2));
    check_crosses_and_back(std::chrono::milliseconds(1234));
    check_crosses_and_back(std::chrono::system_clock::time_point(std::chrono::seconds(1700000000)));
    check_crosses_and_back(std::valarray<double>{1, 2, 3},
                           [](const auto& a, const auto& b) { return a.size() == b.size() && (a == b).min(); });
    check_crosses_and_back("narrow"s);
    check_crosses_and_back(std::wstring(L"wide \u00e9"));
    check_crosses_and_back(std::u8string(u8"utf-8 \u00e9"));
    check_crosses_and_back(std::u16string(u"utf-16 \u00e9"));
    check_crosses_and_back(std::u32string(U"utf-32 \U0001F600"));
    check_crosses_and_back(std::byte{0xA5});
    check_crosses_and_back(std::vector<std::filesystem::path>{"a/b", "/c"});
}

TEST_CASE("A std::filesystem::path is a task argument and a result", "[connection][pool]") {
    mp::Pool pool(1);
    CHECK(pool.apply(parent_of, std::filesystem::path("/srv/data/input.csv")) == std::filesystem::path("/srv/data"));
    pool.close();
    pool.join();
}

TEST_CASE("Byte vectors and enums are values too", "[connection]") {
    enum class Color : std::uint8_t { red = 1, green = 2 };
    using Message = std::pair<std::vector<std::byte>, std::vector<Color>>;
    const Message sent{{std::byte{0}, std::byte{0xff}, std::byte{7}}, {Color::green, Color::red}};
    auto [conn, child_conn] = mp::Pipe<Message>();
    mp::Process p(echo_values<Message>, child_conn, 1);
    Reaper reaper{p};
    p.start();
    conn.send(sent);
    CHECK(conn.recv(5s) == sent);
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("test_connection: an echo child, bytes, recv_bytes_into, poll and EOF", "[connection]") {
    auto [conn, child_conn] = mp::Pipe<std::vector<double>>();
    mp::Process p(echo_bytes<std::vector<double>>, child_conn);
    Reaper reaper{p};
    p.set_daemon(true);
    p.start();

    CHECK(conn.fileno() >= 0);
    const std::vector<double> seq{1, 2.25, -3};
    conn.send(seq);
    CHECK(conn.recv() == seq);

    const std::string msg = "hello world";
    std::string longmsg;
    for (int i = 0; i < 10; ++i) longmsg += msg;
    conn.send_bytes(view(msg));
    CHECK(text_of(conn.recv_bytes()) == msg);

    // recv_bytes_into: at the start, then at an offset; the rest of the buffer untouched.
    const std::array<std::int32_t, 4> arr{0, 1, 2, 3};
    {
        std::array<std::int32_t, 10> buffer{};
        conn.send_bytes(std::as_bytes(std::span(arr)));
        CHECK(conn.recv_bytes_into(std::as_writable_bytes(std::span(buffer))) == sizeof arr);
        CHECK(buffer == std::array<std::int32_t, 10>{0, 1, 2, 3, 0, 0, 0, 0, 0, 0});
    }
    {
        std::array<std::int32_t, 10> buffer{};
        conn.send_bytes(std::as_bytes(std::span(arr)));
        CHECK(conn.recv_bytes_into(std::as_writable_bytes(std::span(buffer)), 3 * sizeof(std::int32_t)) == sizeof arr);
        CHECK(buffer == std::array<std::int32_t, 10>{0, 0, 0, 0, 1, 2, 3, 0, 0, 0});
    }
    // Too short: BufferTooShort carries the whole message, which is consumed.
    {
        std::vector<std::byte> buffer(40, std::byte{' '});
        conn.send_bytes(view(longmsg));
        conn.send_bytes(view(msg));
        try {
            conn.recv_bytes_into(buffer);
            FAIL("expected BufferTooShort");
        } catch (const mp::BufferTooShort& e) {
            CHECK(text_of(e.message()) == longmsg);
            CHECK_THAT(e.what(), Catch::Contains("110 bytes") && Catch::Contains("room for 40"));
        }
        CHECK(buffer == std::vector<std::byte>(40, std::byte{' '}));
        CHECK(text_of(conn.recv_bytes(5s)) == msg);  // the next message is intact
    }

    // poll(): false at once when nothing is there, false after waiting, true when there is.
    double t = 0;
    t = seconds_to_run([&] { CHECK_FALSE(conn.poll()); });
    CHECK(t < 1.0);
    t = seconds_to_run([&] { CHECK_FALSE(conn.poll(-1s)); });
    CHECK(t < 1.0);
    t = seconds_to_run([&] { CHECK_FALSE(conn.poll(200ms)); });
    CHECK(t >= 0.15);
    CHECK(t < 5.0);
    conn.send(std::vector<double>{});
    std::this_thread::sleep_for(100ms);
    t = seconds_to_run([&] { CHECK(conn.poll(1s)); });
    CHECK(t < 1.0);
    CHECK(conn.recv() == std::vector<double>{});

    const std::string really_big_msg(16 * 1024 * 1024, 'X');
    conn.send_bytes(view(really_big_msg));
    CHECK(text_of(conn.recv_bytes()) == really_big_msg);

    conn.send_bytes({});  // the echo's SENTINEL: it closes and exits
    child_conn.close();   // and the parent's own copy of the child's end goes too
    CHECK(conn.readable());
    CHECK(conn.writable());
    CHECK_THROWS_AS(conn.recv(5s), mp::EOFError);
    CHECK_THROWS_AS(conn.recv_bytes(), mp::EOFError);
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("recv_bytes receives what send sent, and recv what send_bytes sent", "[connection]") {
    auto [a, b] = mp::Pipe<std::int32_t>();
    a.send(42);
    auto raw = b.recv_bytes();
    REQUIRE(raw.size() == sizeof(std::int32_t));
    std::int32_t v = 0;
    std::memcpy(&v, raw.data(), sizeof v);
    CHECK(v == 42);

    b.send_bytes(raw);
    CHECK(a.recv() == 42);

    // A payload that is not one value of the Connection's type is an error, not garbage.
    b.send_bytes(view("12345678"));
    CHECK_THROWS_AS(a.recv(), mp::ProcessError);
    b.send_bytes(view("12"));
    CHECK_THROWS_AS(a.recv(), mp::ProcessError);
    b.send(7);  // and the stream is still in step
    CHECK(a.recv() == 7);
}

TEST_CASE("send_bytes(buf, offset, size) as in Python's test_sendbytes", "[connection]") {
    const std::string msg = "abcdefghijklmnopqrstuvwxyz";
    auto [a, b] = mp::Pipe<int>();
    a.send_bytes(view(msg));
    CHECK(text_of(b.recv_bytes()) == msg);
    a.send_bytes(view(msg), 5);
    CHECK(text_of(b.recv_bytes()) == msg.substr(5));
    a.send_bytes(view(msg), 7, 8);
    CHECK(text_of(b.recv_bytes()) == msg.substr(7, 8));
    a.send_bytes(view(msg), 26);
    CHECK(b.recv_bytes().empty());
    a.send_bytes(view(msg), 26, 0);
    CHECK(b.recv_bytes().empty());
    CHECK_THROWS_AS(a.send_bytes(view(msg), 27), mp::ValueError);
    CHECK_THROWS_AS(a.send_bytes(view(msg), 22, 5), mp::ValueError);
    CHECK_THROWS_AS(a.send_bytes(view(msg), 26, 1), mp::ValueError);
    CHECK_THROWS_WITH(a.send_bytes(view(msg), 27), Catch::Contains("offset 27") && Catch::Contains("26 bytes"));
    CHECK_FALSE(b.poll());  // nothing was sent by the failed calls
}

TEST_CASE("recv_bytes_into with an offset past the end throws ValueError and reads nothing", "[connection]") {
    auto [a, b] = mp::Pipe<int>();
    a.send_bytes(view("abc"));
    std::array<std::byte, 4> buffer{};
    CHECK_THROWS_AS(b.recv_bytes_into(buffer, 5), mp::ValueError);
    CHECK(b.recv_bytes_into(buffer, 1) == 3);
    CHECK(text_of(std::span(buffer).subspan(1)) == "abc");
    // A message that exactly fills what is left is not too short; an empty one fits anywhere.
    a.send_bytes(view("wxyz"));
    CHECK(b.recv_bytes_into(buffer) == 4);
    a.send_bytes({});
    CHECK(b.recv_bytes_into(buffer, 4) == 0);
}

TEST_CASE("recv_bytes(maxlength): a longer message stops this end from receiving, as in Python", "[connection]") {
    auto [a, b] = mp::Pipe<int>();
    a.send_bytes(view("12345"));
    CHECK(text_of(b.recv_bytes(5)) == "12345");
    a.send_bytes(view("123456"));
    try {
        b.recv_bytes(5);
        FAIL("expected std::system_error");
    } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::message_size);
        CHECK_THAT(e.what(), Catch::Contains("6 bytes") && Catch::Contains("maxlength = 5"));
    }
    CHECK_FALSE(b.readable());
    CHECK(b.writable());
    CHECK_THROWS_WITH(b.recv(), Catch::Contains("recv_bytes(maxlength)"));
    b.send(3);  // the other direction still works
    CHECK(a.recv() == 3);
}

// ---------------------------------------------------------------------------------
// Directions, closing, fileno.

TEST_CASE("Pipe(false): the first end only receives, the second only sends (test_duplex_false)", "[connection]") {
    auto [reader, writer] = mp::Pipe<int>(false);
    writer.send(1);
    CHECK(reader.recv() == 1);
    CHECK(reader.readable());
    CHECK_FALSE(reader.writable());
    CHECK_FALSE(writer.readable());
    CHECK(writer.writable());

    CHECK_THROWS_AS(reader.send(2), mp::ValueError);
    CHECK_THROWS_AS(reader.send_bytes(view("x")), mp::ValueError);
    CHECK_THROWS_AS(writer.recv(), mp::ValueError);
    CHECK_THROWS_AS(writer.recv(1s), mp::ValueError);
    CHECK_THROWS_AS(writer.recv_bytes(), mp::ValueError);
    std::array<std::byte, 8> buffer{};
    CHECK_THROWS_AS(writer.recv_bytes_into(buffer), mp::ValueError);
    CHECK_THROWS_AS(writer.poll(), mp::ValueError);
    CHECK_THROWS_AS(writer.poll(1s), mp::ValueError);
    CHECK_THROWS_WITH(reader.send(2), Catch::Contains("only receives") && Catch::Contains("w sends"));
    CHECK_THROWS_WITH(writer.recv(), Catch::Contains("only sends") && Catch::Contains("r receives"));

    // The kernel enforces it too: a raw write to the receiving end's fd fails.
    char c = 'x';
    CHECK(::send(reader.fileno(), &c, 1, MSG_NOSIGNAL) == -1);
    CHECK_FALSE(reader.poll());
}

TEST_CASE("close() closes the end for every copy here and any use after it throws ValueError", "[connection]") {
    auto [a, b] = mp::Pipe<int>();
    auto a_copy = a;
    CHECK_FALSE(a.closed());
    a.close();
    CHECK(a.closed());
    CHECK(a_copy.closed());
    a.close();  // a second close is harmless, as in Python
    CHECK_THROWS_AS(a_copy.send(1), mp::ValueError);
    CHECK_THROWS_AS(a.recv(), mp::ValueError);
    CHECK_THROWS_AS(a.recv(1s), mp::ValueError);
    CHECK_THROWS_AS(a.send_bytes(view("x")), mp::ValueError);
    CHECK_THROWS_AS(a.recv_bytes(), mp::ValueError);
    std::array<std::byte, 8> buffer{};
    CHECK_THROWS_AS(a.recv_bytes_into(buffer), mp::ValueError);
    CHECK_THROWS_AS(a.poll(), mp::ValueError);
    CHECK_THROWS_AS(a.poll(1s), mp::ValueError);
    CHECK_THROWS_AS(a.fileno(), mp::ValueError);
    CHECK_THROWS_WITH(a.recv(), Catch::Contains("closed"));
    // The other end sees end of file.
    CHECK(b.poll());
    CHECK_THROWS_AS(b.recv(), mp::EOFError);
}

TEST_CASE("A moved-from Connection throws ValueError instead of crashing", "[connection]") {
    auto [a, b] = mp::Pipe<int>();
    auto moved = std::move(a);
    CHECK(a.closed());  // NOLINT(bugprone-use-after-move): that is the point
    CHECK_THROWS_AS(a.send(1), mp::ValueError);
    moved.send(1);
    CHECK(b.recv() == 1);
}

TEST_CASE("The last copy going away closes the fd", "[connection]") {
    int fd = -1;
    {
        auto [a, b] = mp::Pipe<int>();
        fd = a.fileno();
        auto copy = a;
        CHECK(::fcntl(fd, F_GETFD) != -1);
    }
    CHECK(::fcntl(fd, F_GETFD) == -1);
    CHECK(errno == EBADF);
}

TEST_CASE("fileno() is an open, close-on-exec stream socket, usable with poll", "[connection]") {
    auto [a, b] = mp::Pipe<int>();
    auto [r, w] = mp::Pipe<int>(false);
    for (int fd : {a.fileno(), b.fileno(), r.fileno(), w.fileno()}) {
        CHECK(fd >= 0);
        const int flags = ::fcntl(fd, F_GETFD);
        REQUIRE(flags != -1);
        CHECK((flags & FD_CLOEXEC) != 0);
        int type = 0;
        socklen_t len = sizeof type;
        REQUIRE(::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0);
        CHECK(type == SOCK_STREAM);
    }
    CHECK(a.fileno() != b.fileno());
    CHECK(a.fileno() == a.fileno());
    pollfd p{b.fileno(), POLLIN, 0};
    CHECK(::poll(&p, 1, 0) == 0);
    a.send(1);
    CHECK(::poll(&p, 1, 5000) == 1);
}

// ---------------------------------------------------------------------------------
// poll and timeouts.

TEST_CASE("poll: an empty message counts, and stays counted until read (test_empty_string)", "[connection]") {
    auto [a, b] = mp::Pipe<std::string>();
    CHECK_FALSE(a.poll());
    b.send_bytes({});
    CHECK(a.poll());
    CHECK(a.poll());
    CHECK(a.recv_bytes().empty());
    CHECK_FALSE(a.poll());
}

TEST_CASE("poll: messages spaced out in time arrive one by one (test_strings)", "[connection]") {
    const std::vector<std::string> strings{"hello", "", "a", "b", "", "bye", "", "lop"};
    auto [a, b] = mp::Pipe<std::string>();
    mp::Process p(send_strings_slowly, b, strings);
    Reaper reaper{p};
    p.start();
    for (const auto& s : strings) {
        for (int i = 0; i < 500 && !a.poll(10ms); ++i) {
        }
        CHECK(text_of(a.recv_bytes()) == s);
    }
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("poll: messages are not merged (test_dont_merge)", "[connection]") {
    auto [a, b] = mp::Pipe<std::string>();
    CHECK_FALSE(a.poll(0s));
    CHECK_FALSE(a.poll(100ms));
    mp::Process p(send_three_quickly, b);
    Reaper reaper{p};
    p.start();
    CHECK(text_of(a.recv_bytes()) == "a");
    CHECK(a.poll(1s));
    CHECK(a.poll(1s));
    CHECK(text_of(a.recv_bytes()) == "b");
    CHECK(a.poll(1s));
    CHECK(a.poll(0s));
    CHECK(text_of(a.recv_bytes()) == "cd");
    p.join();
}

TEST_CASE("poll(timeout) returns as soon as a message arrives", "[connection]") {
    auto [a, b] = mp::Pipe<std::string>();
    mp::Process p(send_later, b, 100, std::string("late"));
    Reaper reaper{p};
    p.start();
    double t = seconds_to_run([&] { CHECK(a.poll(10s)); });
    CHECK(t < 5.0);
    CHECK(a.recv() == "late");
    p.join();
}

TEST_CASE("recv(timeout) throws TimeoutError when nothing comes, and returns what does", "[connection]") {
    auto [a, b] = mp::Pipe<int>();
    double t = seconds_to_run([&] { CHECK_THROWS_AS(a.recv(200ms), mp::TimeoutError); });
    CHECK(t >= 0.15);
    CHECK(t < 5.0);
    CHECK_THROWS_WITH(a.recv(10ms), Catch::Contains("no message arrived within"));
    CHECK_THROWS_AS(a.recv(-1s), mp::TimeoutError);
    b.send(5);
    CHECK(a.recv(0s) == 5);  // already there: a zero timeout still receives it
    b.send(6);
    CHECK(a.recv(5s) == 6);
    b.close();
    CHECK_THROWS_AS(a.recv(5s), mp::EOFError);  // EOF is an answer, not a timeout
}

TEST_CASE("A timed receive keeps its deadline when the sender stalls in the middle of a message", "[connection]") {
    // The peer writes a header claiming 1000 bytes and 10 of them, then stays silent
    // with its end open: the receive must still end at its timeout, not wait forever.
    std::byte frame[8 + 10] = {};
    frame[0] = std::byte{0xe8};  // 1000, little-endian
    frame[1] = std::byte{0x03};
    SECTION("recv") {
        auto [a, b] = mp::Pipe<std::string>();
        mp_test::put_bytes(b.fileno(), frame, sizeof frame);
        double t = seconds_to_run([&] {
            CHECK_THROWS_WITH(a.recv(300ms), Catch::Contains("stalled in the middle"));
        });
        CHECK(t >= 0.25);
        CHECK(t < 5.0);
        // The rest of that message may still come: this end no longer knows where the
        // next one starts, so it refuses to guess.
        CHECK_FALSE(a.readable());
        CHECK_THROWS_WITH(a.recv(1s), Catch::Contains("stalled in the middle of one"));
        a.send("the other direction still works");
        CHECK(b.recv(5s) == "the other direction still works");
    }
    SECTION("recv_bytes and recv_bytes_into") {
        for (int form = 0; form < 2; ++form) {
            auto [a, b] = mp::Pipe<std::string>();
            mp_test::put_bytes(b.fileno(), frame, 12);  // the header and 4 bytes
            std::vector<std::byte> buffer(2000);
            double t = seconds_to_run([&] {
                if (form == 0)
                    CHECK_THROWS_AS(a.recv_bytes(200ms), mp::TimeoutError);
                else
                    CHECK_THROWS_AS(a.recv_bytes_into(buffer, 0, 200ms), mp::TimeoutError);
            });
            CHECK(t < 5.0);
            CHECK_FALSE(a.readable());
        }
    }
    SECTION("the untimed recv still waits for the whole message") {
        auto [a, b] = mp::Pipe<std::string>();
        mp_test::put_bytes(b.fileno(), frame, 12);
        std::thread finisher([&, fd = b.fileno()] {
            std::this_thread::sleep_for(200ms);
            std::byte rest[1000 - 4] = {};
            mp_test::put_bytes(fd, rest, sizeof rest);
        });
        CHECK_NOTHROW(a.recv_bytes());
        finisher.join();
        CHECK(a.readable());
    }
}

TEST_CASE("recv(timeout) also times out while another thread is the one blocked in recv", "[connection]") {
    auto [a, b] = mp::Pipe<int>();
    std::atomic<int> got{-1};
    std::thread blocked([&, a = a]() mutable { got = a.recv(); });
    std::this_thread::sleep_for(50ms);
    double t = seconds_to_run([&] { CHECK_THROWS_AS(a.recv(200ms), mp::TimeoutError); });
    CHECK(t >= 0.15);
    CHECK(t < 5.0);
    b.send(9);
    blocked.join();
    CHECK(got == 9);
}

namespace {
std::atomic<int> signals_seen{0};
void count_signal(int) { signals_seen.fetch_add(1, std::memory_order_relaxed); }
}  // namespace

TEST_CASE("A signal handled during a blocking recv or poll does not end it (EINTR)", "[connection]") {
    struct sigaction action {};
    struct sigaction previous {};
    action.sa_handler = count_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: the blocked calls do see EINTR
    REQUIRE(::sigaction(SIGUSR1, &action, &previous) == 0);

    auto [a, b] = mp::Pipe<int>();
    std::atomic<int> got{-1};
    std::atomic<bool> timed_out{false};
    std::atomic<double> waited{0};
    std::thread receiver([&, a = a]() mutable {
        got = a.recv();
        auto t0 = Clock::now();
        try {
            a.recv(300ms);
        } catch (const mp::TimeoutError&) {
            timed_out = true;
        }
        waited = seconds_since(t0);
    });
    const pthread_t handle = receiver.native_handle();
    for (int i = 0; i < 5; ++i) {
        std::this_thread::sleep_for(20ms);
        ::pthread_kill(handle, SIGUSR1);
    }
    b.send(11);
    for (int i = 0; i < 5; ++i) {
        std::this_thread::sleep_for(20ms);
        ::pthread_kill(handle, SIGUSR1);
    }
    receiver.join();
    ::sigaction(SIGUSR1, &previous, nullptr);
    CHECK(signals_seen.load() > 0);
    CHECK(got == 11);
    CHECK(timed_out);
    CHECK(waited >= 0.25);
}

// ---------------------------------------------------------------------------------
// End of file and peers that go away.

TEST_CASE("EOFError once the other end is closed and every message has been read", "[connection]") {
    SECTION("duplex") {
        auto [a, b] = mp::Pipe<int>();
        b.send(1);
        b.send(2);
        b.close();
        CHECK(a.poll());
        CHECK(a.recv() == 1);
        CHECK(a.recv() == 2);
        CHECK(a.poll());  // EOF counts as ready, as in Python
        CHECK_THROWS_AS(a.recv(), mp::EOFError);
        CHECK_THROWS_AS(a.recv(), mp::EOFError);  // and stays so
        CHECK_THROWS_AS(a.recv_bytes(), mp::EOFError);
        std::array<std::byte, 8> buffer{};
        CHECK_THROWS_AS(a.recv_bytes_into(buffer), mp::EOFError);
        CHECK_THROWS_WITH(a.recv(), Catch::Contains("other end") && Catch::Contains("closed"));
    }
    SECTION("one-way") {
        auto [r, w] = mp::Pipe<std::string>(false);
        w.send("last");
        w.close();
        CHECK(r.recv() == "last");
        CHECK_THROWS_AS(r.recv(), mp::EOFError);
    }
}

TEST_CASE("EOF comes only once every process holding the other end has closed it", "[connection]") {
    auto [r, w] = mp::Pipe<std::string>(false);
    mp::Process p(send_later, w, 300, std::string("from the child"));
    Reaper reaper{p};
    p.start();
    w.close();  // the child still holds its copy
    CHECK_FALSE(r.poll(100ms));
    CHECK(r.recv(10s) == "from the child");
    CHECK_THROWS_AS(r.recv(10s), mp::EOFError);  // the child exited: its copy is gone too
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("test_spawn_close: the parent closes the child's end, the echo still answers", "[connection]") {
    auto [conn, child_conn] = mp::Pipe<std::string>();
    mp::Process p(echo_bytes<std::string>, child_conn);
    Reaper reaper{p};
    p.start();
    child_conn.close();
    conn.send_bytes(view("hello"));
    CHECK(text_of(conn.recv_bytes()) == "hello");
    conn.send_bytes({});
    conn.close();
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("EOFError when the child holding the other end is SIGKILLed", "[connection]") {
    auto [conn, child_conn] = mp::Pipe<int>();
    mp::Process p(send_one_and_wait<int>, child_conn, 123);
    Reaper reaper{p};
    p.start();
    child_conn.close();  // as in Python: else our own copy keeps the child's end open
    CHECK(conn.recv(10s) == 123);
    p.kill();
    p.join();
    CHECK(p.exitcode() == -SIGKILL);
    CHECK_THROWS_AS(conn.recv(10s), mp::EOFError);
}

TEST_CASE("A peer that dies in the middle of a message gives EOFError", "[connection]") {
    auto [conn, child_conn] = mp::Pipe<std::string>();
    mp::Process p(die_mid_message, child_conn);
    Reaper reaper{p};
    p.start();
    child_conn.close();
    CHECK_THROWS_WITH(conn.recv(10s), Catch::Contains("middle of a message") && Catch::Contains("10 of 1000"));
    CHECK_THROWS_AS(conn.recv(10s), mp::EOFError);
    p.join();
}

TEST_CASE("Sending to a peer that is gone throws EPIPE and SIGPIPE does not kill us", "[connection]") {
    // The default disposition of SIGPIPE would end this process if a send raised it.
    struct sigaction dfl {};
    struct sigaction previous {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    REQUIRE(::sigaction(SIGPIPE, &dfl, &previous) == 0);

    auto check_peer_gone = [](auto&& send) {
        try {
            send();
            FAIL("expected std::system_error");
        } catch (const std::system_error& e) {
            CHECK(e.code() == std::errc::broken_pipe);
            CHECK_THAT(e.what(), Catch::Contains("other end of the pipe is closed"));
        }
    };

    SECTION("closed in this process") {
        auto [a, b] = mp::Pipe<std::string>();
        b.close();
        check_peer_gone([&] { a.send("x"); });
        check_peer_gone([&] { a.send_bytes(view("x")); });
    }
    SECTION("the child holding it was killed, with our messages unread") {
        auto [conn, child_conn] = mp::Pipe<std::string>();
        mp::Process p(send_one_and_wait<std::string>, child_conn, std::string("ready"));
        Reaper reaper{p};
        p.start();
        child_conn.close();
        CHECK(conn.recv(10s) == "ready");
        conn.send("never read");
        p.kill();
        p.join();
        check_peer_gone([&] { conn.send("x"); });
        check_peer_gone([&] { conn.send(std::string(1 << 20, 'y')); });
    }
    ::sigaction(SIGPIPE, &previous, nullptr);
}

// ---------------------------------------------------------------------------------
// Big messages, many children, wait().

TEST_CASE("A 64 MiB message round-trips through a child", "[connection]") {
    constexpr std::size_t size = 64u << 20;
    // Marks every few KiB, so that a lost or repeated chunk shows; a byte-by-byte
    // pattern would make the test slow under the sanitizers.
    static const std::string big = [] {
        std::string s(size, 'x');
        for (std::size_t i = 0; i < size; i += 4093) s[i] = static_cast<char>(i / 4093);
        return s;
    }();

    SECTION("send/recv of a value, decoded and encoded again in the child") {
        auto [conn, child_conn] = mp::Pipe<std::string>();
        mp::Process p(echo_values<std::string>, child_conn, 1);
        Reaper reaper{p};
        p.start();
        conn.send(big);
        CHECK(conn.recv(60s) == big);
        p.join();
        CHECK(p.exitcode() == 0);
    }
    SECTION("send_bytes/recv_bytes") {
        auto [conn, child_conn] = mp::Pipe<std::string>();
        mp::Process p(echo_bytes<std::string>, child_conn);
        Reaper reaper{p};
        p.start();
        conn.send_bytes(view(big));
        auto back = conn.recv_bytes();
        CHECK(back.size() == size);
        CHECK(text_of(back) == big);
        conn.send_bytes({});
        p.join();
        CHECK(p.exitcode() == 0);
    }
}

TEST_CASE("A vector of bytes crosses as it is", "[connection]") {
    std::vector<std::uint8_t> v(1 << 20);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::uint8_t>(i * 7);
    auto [conn, child_conn] = mp::Pipe<std::vector<std::uint8_t>>();
    mp::Process p(echo_values<std::vector<std::uint8_t>>, child_conn, 1);
    Reaper reaper{p};
    p.start();
    conn.send(v);
    CHECK(conn.recv(30s) == v);
    p.join();
}

TEST_CASE("Several children, each with its own pipe, at once", "[connection]") {
    constexpr int children = 4, rounds = 5;
    std::vector<mp::Connection<std::int64_t>> conns;
    std::vector<mp::Process> procs;
    for (int i = 0; i < children; ++i) {
        auto [conn, child_conn] = mp::Pipe<std::int64_t>();
        procs.emplace_back(square_server, child_conn, rounds);
        procs.back().start();
        child_conn.close();
        conns.push_back(conn);
    }
    for (int round = 0; round < rounds; ++round) {
        for (int i = 0; i < children; ++i) conns[i].send(10 * i + round);
        for (int i = 0; i < children; ++i) {
            const std::int64_t n = 10 * i + round;
            CHECK(conns[i].recv(10s) == n * n);
            CHECK(conns[i].recv(10s) == static_cast<std::int64_t>(*procs[i].pid()));
        }
    }
    for (int i = 0; i < children; ++i) {
        CHECK_THROWS_AS(conns[i].recv(10s), mp::EOFError);
        procs[i].join();
        CHECK(procs[i].exitcode() == 0);
    }
}

TEST_CASE("connection::wait returns exactly the connections that are ready", "[connection]") {
    constexpr int children = 4;
    std::vector<mp::Connection<int>> conns;
    std::vector<mp::Process> procs;
    for (int i = 0; i < children; ++i) {
        auto [conn, child_conn] = mp::Pipe<int>();
        procs.emplace_back(answer_when_asked, child_conn, i, 1);
        procs.back().start();
        child_conn.close();
        conns.push_back(conn);
    }
    std::vector<mp::Connection<int>*> all;
    for (auto& c : conns) all.push_back(&c);

    double t = seconds_to_run([&] { CHECK(mp::connection::wait(all, 100ms).empty()); });
    CHECK(t >= 0.05);

    conns[2].send(0);  // only child 2 answers
    auto ready = mp::connection::wait(all, 10s);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0] == &conns[2]);
    CHECK(conns[2].recv() == 2);

    // The others at different times; collect until each has answered and then hung up,
    // as CPython's test_wait does.
    conns[0].send(0);
    conns[3].send(0);
    std::thread later([&] {
        std::this_thread::sleep_for(150ms);
        conns[1].send(0);
    });
    std::vector<mp::Connection<int>*> readers = all;
    std::multiset<int> answers{2};
    auto deadline = Clock::now() + 20s;
    while (!readers.empty() && Clock::now() < deadline) {
        for (auto* r : mp::connection::wait(readers, 10s)) {
            try {
                answers.insert(r->recv());
            } catch (const mp::EOFError&) {
                readers.erase(std::find(readers.begin(), readers.end(), r));
            }
        }
    }
    later.join();
    CHECK(readers.empty());
    CHECK(answers == std::multiset<int>{0, 1, 2, 3});
    for (auto& p : procs) {
        p.join();
        CHECK(p.exitcode() == 0);
    }
}

TEST_CASE("connection::wait: timeouts, negative timeouts, and the untimed form", "[connection]") {
    auto [a, b] = mp::Pipe<int>();
    auto [c, d] = mp::Pipe<int>();
    double t = seconds_to_run([&] { CHECK(mp::connection::wait(std::vector<mp::Connection<int>*>{&a, &c}, 200ms).empty()); });
    CHECK(t >= 0.15);
    CHECK(t < 5.0);
    t = seconds_to_run([&] { CHECK(mp::connection::wait(std::vector<mp::Connection<int>*>{&a}, -1s).empty()); });
    CHECK(t < 1.0);

    d.send(1);
    t = seconds_to_run([&] {
        auto ready = mp::connection::wait(std::vector<mp::Connection<int>*>{&a, &c});
        CHECK(ready == std::vector<mp::Connection<int>*>{&c});
    });
    CHECK(t < 1.0);
    b.close();  // EOF is ready too
    auto ready = mp::connection::wait(std::vector<mp::Connection<int>*>{&a, &c}, 1s);
    CHECK(ready == std::vector<mp::Connection<int>*>{&a, &c});

    auto [r, w] = mp::Pipe<int>(false);
    CHECK_THROWS_AS(mp::connection::wait(std::vector<mp::Connection<int>*>{&w}, 0s), mp::ValueError);
    w.close();
    CHECK_THROWS_AS(mp::connection::wait(std::vector<mp::Connection<int>*>{&w}, 0s), mp::ValueError);
}

TEST_CASE("connection::wait on process sentinels (test_wait_integer)", "[connection]") {
    auto [conn, child_conn] = mp::Pipe<std::string>();
    mp::Process p(send_later, child_conn, 200, std::string("done"));
    Reaper reaper{p};
    p.start();
    child_conn.close();
    const int sentinel = p.sentinel();
    CHECK(mp::connection::wait(std::vector<int>{sentinel}, 50ms).empty());
    auto ready = mp::connection::wait(std::vector<int>{sentinel}, 10s);
    CHECK(ready == std::vector<int>{sentinel});
    CHECK(conn.poll());  // it sent before exiting
    CHECK(conn.recv() == "done");
    p.join();
}

// ---------------------------------------------------------------------------------
// Threads sharing one end.

namespace {
struct Tagged {
    int sender;
    int seq;
    std::string payload;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(sender, seq, payload);
    }
};

// Some messages are far bigger than the socket buffer, so a frame takes several
// writes: without the per-end lock, another thread's frame would land in between.
std::string payload_for(int sender, int seq) {
    const std::size_t size = seq % 1000 == 999 ? 300'000 : static_cast<std::size_t>(seq % 97);
    return std::string(size, static_cast<char>('a' + sender));
}
}  // namespace

TEST_CASE("Two threads sending through one end never interleave their frames", "[connection]") {
    constexpr int per_thread = 10'000;
    auto [a, b] = mp::Pipe<Tagged>();
    std::vector<int> next_seq(2, 0);
    int received = 0, corrupt = 0;
    std::thread receiver([&, b = b]() mutable {
        for (int i = 0; i < 2 * per_thread; ++i) {
            Tagged m = b.recv();
            ++received;
            if (m.sender < 0 || m.sender > 1 || m.seq != next_seq[m.sender] || m.payload != payload_for(m.sender, m.seq))
                ++corrupt;
            else
                ++next_seq[m.sender];
        }
    });
    std::vector<std::thread> senders;
    for (int s = 0; s < 2; ++s)
        senders.emplace_back([&, s, a = a]() mutable {
            for (int i = 0; i < per_thread; ++i) a.send(Tagged{s, i, payload_for(s, i)});
        });
    for (auto& t : senders) t.join();
    receiver.join();
    CHECK(received == 2 * per_thread);
    CHECK(corrupt == 0);
    CHECK(next_seq == std::vector<int>{per_thread, per_thread});
    CHECK_FALSE(b.poll());
}

TEST_CASE("Two threads receiving from one end each get whole messages", "[connection]") {
    constexpr int count = 10'000;
    auto [a, b] = mp::Pipe<Tagged>();
    std::vector<std::vector<int>> seen(2);
    std::atomic<int> corrupt{0};
    std::vector<std::thread> receivers;
    for (int r = 0; r < 2; ++r)
        receivers.emplace_back([&, r, b = b]() mutable {
            try {
                for (;;) {
                    Tagged m = b.recv();
                    if (m.payload != payload_for(0, m.seq)) ++corrupt;
                    seen[r].push_back(m.seq);
                }
            } catch (const mp::EOFError&) {
            }
        });
    for (int i = 0; i < count; ++i) a.send(Tagged{0, i, payload_for(0, i)});
    a.close();
    for (auto& t : receivers) t.join();
    CHECK(corrupt == 0);
    std::vector<int> all = seen[0];
    all.insert(all.end(), seen[1].begin(), seen[1].end());
    std::sort(all.begin(), all.end());
    std::vector<int> expected(count);
    std::iota(expected.begin(), expected.end(), 0);
    CHECK(all == expected);
    for (auto& s : seen) CHECK(std::is_sorted(s.begin(), s.end()));
}

TEST_CASE("close() from another thread while one is blocked in recv", "[connection]") {
    auto [a, b] = mp::Pipe<int>();
    std::atomic<int> got{-1};
    std::thread blocked([&, a = a]() mutable { got = a.recv(); });
    std::this_thread::sleep_for(50ms);
    a.close();  // returns at once; the fd stays open for the recv in progress
    CHECK(a.closed());
    CHECK_THROWS_AS(a.recv(), mp::ValueError);
    b.send(4);
    blocked.join();
    CHECK(got == 4);
    // Now that the recv has returned, the fd is closed and the other end sees it.
    CHECK_THROWS_AS(b.recv(5s), mp::EOFError);
}
