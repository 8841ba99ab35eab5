// Manager fault cases: an owner process SIGKILLed (or gone without its destructors) takes
// its server with it; a server SIGKILLed under its clients makes their calls, blocked or
// not, fail with ProcessError instead of hanging; client processes killed in the middle
// of calls do not hurt the server; and hostile bytes on the server's socket (garbage
// before or after the handshake, a frame header claiming 1 TiB, a frame of random bytes,
// a frame cut short, a stranger that says nothing) cost only that connection.
//
// Python hangs or leaks on several of these; API.md and managers.hpp promise better.
// Every wait has a timeout so that a bug fails the test instead of hanging it.
#include <catch2/catch.hpp>
#include <multiprocessing.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "../support.hpp"

namespace mp = multiprocessing;
namespace mm = multiprocessing::managers;
namespace proto = multiprocessing::detail::manager;
namespace wire = multiprocessing::detail::wire;
using namespace std::chrono_literals;
using mp_test::pid_gone;
using mp_test::wait_gone;

namespace {

using Kids = mp_test::DaemonChildren;

using mp_test::Async;
using mp_test::is_a;
using mp_test::run_within;
using mp_test::what_of;

using mp_test::throws_as;

// A failing test must not leave a server or a client behind for the tests after it.
void kill_if_running(pid_t pid) {
    if (pid > 0 && !pid_gone(pid)) ::kill(pid, SIGKILL);
}

// ---- child targets ----------------------------------------------------------------------

// An owner: makes a Manager, shows it works, reports its server's pid, then ends as told.
enum class OwnerEnd { killed, underscore_exit, killed_with_blocked_client };

void blocked_client(mm::QueueProxy<int> q, mp::Queue<long> report) {
    (void)q.qsize();  // connected
    report.put(static_cast<long>(::getpid()));
    try {
        (void)q.get();
    } catch (const mp::ProcessError&) {
        return;  // what should happen once the server is gone
    }
    throw std::runtime_error("q.get() returned although nothing was put");
}

void own_a_manager(mp::Queue<long> report, OwnerEnd how) {
    auto manager = mp::Manager();
    auto l = manager.list<int>({1});
    CHILD_REQUIRE(l.size() == 1);
    report.put(static_cast<long>(*manager.server_pid()));
    std::optional<mp::Process> client;
    if (how == OwnerEnd::killed_with_blocked_client) {
        auto q = manager.Queue<int>();
        client.emplace(blocked_client, q, report);
        client->set_daemon(true);
        client->start();
    }
    if (how == OwnerEnd::underscore_exit) ::_exit(0);  // no destructors, no shutdown()
    std::this_thread::sleep_for(60s);                  // the parent SIGKILLs us long before
}

void blocked_get_in_child(mm::QueueProxy<int> q, mp::Event ready) {
    (void)q.qsize();  // connected
    ready.set();
    CHILD_REQUIRE(throws_as<mp::ProcessError>([&] { (void)q.get(); }));
}

void expect_process_error(mm::QueueProxy<int> q) {
    CHILD_REQUIRE(throws_as<mp::ProcessError>([&] { (void)q.qsize(); }));
    CHILD_REQUIRE(throws_as<mp::ProcessError>([&] { q.put(1); }));
}

void append_forever(mm::ListProxy<int> l, mp::Event started) {
    l.append(0);
    started.set();
    for (;;) l.append(1);
}

void get_forever(mm::QueueProxy<int> q, mp::Event ready) {
    (void)q.qsize();
    ready.set();
    (void)q.get();
}

void use_list(mm::ListProxy<int> l, int v) {
    l.append(v);
    CHILD_REQUIRE(l.contains(v));
}

// ---- raw sockets --------------------------------------------------------------------------

// A plain POSIX TCP connection to 127.0.0.1:port (-1 on failure).
int tcp_connect(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

struct Sock {
    int fd;
    explicit Sock(int f) : fd(f) {}
    ~Sock() {
        if (fd >= 0) ::close(fd);
    }
    Sock(const Sock&) = delete;
    Sock& operator=(const Sock&) = delete;
};

// Sends every byte (false if the peer is gone).
bool send_raw(int fd, std::span<const std::byte> bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        done += static_cast<std::size_t>(n);
    }
    return true;
}

// Reads (and drops) whatever comes until the peer closes: true if it closed (EOF or
// reset) within `timeout`, false if the connection was still open then.
bool peer_closes_within(int fd, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        pollfd p{fd, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(left.count()));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n == 0) return true;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return true;  // ECONNRESET and the like: closed
        }
    }
}

// Reads exactly n bytes within the deadline (false on EOF, error or timeout).
bool recv_exactly(int fd, std::byte* out, std::size_t n, std::chrono::steady_clock::time_point deadline) {
    std::size_t got = 0;
    while (got < n) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        pollfd p{fd, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(left.count()));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        const ssize_t k = ::recv(fd, out + got, n - got, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        got += static_cast<std::size_t>(k);
    }
    return true;
}

// One frame's payload, or nullopt (EOF, timeout, or an absurd length).
std::optional<std::vector<std::byte>> recv_frame(int fd, std::chrono::milliseconds timeout = 10000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::byte header[wire::frame_header_size];
    if (!recv_exactly(fd, header, sizeof header, deadline)) return std::nullopt;
    const std::uint64_t length = wire::decode_frame_header(header);
    if (length > (1u << 20)) return std::nullopt;
    std::vector<std::byte> payload(static_cast<std::size_t>(length));
    if (!recv_exactly(fd, payload.data(), payload.size(), deadline)) return std::nullopt;
    return payload;
}

std::vector<std::byte> framed(std::span<const std::byte> payload) {
    std::vector<std::byte> out(wire::frame_header_size + payload.size());
    wire::encode_frame_header(out.data(), payload.size());
    std::copy(payload.begin(), payload.end(), out.begin() + wire::frame_header_size);
    return out;
}

std::vector<std::byte> request(proto::Op op, std::uint64_t object, std::string_view name) {
    std::vector<std::byte> p(proto::request_header_size(name.size()));
    proto::write_request_header(p.data(), op, object, name, proto::signature_of<>());
    return p;
}

std::vector<std::byte> random_bytes(std::size_t n, std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::vector<std::byte> out(n);
    for (auto& b : out) b = static_cast<std::byte>(gen() & 0xff);
    return out;
}

// A SyncManager on TCP with a known key, for connecting to by hand.
struct TcpManager {
    std::string key = "fault key";
    mp::SyncManager manager{mm::ManagerOptions{.address = {"127.0.0.1", 0}, .authkey = key}};
    pid_t server = 0;
    TcpManager() {
        manager.start();
        server = *manager.server_pid();
    }
    ~TcpManager() {
        try {
            manager.shutdown();
        } catch (...) {
        }
        kill_if_running(server);
    }
    std::uint16_t port() const { return manager.address().port; }

    // A fresh connection, past the handshake (the server's challenge, then ours).
    int authenticated() {
        const int fd = tcp_connect(port());
        REQUIRE(fd >= 0);
        REQUIRE_NOTHROW(mp::detail::auth::client_handshake(fd, key, mp::detail::Deadline(10s)));
        return fd;
    }
    // ... that also said hello, as every client's first request does.
    int said_hello() {
        const int fd = authenticated();
        auto hello = framed(request(proto::Op::hello, 0x1234567, ""));
        REQUIRE(send_raw(fd, hello));
        auto reply = recv_frame(fd);
        REQUIRE(reply.has_value());
        REQUIRE(!reply->empty());
        REQUIRE((*reply)[0] == static_cast<std::byte>(proto::Status::ok));
        return fd;
    }
};

// The server still serves: an old proxy, a new object, a new client with its own
// connections, and a child process.
void check_still_serving(TcpManager& f, mm::ListProxy<int>& old) {
    CHECK_FALSE(pid_gone(f.server));
    old.append(static_cast<int>(old.size()));
    CHECK(old[-1] == static_cast<int>(old.size()) - 1);
    auto fresh = f.manager.list<int>({5});
    CHECK(fresh.get() == std::vector<int>{5});

    mp::SyncManager other({.address = f.manager.address(), .authkey = f.key});
    REQUIRE_NOTHROW(other.connect());
    auto q = other.Queue<int>();
    q.put(3);
    CHECK(q.get(10s) == 3);

    Kids kids;
    kids.start(use_list, old, 77);
    kids.join_all();
    CHECK(old.contains(77));
}

}  // namespace

// =====================================================================================
// The server never outlives its owner

TEST_CASE("The server exits when its owner process is SIGKILLed", "[manager][faults][owner]") {
    mp::Queue<long> report;
    Kids kids;
    auto& owner = kids.start(own_a_manager, report, OwnerEnd::killed);
    const auto server = static_cast<pid_t>(report.get(10s));
    REQUIRE(server > 0);
    CHECK_FALSE(pid_gone(server));
    owner.kill();
    REQUIRE(owner.join(10s));
    CHECK(owner.exitcode() == -SIGKILL);
    // The server was the owner's child: now an orphan, reaped by init or a subreaper (or
    // a zombie until then). Either way it must stop running.
    CHECK(wait_gone(server, 10s));
    kill_if_running(server);
}

TEST_CASE("The server exits when its owner ends with _exit (no destructors, no shutdown)",
          "[manager][faults][owner]") {
    mp::Queue<long> report;
    Kids kids;
    auto& owner = kids.start(own_a_manager, report, OwnerEnd::underscore_exit);
    const auto server = static_cast<pid_t>(report.get(10s));
    REQUIRE(server > 0);
    REQUIRE(owner.join(10s));
    CHECK(owner.exitcode() == 0);
    CHECK(wait_gone(server, 10s));
    kill_if_running(server);
}

TEST_CASE("The server exits when its owner is SIGKILLed, even with a client blocked in a call",
          "[manager][faults][owner]") {
    mp::Queue<long> report;
    mp_test::Children kids(/*daemon=*/false);  // a daemon process may not start the client
    auto& owner = kids.start(own_a_manager, report, OwnerEnd::killed_with_blocked_client);
    const auto server = static_cast<pid_t>(report.get(10s));
    const auto client = static_cast<pid_t>(report.get(10s));
    REQUIRE(server > 0);
    REQUIRE(client > 0);
    std::this_thread::sleep_for(100ms);  // let the client enter get() (it fails either way)
    owner.kill();
    REQUIRE(owner.join(10s));
    CHECK(wait_gone(server, 10s));
    // The client's get() failed once the server went, and it ended.
    CHECK(wait_gone(client, 10s));
    kill_if_running(server);
    kill_if_running(client);
}

// =====================================================================================
// A server killed under its clients

TEST_CASE("A killed server: blocked get() in a child and in a thread fail with ProcessError, later calls too",
          "[manager][faults][server]") {
    auto manager = mp::Manager();
    const pid_t server = *manager.server_pid();
    auto q = manager.Queue<int>();
    auto l = manager.list<int>({1});
    auto lock = manager.Lock();
    mp::Event ready;
    Kids kids;
    auto& child = kids.start(blocked_get_in_child, q, ready);
    REQUIRE(ready.wait(10s));
    Async blocked([q] { (void)q.get(); });
    CHECK(lock.acquire(10s));
    std::this_thread::sleep_for(200ms);  // both get()s are (most likely) waiting now

    REQUIRE(::kill(server, SIGKILL) == 0);

    REQUIRE(child.join(10s));  // a hang would be a bug
    CHECK(child.exitcode() == 0);
    auto r = blocked.wait(10000ms);
    REQUIRE(r.has_value());
    INFO("blocked get: " << what_of(*r));
    CHECK(is_a<mp::ProcessError>(*r));

    // Calls made afterwards fail too, at once, in every thread.
    for (int attempt = 0; attempt < 2; ++attempt) {
        auto a = run_within(10000ms, [l] { l.append(2); });
        REQUIRE(a.has_value());
        INFO("append: " << what_of(*a));
        CHECK(is_a<mp::ProcessError>(*a));
        auto b = run_within(10000ms, [q] { q.put(1); });
        REQUIRE(b.has_value());
        INFO("put: " << what_of(*b));
        CHECK(is_a<mp::ProcessError>(*b));
    }
    auto c = run_within(10000ms, [lock] { lock.release(); });
    REQUIRE(c.has_value());
    CHECK(is_a<mp::ProcessError>(*c));
    auto m = run_within(10000ms, [&manager] { (void)manager.list<int>(); });
    REQUIRE(m.has_value());
    INFO("new object: " << what_of(*m));
    CHECK(is_a<mp::ProcessError>(*m));

    // A child that uses a proxy now fails too, and says so.
    kids.start(expect_process_error, q);
    REQUIRE(kids[1].join(10s));
    CHECK(kids[1].exitcode() == 0);

    // shutdown() of a dead server returns, quietly.
    auto s = run_within(10000ms, [&manager] { manager.shutdown(); });
    REQUIRE(s.has_value());
    INFO("shutdown: " << what_of(*s));
    CHECK_FALSE(*s);
    CHECK(wait_gone(server, 1s));
}

// =====================================================================================
// Clients that die

TEST_CASE("Client processes SIGKILLed in the middle of calls do not hurt the server or other clients",
          "[manager][faults][client]") {
    auto manager = mp::Manager();
    const pid_t server = *manager.server_pid();
    auto l = manager.list<int>();
    mp::Event started1, started2;
    Kids kids;
    auto& a = kids.start(append_forever, l, started1);
    auto& b = kids.start(append_forever, l, started2);
    REQUIRE(started1.wait(10s));
    REQUIRE(started2.wait(10s));
    std::this_thread::sleep_for(100ms);
    a.kill();
    b.kill();
    REQUIRE(a.join(10s));
    REQUIRE(b.join(10s));

    CHECK_FALSE(pid_gone(server));
    const auto n = l.size();
    CHECK(n >= 2);
    l.append(-1);
    CHECK(l.size() == n + 1);
    CHECK(l[-1] == -1);
    kids.start(use_list, l, 42);
    REQUIRE(kids[2].join(10s));
    CHECK(kids[2].exitcode() == 0);
}

// Beyond Python (whose server thread takes the item and loses it with the dead client's
// socket): a client that died inside a blocking get() must not take the next item, even
// one put right after its death, over a unix socket (Manager()) or TCP.
TEST_CASE("A client SIGKILLed inside a blocking get() does not swallow the next item put",
          "[manager][faults][client]") {
    auto run = [](mp::SyncManager& manager) {
        auto q = manager.Queue<int>();
        for (int round = 0; round < 2; ++round) {
            INFO("round " << round);
            mp::Event ready;
            Kids kids;
            auto& getter = kids.start(get_forever, q, ready);
            REQUIRE(ready.wait(10s));
            std::this_thread::sleep_for(200ms);  // inside get() on the server
            getter.kill();
            REQUIRE(getter.join(10s));
            q.put(42 + round);  // at once: the dead client's server thread may still be waiting
            int got = -1;
            CHECK_NOTHROW(got = q.get(3s));
            CHECK(got == 42 + round);
        }
    };
    SECTION("Manager(): a unix socket") {
        auto manager = mp::Manager();
        run(manager);
    }
    SECTION("a SyncManager on TCP") {
        mp::SyncManager manager({.address = {"127.0.0.1", 0}, .authkey = "tcp"});
        manager.start();
        run(manager);
    }
}

void lock_waiter(mm::AcquirerProxy lock, mp::Event ready) {
    ready.set();
    (void)lock.acquire();
}

// The same for a Lock: a client that died waiting for it must not end up holding it.
TEST_CASE("A client SIGKILLed while waiting for a Lock does not keep it once released",
          "[manager][faults][client]") {
    auto manager = mp::Manager();
    auto lock = manager.Lock();
    REQUIRE(lock.acquire(10s));
    mp::Event ready;
    Kids kids;
    auto& waiter = kids.start(lock_waiter, lock, ready);
    REQUIRE(ready.wait(10s));
    std::this_thread::sleep_for(200ms);  // inside acquire() on the server
    waiter.kill();
    REQUIRE(waiter.join(10s));
    lock.release();  // at once: the dead client's server thread may still be waiting
    CHECK(lock.acquire(5s));
    lock.release();
}

void condition_waiter(mm::ConditionProxy c, mp::Event waiting) {
    CHILD_REQUIRE(c.acquire(10s));
    waiting.set();
    const bool woken = c.wait(10s);
    c.release();
    CHILD_REQUIRE(woken);
}

// A notify(1) that went to a waiter that died is passed on to a live one.
TEST_CASE("A notify() that reaches a SIGKILLed waiter of a Condition wakes another waiter",
          "[manager][faults][client]") {
    auto manager = mp::Manager();
    auto c = manager.Condition();
    mp::Event a_waiting, b_waiting;
    Kids kids;
    auto& a = kids.start(condition_waiter, c, a_waiting);
    REQUIRE(a_waiting.wait(10s));
    REQUIRE(c.acquire(10s));  // A released it: A waits (first)
    c.release();
    auto& b = kids.start(condition_waiter, c, b_waiting);
    REQUIRE(b_waiting.wait(10s));
    REQUIRE(c.acquire(10s));  // both wait now
    a.kill();
    REQUIRE(a.join(10s));
    c.notify(1);
    c.release();
    REQUIRE(b.join(15s));
    CHECK(b.exitcode() == 0);  // B was woken, by the notify or by the one passed on
}

// =====================================================================================
// Hostile bytes on the server's socket: only that connection is dropped

TEST_CASE("Garbage before the handshake closes that connection only", "[manager][faults][protocol]") {
    TcpManager f;
    auto l = f.manager.list<int>();

    SECTION("a header claiming a huge challenge answer") {
        Sock s(tcp_connect(f.port()));
        REQUIRE(s.fd >= 0);
        std::vector<std::byte> junk(64, std::byte{0xff});
        send_raw(s.fd, junk);
        CHECK(peer_closes_within(s.fd, 10s));
    }
    SECTION("an HTTP request") {
        Sock s(tcp_connect(f.port()));
        REQUIRE(s.fd >= 0);
        const std::string http = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
        send_raw(s.fd, std::as_bytes(std::span(http.data(), http.size())));
        CHECK(peer_closes_within(s.fd, 10s));
    }
    SECTION("random bytes, then the end of the stream") {
        for (std::uint32_t seed = 1; seed <= 5; ++seed) {
            Sock s(tcp_connect(f.port()));
            REQUIRE(s.fd >= 0);
            send_raw(s.fd, random_bytes(200, seed));
            ::shutdown(s.fd, SHUT_WR);
            CHECK(peer_closes_within(s.fd, 10s));
        }
    }
    SECTION("a well-formed but wrong answer to the challenge") {
        Sock s(tcp_connect(f.port()));
        REQUIRE(s.fd >= 0);
        auto challenge = recv_frame(s.fd);
        REQUIRE(challenge.has_value());
        const std::string answer = "{sha256}" + std::string(32, 'x');
        send_raw(s.fd, framed(std::as_bytes(std::span(answer.data(), answer.size()))));
        CHECK(peer_closes_within(s.fd, 10s));
    }
    check_still_serving(f, l);
}

TEST_CASE("A frame header claiming 1 TiB after the handshake closes that connection only",
          "[manager][faults][protocol]") {
    TcpManager f;
    auto l = f.manager.list<int>();
    SECTION("as the first request") {
        Sock s(f.authenticated());
        std::byte header[wire::frame_header_size];
        wire::encode_frame_header(header, std::uint64_t(1) << 40);
        REQUIRE(send_raw(s.fd, header));
        CHECK(peer_closes_within(s.fd, 10s));
    }
    SECTION("after a hello") {
        Sock s(f.said_hello());
        std::byte header[wire::frame_header_size];
        wire::encode_frame_header(header, std::uint64_t(1) << 40);
        REQUIRE(send_raw(s.fd, header));
        send_raw(s.fd, random_bytes(4096, 7));  // and the start of a "payload"
        CHECK(peer_closes_within(s.fd, 10s));
    }
    check_still_serving(f, l);
}

TEST_CASE("A frame of random bytes after the handshake closes that connection only", "[manager][faults][protocol]") {
    TcpManager f;
    auto l = f.manager.list<int>();
    SECTION("instead of the hello") {
        Sock s(f.authenticated());
        auto junk = random_bytes(64, 11);
        junk[0] = std::byte{0xee};  // not a request kind
        REQUIRE(send_raw(s.fd, framed(junk)));
        CHECK(peer_closes_within(s.fd, 10s));
    }
    SECTION("after the hello") {
        for (std::uint32_t seed = 20; seed < 25; ++seed) {
            Sock s(f.said_hello());
            auto junk = random_bytes(64 + seed, seed);
            junk[0] = std::byte{0xee};
            REQUIRE(send_raw(s.fd, framed(junk)));
            CHECK(peer_closes_within(s.fd, 10s));
        }
    }
    SECTION("a request whose name length runs past its end") {
        Sock s(f.said_hello());
        auto r = request(proto::Op::call, 1, "append");
        const std::uint16_t too_long = 1000;
        std::memcpy(r.data() + 9, &too_long, 2);
        REQUIRE(send_raw(s.fd, framed(r)));
        CHECK(peer_closes_within(s.fd, 10s));
    }
    SECTION("a request shorter than a request header") {
        Sock s(f.said_hello());
        std::vector<std::byte> tiny(3, std::byte{3});
        REQUIRE(send_raw(s.fd, framed(tiny)));
        CHECK(peer_closes_within(s.fd, 10s));
    }
    SECTION("a second hello") {
        Sock s(f.said_hello());
        REQUIRE(send_raw(s.fd, framed(request(proto::Op::hello, 99, ""))));
        CHECK(peer_closes_within(s.fd, 10s));
    }
    check_still_serving(f, l);
}

TEST_CASE("A well-formed request that fails gets an error reply and keeps its connection",
          "[manager][faults][protocol]") {
    TcpManager f;
    auto l = f.manager.list<int>();
    Sock s(f.said_hello());
    // A call on an object that does not exist: an exception reply, not a dropped line.
    REQUIRE(send_raw(s.fd, framed(request(proto::Op::call, 0xdead'beefull, "append"))));
    auto reply = recv_frame(s.fd);
    REQUIRE(reply.has_value());
    REQUIRE(!reply->empty());
    CHECK((*reply)[0] == static_cast<std::byte>(proto::Status::raised));
    // An unknown name: the same.
    REQUIRE(send_raw(s.fd, framed(request(proto::Op::create, 0, "no such thing"))));
    reply = recv_frame(s.fd);
    REQUIRE(reply.has_value());
    CHECK((*reply)[0] == static_cast<std::byte>(proto::Status::raised));
    // The connection still answers.
    REQUIRE(send_raw(s.fd, framed(request(proto::Op::ping, 0, ""))));
    reply = recv_frame(s.fd);
    REQUIRE(reply.has_value());
    CHECK((*reply)[0] == static_cast<std::byte>(proto::Status::ok));
    check_still_serving(f, l);
}

TEST_CASE("A truncated frame closes that connection only", "[manager][faults][protocol]") {
    TcpManager f;
    auto l = f.manager.list<int>();
    SECTION("a header cut short") {
        Sock s(f.said_hello());
        std::byte partial[3] = {std::byte{10}, std::byte{0}, std::byte{0}};
        REQUIRE(send_raw(s.fd, partial));
        ::shutdown(s.fd, SHUT_WR);
        CHECK(peer_closes_within(s.fd, 10s));
    }
    SECTION("a payload cut short") {
        Sock s(f.said_hello());
        auto r = framed(request(proto::Op::ping, 0, ""));
        REQUIRE(send_raw(s.fd, std::span(r).first(r.size() - 5)));
        ::shutdown(s.fd, SHUT_WR);
        CHECK(peer_closes_within(s.fd, 10s));
    }
    SECTION("a payload cut short during the handshake") {
        Sock s(tcp_connect(f.port()));
        REQUIRE(s.fd >= 0);
        std::byte header[wire::frame_header_size];
        wire::encode_frame_header(header, 40);
        REQUIRE(send_raw(s.fd, header));
        send_raw(s.fd, random_bytes(10, 3));
        ::shutdown(s.fd, SHUT_WR);
        CHECK(peer_closes_within(s.fd, 10s));
    }
    check_still_serving(f, l);
}

TEST_CASE("Strangers that connect and say nothing do not hold up other clients", "[manager][faults][protocol]") {
    TcpManager f;
    auto l = f.manager.list<int>();
    std::vector<std::unique_ptr<Sock>> silent;
    for (int i = 0; i < 4; ++i) {
        silent.push_back(std::make_unique<Sock>(tcp_connect(f.port())));
        REQUIRE(silent.back()->fd >= 0);
    }
    silent.push_back(std::make_unique<Sock>(f.said_hello()));  // authenticated, then silent
    check_still_serving(f, l);
    silent.clear();
    check_still_serving(f, l);
}
