// Listener and Client (connection.hpp), the sockets under them (detail/socket.hpp) and the
// HMAC handshake (detail/wire.hpp): a port of the behaviours CPython checks in
// _TestListener, _TestListenerClient, OtherTest and ChallengeResponseTest
// (Lib/test/_test_multiprocessing.py), written for the C++ API, plus what a server facing
// a network needs: a wrong key or a peer that is not ours fails one accept() and not the
// Listener, and a hostile frame header costs nothing.
//
// A Client's handshake needs the Listener's accept() running at the same time, so one of
// the two runs in a std::async thread (or a child process). No Catch2 macro runs outside
// the main thread: the other threads report what happened as a string (outcome()).
#include <catch2/catch.hpp>

#include <multiprocessing.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <future>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;
using mp::connection::Address;
using mp::connection::Client;
using mp::connection::Listener;
using mp_test::seconds_since;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------
// The largest single allocation since the last reset: "a 1 TiB header allocates nothing"
// is checked as "nothing near that size was asked for". Replacing the global operator new
// is allowed (this test program is its own executable). Every unaligned form is replaced,
// so that each delete meets its own new (AddressSanitizer checks the pairing); the aligned
// forms stay the library's, and pair among themselves. (noinline: inlined into a caller,
// GCC's -Wmismatched-new-delete takes the free() for a mismatch with a malloc() it cannot
// see.)

namespace {
std::atomic<std::size_t> largest_allocation{0};

[[gnu::noinline]] void* counted_malloc(std::size_t size) noexcept {
    std::size_t seen = largest_allocation.load(std::memory_order_relaxed);
    while (size > seen && !largest_allocation.compare_exchange_weak(seen, size, std::memory_order_relaxed)) {
    }
    return std::malloc(size ? size : 1);
}
}  // namespace

[[gnu::noinline]] void* operator new(std::size_t size) {
    if (void* p = counted_malloc(size)) return p;
    throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t size) {
    if (void* p = counted_malloc(size)) return p;
    throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return counted_malloc(size); }
[[gnu::noinline]] void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return counted_malloc(size); }
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

// ---------------------------------------------------------------------------------
// Helpers.

std::span<const std::byte> view(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }
std::string text_of(std::span<const std::byte> b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

// What a call did, as one line a check can match: "ok", or the exception's kind and what().
template <class F>
std::string outcome(F&& f) {
    try {
        f();
        return "ok";
    } catch (const mp::AuthenticationError& e) {
        return std::string("AuthenticationError: ") + e.what();
    } catch (const mp::TimeoutError& e) {
        return std::string("TimeoutError: ") + e.what();
    } catch (const mp::ProcessError& e) {
        return std::string("ProcessError: ") + e.what();
    } catch (const mp::EOFError& e) {
        return std::string("EOFError: ") + e.what();
    } catch (const mp::ValueError& e) {
        return std::string("ValueError: ") + e.what();
    } catch (const std::exception& e) {
        return std::string("std::exception: ") + e.what();
    }
}

template <class F>
auto in_thread(F&& f) {
    return std::async(std::launch::async, std::forward<F>(f));
}

// Names no other test run uses at the same time.
std::string unique_name(const char* what) {
    static int counter = 0;
    return std::string("mp-test-") + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

bool file_exists(const std::string& path) {
    struct stat st{};
    return ::stat(path.c_str(), &st) == 0;
}

bool has_cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }
bool is_blocking(int fd) { return (::fcntl(fd, F_GETFL) & O_NONBLOCK) == 0; }
int int_option(int fd, int level, int name) {
    int value = 0;
    socklen_t length = sizeof value;
    ::getsockopt(fd, level, name, &value, &length);
    return value;
}

// A port nothing listens on (as far as anyone can know): one that was just free.
std::uint16_t free_port() {
    mp::detail::net::ListeningSocket probe(Address{"127.0.0.1", 0});
    return probe.address().port;  // closed again at the end of this scope
}

// A raw connection, for the peers that are not a Client.
mp::detail::net::Socket raw_connect(const Address& where) {
    return mp::detail::net::connect(where, mp::detail::Deadline(10s));
}

void put_frame(int fd, std::string_view payload) { mp::detail::wire::send_frame(fd, view(payload), "test"); }

void put_header(int fd, std::uint64_t claimed_length) {
    std::byte header[mp::detail::wire::frame_header_size];
    mp::detail::wire::encode_frame_header(header, claimed_length);
    mp_test::put_bytes(fd, header, sizeof header);
}

std::string get_frame(int fd) {
    return text_of(mp::detail::wire::recv_frame(fd, 1 << 20, mp::detail::Deadline(10s), "test"));
}

struct SocketPair {
    mp::detail::net::Socket a, b;
    SocketPair() {
        int fds[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
        a = mp::detail::net::Socket(fds[0]);
        b = mp::detail::net::Socket(fds[1]);
    }
};

constexpr std::uint64_t one_tebibyte = std::uint64_t(1) << 40;

// Messages both ways, raw bytes, poll, and EOF once one end closes: what a Pipe end does.
void check_duplex(mp::Connection<std::string> a, mp::Connection<std::string> b) {
    a.send("hello");
    CHECK(b.recv() == "hello");
    b.send(std::string(200'000, 'x'));  // more than a socket buffer: written while read
    CHECK(a.recv() == std::string(200'000, 'x'));
    a.send_bytes(view("raw bytes"));
    CHECK(text_of(b.recv_bytes()) == "raw bytes");
    CHECK_FALSE(a.poll());
    b.send("ping");
    CHECK(a.poll(10s));
    CHECK(a.recv() == "ping");
    CHECK(a.readable());
    CHECK(a.writable());
    a.close();
    CHECK(a.closed());
    CHECK_THROWS_AS(b.recv(), mp::EOFError);
}

// The same exchange between a Listener and a Client in another thread.
void check_listener_and_client(const Address& where, std::optional<std::string> key) {
    Listener<std::string> listener(where, key);
    auto client = in_thread([address = listener.address(), key] { return Client<std::string>(address, key); });
    auto server_end = listener.accept(30s);
    auto client_end = client.get();
    check_duplex(client_end, server_end);
}

// ---------------------------------------------------------------------------------
// Targets run in child processes.

void child_says_hello(Address address, std::string key) {
    auto conn = Client<std::string>(address, key, 20s);
    conn.send("hello from " + std::to_string(::getpid()));
    CHILD_REQUIRE(conn.recv() == "welcome");
    conn.close();
}

// CPython's _TestListenerClient._test: connect, send, close, exit.
void child_sends_and_exits(Address address) {
    auto conn = Client<std::string>(address, std::nullopt, 20s);
    conn.send("hello");
    conn.close();
}

void child_sends_index(Address address, std::string key, int index) {
    auto conn = Client<int>(address, key, 30s);
    conn.send(index);
    CHILD_REQUIRE(conn.recv() == index * 10);
}

}  // namespace

// ---------------------------------------------------------------------------------
// Messages flow: TCP, abstract and filesystem AF_UNIX, with and without a key.

TEST_CASE("Listener and Client with the right key exchange messages both ways over TCP 127.0.0.1") {
    check_listener_and_client({"127.0.0.1", 0}, "secret");
}

TEST_CASE("Listener and Client with the right key exchange messages over an abstract unix socket") {
    check_listener_and_client(Address::unix_socket("@" + unique_name("abstract")), "secret");
}

TEST_CASE("Listener and Client over a filesystem unix socket: the file exists while listening and goes at close") {
    const std::string path = "/tmp/" + unique_name("fs") + ".sock";
    {
        Listener<std::string> listener(Address::unix_socket(path), "secret");
        CHECK(listener.address() == Address::unix_socket(path));
        CHECK(file_exists(path));
        auto client = in_thread([&] { return Client<std::string>(listener.address(), "secret"); });
        auto server_end = listener.accept(30s);
        check_duplex(client.get(), server_end);
        listener.close();
        CHECK_FALSE(file_exists(path));
    }
    CHECK_FALSE(file_exists(path));
}

TEST_CASE("Without an authkey on either side there is no handshake, and an empty key is a key (bpo-43952)") {
    SECTION("no key") { check_listener_and_client({"127.0.0.1", 0}, std::nullopt); }
    SECTION("empty key") { check_listener_and_client({"127.0.0.1", 0}, std::string()); }
    SECTION("a key with NUL bytes") { check_listener_and_client({"127.0.0.1", 0}, std::string("a\0b", 3)); }
}

TEST_CASE("localhost and ::1 work as hosts") {
    check_listener_and_client({"localhost", 0}, "k");
    std::optional<Listener<int>> v6;
    try {
        v6.emplace(Address{"::1", 0});
    } catch (const mp::ProcessError& e) {
        WARN("no IPv6 loopback here, skipping the ::1 part: " << e.what());
        return;
    }
    CHECK(v6->address().host == "::1");
    CHECK_THAT(v6->address().to_string(), StartsWith("[::1]:"));
    auto client = in_thread([address = v6->address()] { return Client<int>(address, std::nullopt); });
    auto server_end = v6->accept(30s);
    auto client_end = client.get();
    client_end.send(6);
    CHECK(server_end.recv() == 6);
}

// CPython's test_issue16955: data sent by the accepting side shows in the client's poll().
TEST_CASE("A Client's poll() sees what the accepted end sent") {
    Listener<std::string> listener;
    auto client = Client<std::string>(listener.address());
    auto accepted = listener.accept();
    accepted.send_bytes(view("hello"));
    CHECK(client.poll(10s));
    CHECK(text_of(client.recv_bytes()) == "hello");
}

TEST_CASE("Listening, accepted and connected sockets are CLOEXEC, and TCP ones TCP_NODELAY with keepalive") {
    Listener<int> listener({"127.0.0.1", 0}, "k");
    auto client = in_thread([&] { return Client<int>(listener.address(), "k"); });
    auto accepted = listener.accept(30s);
    auto connected = client.get();
    for (int fd : {accepted.fileno(), connected.fileno()}) {
        CHECK(has_cloexec(fd));
        CHECK(is_blocking(fd));
        CHECK(int_option(fd, IPPROTO_TCP, TCP_NODELAY) != 0);
        CHECK(int_option(fd, SOL_SOCKET, SO_KEEPALIVE) != 0);
    }
    mp::detail::net::ListeningSocket listening(Address{"127.0.0.1", 0});
    CHECK(has_cloexec(listening.fd()));
    CHECK_FALSE(is_blocking(listening.fd()));  // so that accept() after poll() never blocks
    const auto peer = listener.last_accepted();
    REQUIRE(peer.has_value());
    CHECK(peer->host == "127.0.0.1");
    CHECK(peer->port != 0);
}

// ---------------------------------------------------------------------------------
// Addresses and listening.

TEST_CASE("Port 0 gives a real port in address(), and Address prints as host:port") {
    Listener<int> listener;  // Python's default: 127.0.0.1, a free port
    const Address a = listener.address();
    CHECK(a.host == "127.0.0.1");
    CHECK(a.port != 0);
    CHECK_FALSE(a.is_unix());
    CHECK(a.to_string() == "127.0.0.1:" + std::to_string(a.port));
    CHECK(Address{}.to_string() == "127.0.0.1:0");
    CHECK(Address::unix_socket("@x").to_string() == "unix:@x");
    CHECK(Address::unix_socket("/tmp/x").to_string() == "unix:/tmp/x");
    CHECK(Address::unix_socket("/tmp/x").is_unix());
}

// CPython's test_multiple_bind.
TEST_CASE("A second Listener on a taken address fails with a ProcessError that says so") {
    SECTION("TCP") {
        Listener<int> first;
        const auto taken = first.address();
        const auto result = outcome([&] { Listener<int> second(taken); });
        CHECK_THAT(result, StartsWith("ProcessError") && Contains("already in use") && Contains(taken.to_string()));
    }
    SECTION("abstract unix name") {
        const auto name = Address::unix_socket("@" + unique_name("taken"));
        Listener<int> first(name);
        const auto result = outcome([&] { Listener<int> second(name); });
        CHECK_THAT(result, StartsWith("ProcessError") && Contains("already in use") && Contains("@"));
    }
    SECTION("filesystem unix path: the first Listener's file is left alone") {
        const auto path = "/tmp/" + unique_name("taken") + ".sock";
        Listener<int> first(Address::unix_socket(path));
        const auto result = outcome([&] { Listener<int> second(Address::unix_socket(path)); });
        CHECK_THAT(result, StartsWith("ProcessError") && Contains("already in use") && Contains(path));
        CHECK(file_exists(path));
        auto client = Client<int>(first.address());
        auto accepted = first.accept(10s);
        client.send(1);
        CHECK(accepted.recv() == 1);
    }
    SECTION("a unix path longer than sun_path") {
        const auto result = outcome([] { Listener<int> l(Address::unix_socket("/tmp/" + std::string(200, 'p'))); });
        CHECK_THAT(result, StartsWith("ProcessError") && Contains("limit"));
    }
}

TEST_CASE("accept(timeout) throws TimeoutError when nobody connects") {
    Listener<int> listener;
    const auto t0 = Clock::now();
    CHECK_THAT(outcome([&] { listener.accept(200ms); }),
               StartsWith("TimeoutError") && Contains(listener.address().to_string()));
    CHECK(seconds_since(t0) < 20);
    // Still usable afterwards.
    auto client = Client<int>(listener.address());
    auto accepted = listener.accept(10s);
    client.send(3);
    CHECK(accepted.recv() == 3);
}

// CPython's test_context: a closed Listener accepts no more.
TEST_CASE("A closed Listener refuses accept() with ValueError, and close() from another thread wakes accept()") {
    SECTION("closed before") {
        Listener<int> listener;
        listener.close();
        listener.close();  // twice is fine
        CHECK(listener.closed());
        CHECK_THAT(outcome([&] { listener.accept(); }), StartsWith("ValueError"));
    }
    SECTION("closed while accept() waits") {
        Listener<int> listener;
        auto waiting = in_thread([&] { return outcome([&] { listener.accept(); }); });
        std::this_thread::sleep_for(100ms);  // (either order ends in ValueError)
        listener.close();
        REQUIRE(waiting.wait_for(20s) == std::future_status::ready);
        CHECK_THAT(waiting.get(), StartsWith("ValueError") && Contains("closed"));
    }
    SECTION("closed while accept() waits, on a unix socket") {
        Listener<int> listener(Address::unix_socket("@" + unique_name("wake")));
        auto waiting = in_thread([&] { return outcome([&] { listener.accept(); }); });
        std::this_thread::sleep_for(100ms);
        listener.close();
        REQUIRE(waiting.wait_for(20s) == std::future_status::ready);
        CHECK_THAT(waiting.get(), StartsWith("ValueError") && Contains("closed"));
    }
    SECTION("a forked child closing its inherited copy leaves the parent's Listener and socket file alone") {
        const std::string path = "/tmp/" + unique_name("inherited") + ".sock";
        Listener<int> listener(Address::unix_socket(path));
        const pid_t child = ::fork();
        if (child == 0) {
            listener.close();
            ::_exit(0);
        }
        REQUIRE(child > 0);
        int status = 0;
        REQUIRE(::waitpid(child, &status, 0) == child);
        CHECK(file_exists(path));
        CHECK_FALSE(listener.closed());
        auto client = Client<int>(listener.address());
        auto accepted = listener.accept(10s);
        client.send(9);
        CHECK(accepted.recv() == 9);
    }
    SECTION("connections already accepted outlive the Listener") {
        std::optional<Listener<int>> listener(std::in_place);
        auto client = Client<int>(listener->address());
        auto accepted = listener->accept(10s);
        listener.reset();
        client.send(42);
        CHECK(accepted.recv() == 42);
    }
}

// ---------------------------------------------------------------------------------
// Connecting to nothing.

TEST_CASE("Client to a port where nothing listens gives a ProcessError naming the address, quickly") {
    const Address nowhere{"127.0.0.1", free_port()};
    const auto t0 = Clock::now();
    const auto result = outcome([&] { Client<int>(nowhere, "k"); });
    CHECK_THAT(result, StartsWith("ProcessError") && Contains(nowhere.to_string()) && Contains("not running"));
    CHECK(seconds_since(t0) < 10);
}

TEST_CASE("Client to a unix socket nobody listens on gives a ProcessError that says the server is not running") {
    SECTION("abstract") {
        const auto nowhere = Address::unix_socket("@" + unique_name("nobody"));
        CHECK_THAT(outcome([&] { Client<int>(nowhere); }),
                   StartsWith("ProcessError") && Contains(nowhere.unix_path) && Contains("not running"));
    }
    SECTION("filesystem") {
        const auto nowhere = Address::unix_socket("/tmp/" + unique_name("nobody") + ".sock");
        CHECK_THAT(outcome([&] { Client<int>(nowhere); }),
                   StartsWith("ProcessError") && Contains(nowhere.unix_path) && Contains("not running"));
    }
}

TEST_CASE("Client(timeout) throws TimeoutError while the Listener's backlog is full") {
    // A full AF_UNIX backlog is the one "cannot connect yet" that is certain on Linux: a
    // Listener with backlog 1 that never accepts takes two connections, then no more.
    Listener<int> listener(Address::unix_socket("@" + unique_name("backlog")), std::nullopt, 1);
    std::vector<mp::Connection<int>> held;
    std::string last;
    for (int i = 0; i < 16; ++i) {
        last = outcome([&] { held.push_back(Client<int>(listener.address(), std::nullopt, 300ms)); });
        if (last != "ok") break;
    }
    CHECK_THAT(last, StartsWith("TimeoutError") && Contains(listener.address().to_string()));
    CHECK(held.size() >= 1);
    // Room again once one is accepted: an untimed Client waits for it instead of failing.
    auto late = in_thread([&] { return outcome([&] { Client<int>(listener.address()).send(7); }); });
    for (std::size_t i = 0; i < held.size(); ++i) (void)listener.accept(10s);
    auto third = listener.accept(10s);
    CHECK(late.get() == "ok");
    CHECK(third.recv() == 7);
}

// ---------------------------------------------------------------------------------
// Wrong keys and strangers.

TEST_CASE("A wrong key fails the Client with AuthenticationError, fails that accept, and the next client is served") {
    Listener<int> listener({"127.0.0.1", 0}, "right key");
    auto wrong = in_thread([&] { return outcome([&] { Client<int>(listener.address(), "wrong key"); }); });
    CHECK_THAT(outcome([&] { listener.accept(30s); }),
               StartsWith("AuthenticationError") && Contains("does not match") && Contains("next accept"));
    CHECK_THAT(wrong.get(), StartsWith("AuthenticationError") && Contains("does not match"));

    auto right = in_thread([&] {
        auto conn = Client<int>(listener.address(), "right key");
        conn.send(1729);
        return conn.recv();
    });
    auto accepted = listener.accept(30s);
    CHECK(accepted.recv() == 1729);
    accepted.send(4104);
    CHECK(right.get() == 4104);
}

TEST_CASE("A Client without a key reads the challenge as data, and a Client with a key times out on a keyless Listener") {
    SECTION("keyless Client, Listener with a key: the handshake fails the accept") {
        Listener<int> listener({"127.0.0.1", 0}, "k");
        auto client = in_thread([&] {
            auto conn = Client<int>(listener.address());
            const auto first = conn.recv_bytes(10s);  // what Python's Client would see too
            conn.close();
            return text_of(first);
        });
        CHECK_THAT(outcome([&] { listener.accept(30s); }), StartsWith("AuthenticationError"));
        CHECK_THAT(client.get(), StartsWith("#CHALLENGE#{sha256}"));
    }
    SECTION("Client with a key, Listener without: TimeoutError that says why") {
        Listener<int> listener;
        const auto result = outcome([&] { Client<int>(listener.address(), "k", 500ms); });
        CHECK_THAT(result, StartsWith("TimeoutError") && Contains("expects no authkey"));
    }
}

TEST_CASE("A peer that sends garbage during the handshake fails that accept fast, and the Listener goes on") {
    Listener<int> listener({"127.0.0.1", 0}, "k");
    SECTION("an HTTP request") {
        auto stranger = raw_connect(listener.address());
        const std::string_view request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        mp_test::put_bytes(stranger.fd(), request.data(), request.size());
        const auto t0 = Clock::now();
        CHECK_THAT(outcome([&] { listener.accept(30s); }),
                   StartsWith("AuthenticationError") && Contains("not a multiprocessing"));
        CHECK(seconds_since(t0) < 10);  // rejected, not left to the handshake's time limit
    }
    SECTION("a frame header claiming 1 TiB: rejected without reading or allocating it") {
        auto stranger = raw_connect(listener.address());
        put_header(stranger.fd(), one_tebibyte);
        largest_allocation = 0;
        const auto t0 = Clock::now();
        CHECK_THAT(outcome([&] { listener.accept(30s); }),
                   StartsWith("AuthenticationError") && Contains("oversized"));
        CHECK(seconds_since(t0) < 10);
        CHECK(largest_allocation.load() < (std::size_t(1) << 20));
    }
    SECTION("a well-formed frame with a wrong answer") {
        auto stranger = raw_connect(listener.address());
        put_frame(stranger.fd(), "something bogus");
        CHECK_THAT(outcome([&] { listener.accept(30s); }), StartsWith("AuthenticationError"));
        // The stranger got the challenge, then the verdict.
        CHECK_THAT(get_frame(stranger.fd()), StartsWith("#CHALLENGE#{sha256}"));
        CHECK(get_frame(stranger.fd()) == "#FAILURE#");
    }
    SECTION("a peer that connects and hangs up at once") {
        raw_connect(listener.address()).close();
        CHECK_THAT(outcome([&] { listener.accept(30s); }), StartsWith("AuthenticationError"));
    }
    // In every case the next, real client gets through.
    auto client = in_thread([&] { Client<int>(listener.address(), "k").send(5); });
    auto accepted = listener.accept(30s);
    CHECK(accepted.recv() == 5);
    client.get();
}

TEST_CASE("A server that is not a Listener fails the Client with AuthenticationError fast") {
    mp::detail::net::ListeningSocket fake(Address{"127.0.0.1", 0});
    auto serve = [&](auto behave) {
        return in_thread([&fake, behave] {
            auto peer = fake.accept(mp::detail::Deadline(30s));
            if (peer) behave(peer->fd());
            std::this_thread::sleep_for(200ms);  // keep the socket open while the Client reads
        });
    };
    std::string result;
    SECTION("it sends a banner") {
        auto server = serve([](int fd) { mp_test::put_bytes(fd, "SSH-2.0-OpenSSH_9.2\r\n", 21); });
        result = outcome([&] { Client<int>(fake.address(), "k", 20s); });
        server.get();
        CHECK_THAT(result, StartsWith("AuthenticationError") && Contains("not a multiprocessing"));
    }
    SECTION("it claims a 1 TiB frame") {
        auto server = serve([](int fd) { put_header(fd, one_tebibyte); });
        largest_allocation = 0;
        result = outcome([&] { Client<int>(fake.address(), "k", 20s); });
        server.get();
        CHECK_THAT(result, StartsWith("AuthenticationError") && Contains("oversized"));
        CHECK(largest_allocation.load() < (std::size_t(1) << 20));
    }
    SECTION("it sends a frame that is not a challenge") {
        auto server = serve([](int fd) { put_frame(fd, "#WELCOME#"); });
        result = outcome([&] { Client<int>(fake.address(), "k", 20s); });
        server.get();
        CHECK_THAT(result, StartsWith("AuthenticationError") && Contains("not a challenge"));
    }
    SECTION("it says nothing: TimeoutError at the Client's timeout") {
        auto server = serve([](int) {});
        result = outcome([&] { Client<int>(fake.address(), "k", 100ms); });
        server.get();
        CHECK_THAT(result, StartsWith("TimeoutError") && Contains(fake.address().to_string()));
    }
}

// ---------------------------------------------------------------------------------
// Processes.

TEST_CASE("A Client in a forked child talks to a Listener in the parent") {
    Listener<std::string> listener({"127.0.0.1", 0}, "secret");
    mp::Process p(child_says_hello, listener.address(), std::string("secret"));
    mp_test::Reaper reaper{p};
    p.start();
    auto conn = listener.accept(30s);
    CHECK(conn.recv(20s) == "hello from " + std::to_string(*p.pid()));
    conn.send("welcome");
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    CHECK_THROWS_AS(conn.recv(20s), mp::EOFError);
}

// CPython's test_issue14725: the client has connected, written and exited before accept().
TEST_CASE("A client that connected, sent and exited before accept() is still accepted with its message") {
    Listener<std::string> listener(Address::unix_socket("@" + unique_name("early")));
    mp::Process p(child_sends_and_exits, listener.address());
    mp_test::Reaper reaper{p};
    p.start();
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    auto conn = listener.accept(10s);
    CHECK(conn.recv(10s) == "hello");
    CHECK_THROWS_AS(conn.recv(10s), mp::EOFError);
}

TEST_CASE("Several children connect at once to a Listener with backlog 1 and all get through the handshake") {
    Listener<int> listener({"127.0.0.1", 0}, "k");
    mp_test::Children children;
    constexpr int n = 4;
    for (int i = 1; i <= n; ++i) children.start(child_sends_index, listener.address(), std::string("k"), i);
    std::vector<int> seen;
    std::vector<mp::Connection<int>> conns;
    for (int i = 0; i < n; ++i) {
        auto conn = listener.accept(30s);
        const int index = conn.recv(20s);
        conn.send(index * 10);
        seen.push_back(index);
        conns.push_back(conn);
    }
    std::sort(seen.begin(), seen.end());
    CHECK(seen == std::vector<int>{1, 2, 3, 4});
    children.join_all();
}

// ---------------------------------------------------------------------------------
// The handshake's parts (CPython's OtherTest and ChallengeResponseTest).

TEST_CASE("HMAC-SHA256 gives the RFC 4231 values, also for an empty key") {
    const auto hex = [](const mp::detail::auth::Digest& d) {
        static const char digits[] = "0123456789abcdef";
        std::string s;
        for (unsigned char c : d) {
            s += digits[c >> 4];
            s += digits[c & 15];
        }
        return s;
    };
    CHECK(hex(mp::detail::auth::hmac_sha256("Jefe", view("what do ya want for nothing?"))) ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    CHECK(hex(mp::detail::auth::hmac_sha256("", view(""))) ==
          "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

// ChallengeResponseTest.test_challengeresponse.
TEST_CASE("create_response answers with the {sha256} prefix and verify_response accepts exactly that answer") {
    namespace auth = mp::detail::auth;
    const std::string key = "supadupasecretkey";
    const std::string message = "{sha256}is-twenty-bytes-long";
    const std::string response = auth::create_response(key, message);
    CHECK_THAT(response, StartsWith("{sha256}"));
    CHECK(response.size() == 8 + 32);
    CHECK(auth::verify_response(key, message, response));
    CHECK_FALSE(auth::verify_response("another key", message, response));
    CHECK_FALSE(auth::verify_response(key, message + "x", response));
    for (std::size_t i = 0; i < response.size(); ++i) {
        std::string flipped = response;
        flipped[i] = static_cast<char>(flipped[i] ^ 1);
        CHECK_FALSE(auth::verify_response(key, message, flipped));
    }
    CHECK_FALSE(auth::verify_response(key, message, response.substr(0, 39)));
    CHECK_FALSE(auth::verify_response(key, message, ""));
}

TEST_CASE("random_authkey gives 32 random bytes") {
    const auto a = mp::detail::auth::random_authkey();
    const auto b = mp::detail::auth::random_authkey();
    CHECK(a.size() == 32);
    CHECK(b.size() == 32);
    CHECK(a != b);
}

// OtherTest.test_deliver_challenge_auth_failure.
TEST_CASE("deliver_challenge with a bogus answer throws AuthenticationError and tells the peer #FAILURE#") {
    SocketPair pair;
    put_frame(pair.b.fd(), "something bogus");
    CHECK_THAT(outcome([&] { mp::detail::auth::deliver_challenge(pair.a.fd(), "abc", mp::detail::Deadline(10s)); }),
               StartsWith("AuthenticationError"));
    const auto challenge = get_frame(pair.b.fd());
    CHECK_THAT(challenge, StartsWith("#CHALLENGE#{sha256}"));
    CHECK(challenge.size() == 11 + 8 + 40);
    CHECK(get_frame(pair.b.fd()) == "#FAILURE#");
}

// OtherTest.test_answer_challenge_auth_failure.
TEST_CASE("answer_challenge throws AuthenticationError on a verdict that is not #WELCOME#, after a correct answer") {
    SocketPair pair;
    const std::string message = "{sha256}" + std::string(40, 'r');
    put_frame(pair.b.fd(), "#CHALLENGE#" + message);
    SECTION("bogus") {
        put_frame(pair.b.fd(), "something bogus");
        CHECK_THAT(outcome([&] { mp::detail::auth::answer_challenge(pair.a.fd(), "abc", mp::detail::Deadline(10s)); }),
                   StartsWith("AuthenticationError") && Contains("neither"));
    }
    SECTION("#FAILURE#") {
        put_frame(pair.b.fd(), "#FAILURE#");
        CHECK_THAT(outcome([&] { mp::detail::auth::answer_challenge(pair.a.fd(), "abc", mp::detail::Deadline(10s)); }),
                   StartsWith("AuthenticationError") && Contains("does not match"));
    }
    CHECK(mp::detail::auth::verify_response("abc", message, get_frame(pair.b.fd())));
}

TEST_CASE("answer_challenge refuses what is not a sha256 challenge") {
    const auto answer_to = [](std::string first_frame) {
        SocketPair pair;
        put_frame(pair.b.fd(), first_frame);
        return outcome([&] { mp::detail::auth::answer_challenge(pair.a.fd(), "abc", mp::detail::Deadline(10s)); });
    };
    CHECK_THAT(answer_to("hello"), StartsWith("AuthenticationError") && Contains("not a challenge"));
    CHECK_THAT(answer_to("#CHALLENGE#short"), StartsWith("AuthenticationError") && Contains("too short"));
    CHECK_THAT(answer_to("#CHALLENGE#" + std::string(40, 'm')), StartsWith("AuthenticationError") && Contains("sha256"));
    CHECK_THAT(answer_to("#CHALLENGE#{md5}" + std::string(20, 'm')),
               StartsWith("AuthenticationError") && Contains("sha256"));
}

TEST_CASE("server_handshake and client_handshake agree on the same key and both fail on different keys") {
    namespace auth = mp::detail::auth;
    const auto run = [](std::string server_key, std::string client_key) {
        SocketPair pair;
        auto client = in_thread([&] {
            return outcome([&] { auth::client_handshake(pair.b.fd(), client_key, mp::detail::Deadline(20s)); });
        });
        const auto server = outcome([&] { auth::server_handshake(pair.a.fd(), server_key, mp::detail::Deadline(20s)); });
        return std::pair(server, client.get());
    };
    const auto [server_ok, client_ok] = run("k", "k");
    CHECK(server_ok == "ok");
    CHECK(client_ok == "ok");
    const auto [server_bad, client_bad] = run("k1", "k2");
    CHECK_THAT(server_bad, StartsWith("AuthenticationError") && Contains("does not match ours"));
    CHECK_THAT(client_bad, StartsWith("AuthenticationError") && Contains("does not match the peer's"));
}

// ---------------------------------------------------------------------------------
// Frames with limits and deadlines.

TEST_CASE("send_frame and recv_frame carry frames, the empty one included") {
    SocketPair pair;
    mp::detail::wire::send_frame(pair.a.fd(), view("abc"), "test");
    mp::detail::wire::send_frame(pair.a.fd(), {}, "test");
    CHECK(get_frame(pair.b.fd()) == "abc");
    CHECK(get_frame(pair.b.fd()).empty());
}

TEST_CASE("recv_frame: EOFError at a clean end, ProcessError when cut short, TimeoutError at the deadline") {
    using mp::detail::Deadline;
    using mp::detail::wire::recv_frame;
    SocketPair pair;
    SECTION("nothing arrives") {
        CHECK_THAT(outcome([&] { recv_frame(pair.a.fd(), 100, Deadline(50ms), "t"); }), StartsWith("TimeoutError"));
    }
    SECTION("half a header, then silence") {
        mp_test::put_bytes(pair.b.fd(), "\x05\0\0", 3);
        CHECK_THAT(outcome([&] { recv_frame(pair.a.fd(), 100, Deadline(100ms), "t"); }),
                   StartsWith("TimeoutError") && Contains("middle"));
    }
    SECTION("a header and part of the payload, then silence") {
        put_header(pair.b.fd(), 10);
        mp_test::put_bytes(pair.b.fd(), "abc", 3);
        CHECK_THAT(outcome([&] { recv_frame(pair.a.fd(), 100, Deadline(100ms), "t"); }),
                   StartsWith("TimeoutError") && Contains("middle"));
    }
    SECTION("clean EOF") {
        pair.b.close();
        CHECK_THAT(outcome([&] { recv_frame(pair.a.fd(), 100, Deadline(10s), "t"); }), StartsWith("EOFError"));
    }
    SECTION("EOF inside the frame") {
        put_header(pair.b.fd(), 10);
        mp_test::put_bytes(pair.b.fd(), "abc", 3);
        pair.b.close();
        CHECK_THAT(outcome([&] { recv_frame(pair.a.fd(), 100, Deadline(10s), "t"); }),
                   StartsWith("ProcessError") && Contains("3 of 10"));
    }
    SECTION("oversized: the payload is left unread") {
        put_header(pair.b.fd(), 101);
        mp_test::put_bytes(pair.b.fd(), "payload", 7);
        CHECK_THAT(outcome([&] { recv_frame(pair.a.fd(), 100, Deadline(10s), "t"); }),
                   StartsWith("ProcessError") && Contains("oversized"));
        char rest[16];
        CHECK(::recv(pair.a.fd(), rest, sizeof rest, MSG_DONTWAIT) == 7);
    }
    SECTION("a frame dribbled byte by byte arrives whole within the deadline") {
        auto writer = in_thread([&] {
            std::string frame(8, '\0');
            frame[0] = 5;
            frame += "hello";
            for (char c : frame) {
                mp_test::put_bytes(pair.b.fd(), &c, 1);
                std::this_thread::sleep_for(2ms);
            }
        });
        CHECK(text_of(recv_frame(pair.a.fd(), 100, Deadline(20s), "t")) == "hello");
        writer.get();
    }
}

TEST_CASE("Socket owns its fd: release() hands it over, shutdown() wakes a reader") {
    SocketPair pair;
    const int fd = pair.a.fd();
    mp::detail::net::Socket moved(std::move(pair.a));
    CHECK_FALSE(pair.a);
    CHECK(moved.fd() == fd);
    auto reader = in_thread([&] {
        return outcome([&] { mp::detail::wire::recv_frame(pair.b.fd(), 100, mp::detail::Deadline(), "t"); });
    });
    std::this_thread::sleep_for(50ms);
    pair.b.shutdown();
    REQUIRE(reader.wait_for(20s) == std::future_status::ready);
    CHECK_THAT(reader.get(), StartsWith("EOFError"));
    const int raw = moved.release();
    CHECK_FALSE(moved);
    CHECK(::fcntl(raw, F_GETFD) >= 0);  // still open: released, not closed
    ::close(raw);
}
