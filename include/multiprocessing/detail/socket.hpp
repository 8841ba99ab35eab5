// Sockets for Listener/Client and managers: where to listen or connect (Address), and the
// owned fds that come out of it.
//
// Boost.Asio resolves, binds, listens and connects. Its objects only ever live inside one
// call, on a local io_context, and hand their fd over with release(): an io_context
// (epoll, eventfd, timerfd) must not be shared across fork(), and everything above this
// file works on plain fds (poll, sendmsg, read). Asio creates sockets without
// FD_CLOEXEC, so every socket here is made with SOCK_CLOEXEC and assign()ed to Asio
// instead: a spawned worker must not inherit a connection, or the peer would never see
// EOF while that worker lives.
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include "../errors.hpp"
#include "deadline.hpp"

namespace multiprocessing::connection {

// Where a Listener or manager listens, or a Client or manager connects.
//   {"127.0.0.1", 50000}           TCP; port 0 when listening picks a free port
//   Address::unix_socket("/tmp/s") an AF_UNIX socket file
//   Address::unix_socket("@name")  a Linux abstract socket: no file, gone with its last fd
// (Every member has a default initializer so that {"127.0.0.1", 50000} does not trip
// -Wmissing-field-initializers.)
struct Address {
    std::string host{};  // "127.0.0.1", "localhost", "::1"; "" means 127.0.0.1
    std::uint16_t port = 0;
    std::string unix_path{};  // non-empty: an AF_UNIX socket; a leading '@' = abstract namespace

    static Address unix_socket(std::string path) {
        Address a;
        a.unix_path = std::move(path);
        return a;
    }
    bool is_unix() const noexcept { return !unix_path.empty(); }
    bool is_abstract() const noexcept { return is_unix() && unix_path.front() == '@'; }
    // The host a connection really goes to: "" is 127.0.0.1, as Python's '' is not
    // (there it means every interface, which a Listener should not do by surprise).
    std::string effective_host() const { return host.empty() ? std::string("127.0.0.1") : host; }

    // "127.0.0.1:50000", "[::1]:50000", "unix:@name", "unix:/tmp/x"
    std::string to_string() const {
        if (is_unix()) return "unix:" + unix_path;
        const std::string h = effective_host();
        const bool v6 = h.find(':') != std::string::npos;
        return (v6 ? "[" + h + "]" : h) + ":" + std::to_string(port);
    }

    friend bool operator==(const Address&, const Address&) = default;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(host, port, unix_path);
    }
};

}  // namespace multiprocessing::connection

namespace multiprocessing::detail::net {

namespace asio = boost::asio;
using connection::Address;

// Owns one fd and closes it. Move-only.
class Socket {
public:
    Socket() = default;
    explicit Socket(int fd) noexcept : fd_(fd) {}
    Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Socket& operator=(Socket&& other) noexcept {
        if (this != &other) {
            close();
            fd_ = std::exchange(other.fd_, -1);
        }
        return *this;
    }
    Socket(const Socket&) = delete;
    Socket& operator=(const Socket&) = delete;
    ~Socket() { close(); }

    int fd() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    // Gives the fd to the caller, who closes it from now on.
    int release() noexcept { return std::exchange(fd_, -1); }
    void close() noexcept {
        // No retry on EINTR: on Linux the fd is gone either way, and a retry could
        // close a number another thread has just been given.
        if (fd_ >= 0) ::close(std::exchange(fd_, -1));
    }
    // Wakes a thread blocked reading this socket (it sees EOF) without closing the fd
    // under it, which could hand the number to an unrelated open() mid-read.
    void shutdown() noexcept {
        if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
    }

private:
    int fd_ = -1;
};

[[gnu::cold, gnu::noinline]] inline std::string describe(const char* op, const Address& where, const std::string& text) {
    std::string m(op);
    m += " (";
    m += where.to_string();
    m += "): ";
    m += text;
    return m;
}

[[noreturn]] inline void throw_socket_error(const char* op, const Address& where, const std::string& text) {
    throw ProcessError(describe(op, where, text));
}

inline Socket new_socket(int family, const char* op, const Address& where) {
    Socket s(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) {
        const int e = errno;
        throw_socket_error(op, where, "socket(): " + std::generic_category().message(e) +
                                          (e == EMFILE || e == ENFILE ? " (out of file descriptors? see ulimit -n)" : ""));
    }
    return s;
}

inline void set_blocking(int fd, bool blocking) noexcept {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0) ::fcntl(fd, F_SETFL, blocking ? (flags & ~O_NONBLOCK) : (flags | O_NONBLOCK));
}

// Messages are small and go one frame per sendmsg: Nagle would hold each reply for an ACK.
// Keepalive lets a server notice, eventually, a client whose machine vanished.
inline void tune_tcp(int fd) noexcept {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

// Whether the peer of a connected AF_UNIX socket runs as our effective uid (SO_PEERCRED,
// which the kernel fills in at connect() and a peer cannot forge). False for TCP and
// for any socket the kernel cannot vouch for: over TCP only the authkey tells peers apart.
inline bool peer_is_same_user(int fd) noexcept {
    sockaddr_storage self{};
    socklen_t length = sizeof self;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&self), &length) != 0 || self.ss_family != AF_UNIX) return false;
    ucred credentials{};
    socklen_t size = sizeof credentials;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &size) != 0 || size != sizeof credentials) return false;
    return credentials.uid == ::geteuid();
}

// The endpoints of a TCP address, IPv4 first: "localhost" then means 127.0.0.1 for both
// a Listener and its Clients, as it does in Python (AF_INET).
inline std::vector<asio::ip::tcp::endpoint> resolve(const Address& where, bool passive, const char* op) {
    const std::string host = where.effective_host();
    boost::system::error_code ec;
    const auto numeric = asio::ip::make_address(host, ec);
    if (!ec) return {asio::ip::tcp::endpoint(numeric, where.port)};

    asio::io_context io(1);
    asio::ip::tcp::resolver resolver(io);
    auto flags = asio::ip::resolver_base::numeric_service;
    if (passive) flags |= asio::ip::resolver_base::passive;
    const auto results = resolver.resolve(host, std::to_string(where.port), flags, ec);
    if (ec)
        throw_socket_error(op, where, "cannot resolve the host name '" + host + "': " + ec.message() +
                                          " (is it spelled right? a numeric address like 127.0.0.1 needs no lookup)");
    std::vector<asio::ip::tcp::endpoint> endpoints;
    for (const auto& entry : results) endpoints.push_back(entry.endpoint());
    std::stable_partition(endpoints.begin(), endpoints.end(), [](const auto& e) { return e.address().is_v4(); });
    if (endpoints.empty()) throw_socket_error(op, where, "the host name '" + host + "' resolves to no address");
    return endpoints;
}

// "@name" is the abstract name "\0name"; Asio takes a path with a leading NUL as such.
inline asio::local::stream_protocol::endpoint unix_endpoint(const Address& where, const char* op) {
    std::string path = where.unix_path;
    if (where.is_abstract()) path.front() = '\0';
    // A filesystem path needs its terminating NUL inside sun_path; an abstract name does not.
    const std::size_t room = sizeof(sockaddr_un::sun_path) - (where.is_abstract() ? 0 : 1);
    if (path.size() > room)
        throw_socket_error(op, where, "the unix socket path is " + std::to_string(path.size()) +
                                          " bytes; the limit is " + std::to_string(room) +
                                          " (use a shorter path, e.g. under /tmp, or an abstract name \"@...\")");
    return asio::local::stream_protocol::endpoint(path);
}

// Listens; accept() gives the connected sockets. Move-only.
class ListeningSocket {
public:
    // ProcessError naming the address when it cannot listen there.
    explicit ListeningSocket(const Address& where, int backlog = 128) {
        constexpr const char* op = "listen";
        if (where.is_unix())
            listen_unix(where, backlog, op);
        else
            listen_tcp(where, backlog, op);
    }
    ListeningSocket(ListeningSocket&& other) noexcept
        : socket_(std::move(other.socket_)),
          address_(std::move(other.address_)),
          created_path_(std::exchange(other.created_path_, {})),
          creator_(other.creator_) {}
    ListeningSocket& operator=(ListeningSocket&& other) noexcept {
        if (this != &other) {
            close();
            socket_ = std::move(other.socket_);
            address_ = std::move(other.address_);
            created_path_ = std::exchange(other.created_path_, {});
            creator_ = other.creator_;
        }
        return *this;
    }
    ListeningSocket(const ListeningSocket&) = delete;
    ListeningSocket& operator=(const ListeningSocket&) = delete;
    ~ListeningSocket() { close(); }

    // Where it listens: for port 0, the port the kernel picked.
    Address address() const { return address_; }
    // Pollable for POLLIN: a connection is waiting.
    int fd() const noexcept { return socket_.fd(); }

    // The next connection (CLOEXEC, blocking, TCP-tuned), or nothing once `deadline`
    // passes. ProcessError once shutdown() or close() was called.
    std::optional<Socket> accept(const Deadline& deadline) {
        for (;;) {
            if (!socket_) throw ProcessError(describe("accept", address_, "the listening socket is closed"));
            pollfd p{socket_.fd(), POLLIN, 0};
            const int ready = poll_until(&p, 1, deadline);
            if (ready < 0) {
                const int error = errno;
                throw std::system_error(error, std::generic_category(), describe("accept", address_, "poll"));
            }
            if (ready == 0) {
                if (deadline.expired()) return std::nullopt;
                continue;
            }
            const bool hung_up = (p.revents & (POLLHUP | POLLERR)) != 0;
            // The listening fd is non-blocking: another thread or process may have taken
            // the connection since poll said there was one, and then we poll again.
            Socket s(::accept4(socket_.fd(), nullptr, nullptr, SOCK_CLOEXEC));
            if (s) {
                if (!address_.is_unix()) tune_tcp(s.fd());
                return s;
            }
            const int error = errno;
            // After shutdown() poll says POLLHUP, and then an AF_UNIX accept fails with
            // EAGAIN (once the queue is empty), a TCP one with EINVAL.
            if (error == EAGAIN && hung_up) throw_shut_down();
            switch (error) {
                case EINTR:
                case EAGAIN:
                case ECONNABORTED:
                // accept(2): Linux passes on errors of the new connection, which concern
                // that connection only; the man page says to retry.
                case EPROTO:
                case ENOPROTOOPT:
                case EHOSTDOWN:
                case ENONET:
                case EHOSTUNREACH:
                case ENETDOWN:
                case ENETUNREACH:
                case EPERM:  // a firewall rule refused this one connection
                    continue;
                case EINVAL:
                    throw_shut_down();
                case EMFILE:
                case ENFILE:
                    throw std::system_error(error, std::generic_category(),
                                            describe("accept", address_, "out of file descriptors (see ulimit -n)"));
                default:
                    throw std::system_error(error, std::generic_category(), describe("accept", address_, "accept"));
            }
        }
    }

    // Wakes a thread blocked in accept() (which then throws ProcessError) and refuses
    // new connections; the fd stays open until close(). It acts on the socket, not the
    // fd: a forked child that inherited it must close() its copy, never shut it down.
    void shutdown() noexcept { socket_.shutdown(); }

    void close() noexcept {
        socket_.close();
        // Only the process that bound the path removes it: a forked child closing its
        // inherited copy must not pull the socket file from under its parent.
        if (!created_path_.empty() && ::getpid() == creator_) ::unlink(created_path_.c_str());
        created_path_.clear();
    }

private:
    [[noreturn]] void throw_shut_down() const {
        throw ProcessError(
            describe("accept", address_, "the listening socket was shut down (the Listener or manager is closing)"));
    }

    [[noreturn]] static void throw_bind_failed(const boost::system::error_code& ec, const Address& where,
                                               const char* op) {
        if (ec != asio::error::address_in_use) throw_socket_error(op, where, "cannot bind: " + ec.message());
        std::string why;
        if (!where.is_unix())
            why = "the address is already in use: another Listener, manager or program listens on port " +
                  std::to_string(where.port) + " (pick another port, or port 0 for a free one)";
        else if (where.is_abstract())
            why = "the abstract socket name is already in use by another Listener or manager (pick another name)";
        else
            why = "the address is already in use: a file exists at " + where.unix_path +
                  " (a socket left behind by a process that died? remove it) or another Listener or manager "
                  "listens there";
        throw_socket_error(op, where, why);
    }

    void listen_tcp(const Address& where, int backlog, const char* op) {
        // Python binds the first address a name resolves to; trying the others after a
        // failure would make a taken port look free on another family.
        const auto endpoint = resolve(where, true, op).front();
        Socket fresh = new_socket(endpoint.protocol().family(), op, where);
        asio::io_context io(1);
        asio::ip::tcp::acceptor acceptor(io);
        boost::system::error_code ec;
        acceptor.assign(endpoint.protocol(), fresh.fd(), ec);
        if (ec) throw_socket_error(op, where, "cannot use the socket: " + ec.message());
        fresh.release();
        // As Python's Listener: a restarted server can take its port back at once
        // instead of waiting out TIME_WAIT. (It does not let two servers share a port.)
        acceptor.set_option(asio::socket_base::reuse_address(true), ec);
        acceptor.bind(endpoint, ec);
        if (ec) throw_bind_failed(ec, where, op);
        acceptor.listen(backlog, ec);
        if (ec) throw_socket_error(op, where, "cannot listen: " + ec.message());
        const auto bound = acceptor.local_endpoint(ec);
        if (ec) throw_socket_error(op, where, "getsockname: " + ec.message());
        socket_ = Socket(acceptor.release(ec));
        if (ec) throw_socket_error(op, where, "cannot take the socket from Asio: " + ec.message());
        set_blocking(socket_.fd(), false);
        address_.host = bound.address().to_string();
        address_.port = bound.port();
    }

    void listen_unix(const Address& where, int backlog, const char* op) {
        const auto endpoint = unix_endpoint(where, op);
        Socket fresh = new_socket(AF_UNIX, op, where);
        asio::io_context io(1);
        asio::local::stream_protocol::acceptor acceptor(io);
        boost::system::error_code ec;
        acceptor.assign(asio::local::stream_protocol(), fresh.fd(), ec);
        if (ec) throw_socket_error(op, where, "cannot use the socket: " + ec.message());
        fresh.release();
        acceptor.bind(endpoint, ec);
        if (ec) throw_bind_failed(ec, where, op);
        // From here on the file exists and is ours: remove it if listening fails.
        if (!where.is_abstract()) {
            created_path_ = where.unix_path;
            creator_ = ::getpid();
        }
        try {
            acceptor.listen(backlog, ec);
            if (ec) throw_socket_error(op, where, "cannot listen: " + ec.message());
            socket_ = Socket(acceptor.release(ec));
            if (ec) throw_socket_error(op, where, "cannot take the socket from Asio: " + ec.message());
        } catch (...) {
            close();
            throw;
        }
        set_blocking(socket_.fd(), false);
        address_ = where;
    }

    Socket socket_;
    Address address_;
    std::string created_path_;  // a socket file to unlink at close, by creator_ only
    pid_t creator_ = -1;
};

[[noreturn]] inline void throw_connect_failed(const Address& where, const boost::system::error_code& ec) {
    constexpr const char* op = "connect";
    if (ec == asio::error::connection_refused)
        throw_socket_error(op, where,
                           "connection refused: the server is not running, or does not listen at this address");
    if (ec == boost::system::errc::no_such_file_or_directory)
        throw_socket_error(op, where, "no such socket file: the server is not running, or the path is wrong");
    if (ec == asio::error::network_unreachable || ec == asio::error::host_unreachable ||
        ec == asio::error::network_down || ec == asio::error::timed_out)
        throw_socket_error(op, where,
                           ec.message() + ": the server is not reachable from here (a firewall, a wrong host, or a "
                                          "network down?)");
    throw_socket_error(op, where, ec.message() + ": the server is not running or not reachable");
}

[[noreturn]] inline void throw_connect_timeout(const Address& where) {
    throw TimeoutError(describe("connect", where,
                                "could not connect within the timeout: the server is not reachable, or too busy "
                                "to accept (its backlog is full)"));
}

// One attempt at one endpoint: the connected fd, the error, or nothing when the deadline
// passed first.
template <class Protocol>
std::optional<Socket> try_connect(const typename Protocol::endpoint& endpoint, const Deadline& deadline,
                                  const Address& where, boost::system::error_code& error) {
    constexpr const char* op = "connect";
    Socket fresh = new_socket(endpoint.protocol().family(), op, where);
    asio::io_context io(1);
    typename Protocol::socket socket(io);  // after io: destroyed first, closing a half-done connect
    boost::system::error_code ec;
    socket.assign(endpoint.protocol(), fresh.fd(), ec);
    if (ec) throw_socket_error(op, where, "cannot use the socket: " + ec.message());
    fresh.release();
    std::optional<boost::system::error_code> result;
    socket.async_connect(endpoint, [&](const boost::system::error_code& e) { result = e; });
    if (const auto left = deadline.remaining())
        io.run_for(*left);
    else
        io.run();
    if (!result) io.poll();  // a connect that completed at once, with no time left to run it
    if (!result) return std::nullopt;
    if (*result) {
        error = *result;
        return Socket();
    }
    Socket connected(socket.release(ec));
    if (ec) throw_socket_error(op, where, "cannot take the socket from Asio: " + ec.message());
    // Asio left it non-blocking; Connection's reads block (and poll for deadlines).
    set_blocking(connected.fd(), true);
    return connected;
}

// Connects within the deadline. ProcessError naming the address when nothing listens
// there or it is not reachable; TimeoutError when the deadline passes first.
inline Socket connect(const Address& where, const Deadline& deadline) {
    boost::system::error_code error;
    if (where.is_unix()) {
        const auto endpoint = unix_endpoint(where, "connect");
        auto backoff = std::chrono::milliseconds(1);
        for (;;) {
            auto s = try_connect<asio::local::stream_protocol>(endpoint, deadline, where, error);
            if (!s) throw_connect_timeout(where);
            if (*s) return std::move(*s);
            // A full backlog: Linux fails a non-blocking AF_UNIX connect with EAGAIN
            // (Asio says no_buffer_space) instead of waiting, as a blocking one would. Wait
            // for room, as the blocking connect of Python's Client does.
            if (error != asio::error::no_buffer_space) throw_connect_failed(where, error);
            if (deadline.expired()) throw_connect_timeout(where);
            std::this_thread::sleep_for(deadline.sleep_for(backoff));
            backoff = std::min(backoff * 2, std::chrono::milliseconds(50));
        }
    }
    const auto endpoints = resolve(where, false, "connect");
    for (const auto& endpoint : endpoints) {
        auto s = try_connect<asio::ip::tcp>(endpoint, deadline, where, error);
        if (!s) throw_connect_timeout(where);
        if (*s) {
            tune_tcp(s->fd());
            return std::move(*s);
        }
    }
    throw_connect_failed(where, error);
}

}  // namespace multiprocessing::detail::net
