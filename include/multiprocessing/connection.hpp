// Python's multiprocessing.connection: Pipe, Connection, wait, Listener, Client.
//
//   auto [a, b] = mp::Pipe<T>();              // duplex: both ends send and receive
//   auto [r, w] = mp::Pipe<T>(false);         // r receives only, w sends only
//   w.send(x);  T v = r.recv();
//
//   mp::connection::Listener<T> listener({"127.0.0.1", 0}, "secret");   // or Address::unix_socket("@name")
//   auto conn = mp::connection::Client<T>(listener.address(), "secret"); // in another process
//   auto peer = listener.accept();            // a Connection<T> like a Pipe end
//
// Both kinds are an AF_UNIX stream socketpair (a one-way pipe has the unused directions
// shut down), so a send can say MSG_NOSIGNAL: writing to a peer that is gone throws
// std::system_error(EPIPE) instead of killing the process with SIGPIPE.
//
// Every message is one frame: a u64 length (little-endian) and then that many bytes.
// send() writes the encoded value (detail::put) as the payload and send_bytes() the raw
// bytes, so recv_bytes() can receive what send() sent, as in Python.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "context.hpp"
#include "detail/codec.hpp"
#include "detail/deadline.hpp"
#include "detail/reduction.hpp"
#include "detail/socket.hpp"
#include "detail/wire.hpp"
#include "errors.hpp"

namespace multiprocessing {

namespace detail {

// A process-local lock that a waiter can give up on at a deadline. (std::timed_mutex
// would do, but ThreadSanitizer does not see its try_lock_until, pthread_mutex_clocklock,
// and then reports every unlock after it as an error.)
class DeadlineLock {
public:
    void lock() {
        std::unique_lock guard(mutex_);
        released_.wait(guard, [&] { return !held_; });
        held_ = true;
    }
    template <class Clock, class Duration>
    bool try_lock_until(const std::chrono::time_point<Clock, Duration>& deadline) {
        std::unique_lock guard(mutex_);
        if (!released_.wait_until(guard, deadline, [&] { return !held_; })) return false;
        held_ = true;
        return true;
    }
    void unlock() {
        {
            std::lock_guard guard(mutex_);
            held_ = false;
        }
        released_.notify_one();
    }

private:
    std::mutex mutex_;
    std::condition_variable released_;
    bool held_ = false;
};

// ---- one end of a pipe, as this process holds it -------------------------------------------

// Owns the fd that every copy of a Connection in this process shares. close() may come
// from any thread while another is in the middle of a send or recv: the fd then stays
// open until that call returns, so it can never be a number that the kernel has already
// handed to an unrelated open().
class PipeEndpoint {
public:
    PipeEndpoint(bool readable, bool writable) noexcept : readable_(readable), writable_(writable) {}
    PipeEndpoint(const PipeEndpoint&) = delete;
    PipeEndpoint& operator=(const PipeEndpoint&) = delete;
    ~PipeEndpoint() {
        if (fd_ >= 0) ::close(fd_);
    }

    // The fd, kept open for as long as this lives.
    class InUse {
    public:
        InUse(PipeEndpoint& endpoint, int fd) noexcept : endpoint_(&endpoint), fd_(fd) {}
        InUse(InUse&& other) noexcept : endpoint_(std::exchange(other.endpoint_, nullptr)), fd_(other.fd_) {}
        InUse& operator=(InUse&&) = delete;
        ~InUse() {
            if (endpoint_) endpoint_->release();
        }
        int fd() const noexcept { return fd_; }

    private:
        PipeEndpoint* endpoint_;
        int fd_;
    };

    // Takes ownership of `fd` (which cannot fail, so nothing can leak it).
    void adopt(int fd) noexcept { fd_ = fd; }

    InUse use(const char* op) {
        std::lock_guard lock(state_mutex_);
        if (closed_)
            throw ValueError(wire::error_text(op, "the connection is closed (close() was called on this end "
                                                  "in this process); use another end, or create a new Pipe"));
        ++users_;
        return InUse(*this, fd_);
    }

    void close() {
        std::lock_guard lock(state_mutex_);
        if (closed_) return;
        closed_ = true;
        if (users_ == 0) close_fd();
    }

    bool closed() const {
        std::lock_guard lock(state_mutex_);
        return closed_;
    }
    bool readable() const noexcept { return readable_ && !lost_position(); }
    bool writable() const noexcept { return writable_; }
    // After a message too long for recv_bytes(maxlength) the position in the stream is
    // lost, so this end stops receiving (as in Python).
    void lose_position() noexcept { lost_position_.store(true, std::memory_order_relaxed); }
    bool lost_position() const noexcept { return lost_position_.load(std::memory_order_relaxed); }

    // Relaxed: a plain setting, read once per message; no other memory depends on it.
    void set_max_message_size(std::size_t n) noexcept { max_message_size_.store(n, std::memory_order_relaxed); }
    std::size_t max_message_size() const noexcept { return max_message_size_.load(std::memory_order_relaxed); }

    // Whole frames only: two threads of this process never interleave theirs. (Between
    // processes sharing one end, frames from different writers may interleave, as in
    // Python; give each writer its own pipe.) recv's lock is timed so that recv(timeout)
    // also gives up while another thread is the one waiting.
    std::mutex send_lock;
    DeadlineLock recv_lock;

private:
    void release() {
        std::lock_guard lock(state_mutex_);
        if (--users_ == 0 && closed_) close_fd();
    }
    void close_fd() noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

    mutable std::mutex state_mutex_;
    int fd_ = -1;
    int users_ = 0;
    bool closed_ = false;
    const bool readable_;
    const bool writable_;
    std::atomic<bool> lost_position_{false};
    std::atomic<std::size_t> max_message_size_{wire::default_max_message_size};
};

}  // namespace detail

template <class T>
class Connection;

template <class T>
std::pair<Connection<T>, Connection<T>> Pipe(bool duplex = true);

namespace connection {
template <class T>
class Listener;
template <class T>
Connection<T> Client(const Address& address, std::optional<std::string> authkey = std::nullopt);
template <class T>
Connection<T> Client(const Address& address, std::optional<std::string> authkey, Timeout timeout);
}  // namespace connection

// One end of a Pipe. A handle: copies in one process share one endpoint, and a child
// gets its own by inheritance (created before start()) or as a Process argument.
template <class T>
class Connection {
public:
    static constexpr bool is_process_shared_handle = true;

    // Sends `obj` to the other end, whole, as one message.
    void send(const T& obj) {
        constexpr const char* op = "Connection.send";
        check_writable(op);
        const std::size_t size = detail::encoded_size(obj);
        const std::size_t frame_size = detail::wire::frame_header_size + size;
        // Encoding writes every byte, so zero-filling first would only cost time.
        auto frame = std::make_unique_for_overwrite<std::byte[]>(frame_size);
        detail::wire::encode_frame_header(frame.get(), size);
        detail::ByteWriter writer(frame.get() + detail::wire::frame_header_size);
        detail::put(writer, obj);
        iovec iov{frame.get(), frame_size};
        write_frame(op, &iov, 1);
    }

    // Blocks until a message arrives; EOFError once the other end is closed (in every
    // process that held it) and every message sent has been read.
    T recv() { return receive_value(std::nullopt); }

    // Every receiving call has a form with a timeout: it throws TimeoutError when no
    // message starts arriving within `timeout`. Once one has started, the rest is read
    // without a limit: giving up half-way would leave the stream inside a frame.
    T recv(Timeout timeout) { return receive_value(timeout); }

    void send_bytes(std::span<const std::byte> buf) {
        constexpr const char* op = "Connection.send_bytes";
        check_writable(op);
        std::byte header[detail::wire::frame_header_size];
        detail::wire::encode_frame_header(header, buf.size());
        iovec iov[2] = {{header, sizeof header}, {const_cast<std::byte*>(buf.data()), buf.size()}};
        write_frame(op, iov, 2);
    }

    // Python's send_bytes(buf, offset, size): sends buf[offset : offset + size], or to
    // the end when `size` is empty.
    void send_bytes(std::span<const std::byte> buf, std::size_t offset, std::optional<std::size_t> size = std::nullopt) {
        if (offset > buf.size())
            throw ValueError(detail::wire::error_text("Connection.send_bytes",
                                                      "offset " + std::to_string(offset) +
                                                          " is past the end of the buffer (" +
                                                          std::to_string(buf.size()) + " bytes)"));
        const std::size_t n = size.value_or(buf.size() - offset);
        if (n > buf.size() - offset)
            throw ValueError(detail::wire::error_text("Connection.send_bytes",
                                                      "offset + size = " + std::to_string(offset) + " + " +
                                                          std::to_string(n) + " is past the end of the buffer (" +
                                                          std::to_string(buf.size()) + " bytes)"));
        send_bytes(buf.subspan(offset, n));
    }

    std::vector<std::byte> recv_bytes() { return receive_bytes(std::nullopt, std::nullopt); }
    std::vector<std::byte> recv_bytes(Timeout timeout) { return receive_bytes(std::nullopt, timeout); }

    // Throws std::system_error(EMSGSIZE) for a longer message and, as Python does, stops
    // this end from receiving: the rest of that message is never read, so nothing after
    // it could be found.
    std::vector<std::byte> recv_bytes(std::size_t maxlength) { return receive_bytes(maxlength, std::nullopt); }
    std::vector<std::byte> recv_bytes(std::size_t maxlength, Timeout timeout) {
        return receive_bytes(maxlength, timeout);
    }

    // Reads one message into buf[offset:] and returns its size. When it does not fit,
    // throws BufferTooShort carrying the whole message, which is consumed either way.
    std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset = 0) {
        return receive_bytes_into(buf, offset, std::nullopt);
    }
    std::size_t recv_bytes_into(std::span<std::byte> buf, Timeout timeout) {
        return receive_bytes_into(buf, 0, timeout);
    }
    std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset, Timeout timeout) {
        return receive_bytes_into(buf, offset, timeout);
    }

    // The largest message this end accepts (default 1 GiB; Python has no limit). A longer
    // one is refused with std::system_error(EMSGSIZE) before any of it is read, and, since
    // the next message cannot then be found, this end stops receiving, as after
    // recv_bytes(maxlength). Applies to every copy of this end in this process. Memory
    // for a message grows as its bytes arrive, whatever its header claims.
    void set_max_message_size(std::size_t bytes) { endpoint().set_max_message_size(bytes); }
    std::size_t max_message_size() const { return endpoint().max_message_size(); }

    // Whether a message (or EOF) is waiting; never blocks, as Python's poll() (timeout 0).
    bool poll() { return poll(Timeout::zero()); }
    // Waits at most `timeout` for a message (or EOF).
    bool poll(Timeout timeout) {
        constexpr const char* op = "Connection.poll";
        check_readable(op);
        auto in_use = endpoint().use(op);
        return detail::wire::readable_within(in_use.fd(), detail::Deadline(timeout));
    }

    // Closes this end in this process, for every copy held here. The other end sees
    // EOFError once every process that held this end has closed it or exited.
    void close() {
        if (endpoint_) endpoint_->close();
    }
    bool closed() const { return !endpoint_ || endpoint_->closed(); }
    bool readable() const noexcept { return endpoint_ && endpoint_->readable(); }
    bool writable() const noexcept { return endpoint_ && endpoint_->writable(); }

    // The socket's fd, for ::poll/select/epoll. It stays owned by the Connection.
    int fileno() const {
        auto in_use = endpoint().use("Connection.fileno");
        return in_use.fd();
    }

    // As a Process argument under spawn or forkserver (detail/reduction.hpp): the fd
    // travels, and the child holds the same end.
    struct reduced_type {
        std::int32_t fd;
        bool readable;
        bool writable;
    };
    reduced_type reduce(detail::PassedFds& fds) const {
        auto in_use = endpoint().use("Process.start (passing a Connection)");
        return {fds.add(in_use.fd()), endpoint().readable(), endpoint().writable()};
    }
    static Connection rebuild(const reduced_type& r) {
        auto endpoint = std::make_shared<detail::PipeEndpoint>(r.readable, r.writable);
        endpoint->adopt(r.fd);
        return Connection(std::move(endpoint));
    }

private:
    friend std::pair<Connection<T>, Connection<T>> Pipe<T>(bool);
    friend class connection::Listener<T>;
    friend Connection connection::Client<T>(const connection::Address&, std::optional<std::string>);
    friend Connection connection::Client<T>(const connection::Address&, std::optional<std::string>, Timeout);
    explicit Connection(std::shared_ptr<detail::PipeEndpoint> endpoint) : endpoint_(std::move(endpoint)) {}

    // A duplex Connection over a connected socket, which it owns from now on.
    explicit Connection(detail::net::Socket socket) {
        // The endpoint first: if allocating it throws, `socket` still closes the fd.
        auto endpoint = std::make_shared<detail::PipeEndpoint>(true, true);
        endpoint->adopt(socket.release());
        endpoint_ = std::move(endpoint);
    }

    detail::PipeEndpoint& endpoint() const {
        if (!endpoint_)
            throw ValueError("Connection: this Connection was moved from; use the one it was moved to");
        return *endpoint_;
    }

    void check_readable(const char* op) const {
        if (endpoint().lost_position())
            throw ValueError(detail::wire::error_text(
                op, "this end no longer receives: an earlier receive stopped inside a message (recv_bytes("
                    "maxlength) met a longer one, or a timed receive's sender stalled in the middle of one), "
                    "and without reading it the next one cannot be found"));
        if (!endpoint().readable())
            throw ValueError(detail::wire::error_text(
                op, "this end of a one-way Pipe(duplex=false) only sends; receive on the first end of the "
                    "pair (auto [r, w] = Pipe<T>(false): r receives)"));
    }
    void check_writable(const char* op) const {
        if (!endpoint().writable())
            throw ValueError(detail::wire::error_text(
                op, "this end of a one-way Pipe(duplex=false) only receives; send on the second end of the "
                    "pair (auto [r, w] = Pipe<T>(false): w sends)"));
    }
    void write_frame(const char* op, iovec* iov, std::size_t count) {
        auto in_use = endpoint().use(op);
        std::lock_guard lock(endpoint().send_lock);
        detail::wire::send_all(in_use.fd(), iov, count, op);
    }

    // The size a frame header claims, if this end accepts it: past max_message_size()
    // nothing of the message is read, so this end loses its place in the stream.
    std::size_t accepted_size(std::uint64_t length, const char* op) const {
        const std::size_t limit = endpoint().max_message_size();
        if (length > limit) {
            endpoint().lose_position();
            throw std::system_error(
                EMSGSIZE, std::generic_category(),
                detail::wire::error_text(op, "message too long: its header claims " + std::to_string(length) +
                                                 " bytes, more than this Connection's max_message_size() of " +
                                                 std::to_string(limit) +
                                                 " bytes; it was not read, so this end no longer receives "
                                                 "(raise the limit with set_max_message_size() if the peer is "
                                                 "trusted to send that much)"));
        }
        return detail::wire::checked_message_size(length, op);
    }

    // One whole message; the caller holds recv_lock.
    std::vector<std::byte> read_message(int fd, const char* op, const detail::Deadline& deadline) const {
        const std::size_t size = accepted_size(detail::wire::read_frame_header(fd, op, deadline), op);
        return detail::wire::read_frame_payload_growing(fd, size, op, deadline);
    }

    static T decode(const std::vector<std::byte>& payload, const char* op) {
        detail::ByteReader reader(payload);
        T value = detail::get<T>(reader);
        if (reader.remaining() != 0)
            throw ProcessError(detail::wire::error_text(
                op, "the message has " + std::to_string(reader.remaining()) +
                        " bytes more than a value of this Connection's type uses; was it sent with "
                        "send_bytes(), or through a Connection of another type?"));
        return value;
    }

    // What every receiving call holds while it reads one message: this end's receive
    // lock (so frames are read whole) and its fd (kept open meanwhile).
    struct Receiving {
        detail::PipeEndpoint::InUse fd;
        std::unique_lock<detail::DeadlineLock> lock;
        detail::Deadline deadline;  // untimed for an untimed receive
    };

    // Reads the message the receive found, within its deadline. A timeout there leaves
    // the stream inside the message, so this end stops receiving (see check_readable).
    template <class Read>
    decltype(auto) read_within_deadline(Read&& read) const {
        try {
            return read();
        } catch (const TimeoutError&) {
            endpoint().lose_position();
            throw;
        }
    }

    // Waits for the receive lock and for the first byte of a message; TimeoutError if
    // `timeout` runs out first.
    Receiving start_receiving(const char* op, std::optional<Timeout> timeout) {
        check_readable(op);
        auto& ep = endpoint();
        // The fd first: a closed end fails at once, not after another thread's recv.
        auto in_use = ep.use(op);
        if (!timeout) return Receiving{std::move(in_use), std::unique_lock(ep.recv_lock), {}};
        const auto deadline = detail::Deadline(*timeout);
        std::unique_lock lock(ep.recv_lock, std::defer_lock);
        if (!deadline.timed())
            lock.lock();
        else if (!lock.try_lock_until(*deadline.at()))
            throw timed_out(op, *timeout);
        if (!detail::wire::readable_within(in_use.fd(), deadline)) throw timed_out(op, *timeout);
        return Receiving{std::move(in_use), std::move(lock), deadline};
    }

    T receive_value(std::optional<Timeout> timeout) {
        constexpr const char* op = "Connection.recv";
        auto r = start_receiving(op, timeout);
        return decode(read_within_deadline([&] { return read_message(r.fd.fd(), op, r.deadline); }), op);
    }

    std::size_t receive_bytes_into(std::span<std::byte> buf, std::size_t offset, std::optional<Timeout> timeout) {
        constexpr const char* op = "Connection.recv_bytes_into";
        if (offset > buf.size())
            throw ValueError(detail::wire::error_text(op, "offset " + std::to_string(offset) +
                                                              " is past the end of the buffer (" +
                                                              std::to_string(buf.size()) + " bytes)"));
        auto r = start_receiving(op, timeout);
        const int fd = r.fd.fd();
        const std::size_t size =
            accepted_size(read_within_deadline([&] { return detail::wire::read_frame_header(fd, op, r.deadline); }), op);
        const std::size_t room = buf.size() - offset;
        if (size <= room) {
            read_within_deadline([&] { detail::wire::read_frame_payload(fd, buf.data() + offset, size, op, r.deadline); });
            return size;
        }
        std::vector<std::byte> whole =
            read_within_deadline([&] { return detail::wire::read_frame_payload_growing(fd, size, op, r.deadline); });
        throw BufferTooShort(
            detail::wire::error_text(op, "the message is " + std::to_string(size) +
                                             " bytes but the buffer has room for " + std::to_string(room) +
                                             (offset ? " after offset " + std::to_string(offset) : std::string()) +
                                             "; the whole message is in BufferTooShort::message()"),
            std::move(whole));
    }

    std::vector<std::byte> receive_bytes(std::optional<std::size_t> maxlength, std::optional<Timeout> timeout) {
        constexpr const char* op = "Connection.recv_bytes";
        auto r = start_receiving(op, timeout);
        const int fd = r.fd.fd();
        const std::uint64_t length =
            read_within_deadline([&] { return detail::wire::read_frame_header(fd, op, r.deadline); });
        if (maxlength && length > *maxlength) {
            endpoint().lose_position();
            throw std::system_error(
                EMSGSIZE, std::generic_category(),
                detail::wire::error_text(op, "bad message length: the message is " + std::to_string(length) +
                                                 " bytes, more than maxlength = " + std::to_string(*maxlength) +
                                                 "; it was not read, so this end no longer receives"));
        }
        const std::size_t size = accepted_size(length, op);
        return read_within_deadline([&] { return detail::wire::read_frame_payload_growing(fd, size, op, r.deadline); });
    }

    static TimeoutError timed_out(const char* op, Timeout timeout) {
        return TimeoutError(
            detail::wire::error_text(op, "no message arrived within " + detail::describe_seconds(timeout)));
    }

    std::shared_ptr<detail::PipeEndpoint> endpoint_;
};

// Python's Pipe(duplex=True). With duplex = false the first end only receives and the
// second only sends.
template <class T>
std::pair<Connection<T>, Connection<T>> Pipe(bool duplex) {
    detail::require_transferable<T>();
    // Everything that can throw comes before the fds exist, so none can leak.
    auto first = std::make_shared<detail::PipeEndpoint>(true, duplex);
    auto second = std::make_shared<detail::PipeEndpoint>(duplex, true);
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
        detail::throw_errno("Pipe: socketpair (out of file descriptors? see ulimit -n)");
    first->adopt(fds[0]);
    second->adopt(fds[1]);
    if (!duplex) {
        // The kernel enforces the direction too, so even a raw write to fileno() of
        // the receiving end cannot reach the sender.
        ::shutdown(fds[0], SHUT_WR);
        ::shutdown(fds[1], SHUT_RD);
    }
    return {Connection<T>(std::move(first)), Connection<T>(std::move(second))};
}


namespace connection {

// Python's multiprocessing.connection.wait(object_list, timeout=None): blocks until at
// least one object is ready (a message or EOF waiting; a sentinel's process has exited)
// and returns the ready ones, in the order given.
template <detail::wire::waitable C>
std::vector<C> wait(const std::vector<C>& object_list) {
    return detail::wire::wait_until(object_list, detail::Deadline{});
}

// As above, but waits at most `timeout`; returns an empty vector if nothing got ready.
template <detail::wire::waitable C>
std::vector<C> wait(const std::vector<C>& object_list, Timeout timeout) {
    return detail::wire::wait_until(object_list, detail::Deadline(timeout));
}

}  // namespace connection

namespace detail {

// Client's work: a connected socket that passed the handshake (when there is a key).
inline net::Socket client_socket(const connection::Address& address, const std::optional<std::string>& authkey,
                                 const Deadline& deadline, const Deadline& handshake_deadline) {
    net::Socket socket = net::connect(address, deadline);
    if (!authkey) return socket;
    try {
        auth::client_handshake(socket.fd(), *authkey, handshake_deadline);
    } catch (const TimeoutError& e) {
        throw TimeoutError("Client (" + address.to_string() + "): connected, but the handshake did not finish in time: " +
                           e.what());
    } catch (const AuthenticationError& e) {
        throw AuthenticationError("Client (" + address.to_string() + "): " + e.what());
    }
    return socket;
}

// The server side of the handshake (auth::server_handshake) on one connection, taken a
// step at a time as the peer's frames arrive, so that a Listener can drive many at once
// from one accept(): a peer that connects and says nothing then delays nobody else.
// Each step reads only what is already there (never past the frame it waits for: what
// follows the handshake is the application's), and sends a frame of a few dozen bytes.
class ServerHandshake {
public:
    ServerHandshake(net::Socket socket, std::string_view authkey, Deadline deadline)
        : socket_(std::move(socket)), authkey_(authkey), deadline_(deadline) {
        message_ = auth::digest_tag;
        unsigned char nonce[auth::challenge_length];
        auth::random_bytes(nonce, sizeof nonce);
        message_.append(reinterpret_cast<const char*>(nonce), sizeof nonce);
        auth::send_handshake_frame(socket_.fd(), std::string(auth::challenge_tag) + message_, "the challenge");
    }

    int fd() const noexcept { return socket_.fd(); }
    const Deadline& deadline() const noexcept { return deadline_; }
    net::Socket take_socket() noexcept { return std::move(socket_); }

    // Reads what arrived and takes every step it allows. True once the peer is
    // authenticated both ways; AuthenticationError when it failed (as server_handshake
    // says it), false while it has more to send.
    bool advance() {
        for (;;) {
            std::optional<std::string> frame = read_frame();
            if (!frame) return false;
            switch (step_) {
                case Step::answer: {
                    const std::string& response = *frame;
                    const bool digest_shaped = response.size() == auth::digest_tag.size() + auth::digest_length &&
                                               response.starts_with(auth::digest_tag);
                    if (!digest_shaped || !auth::verify_response(authkey_, message_, response)) {
                        try {
                            wire::send_frame(fd(), auth::bytes_of(auth::failure), "authentication: sending the verdict");
                        } catch (const std::system_error&) {
                        }
                        if (!digest_shaped)
                            auth::throw_not_ours("the answer to our challenge is not an HMAC-SHA256 digest (" +
                                                 std::to_string(response.size()) + " bytes)");
                        throw AuthenticationError("authentication failed: the peer's authkey does not match ours (its "
                                                  "answer to our challenge is wrong)");
                    }
                    auth::send_handshake_frame(fd(), auth::welcome, "the verdict");
                    step_ = Step::challenge;
                    break;
                }
                case Step::challenge: {
                    const std::string& challenge = *frame;
                    if (!challenge.starts_with(auth::challenge_tag))
                        auth::throw_not_ours("what it sent first is not a challenge");
                    const std::string_view message = std::string_view(challenge).substr(auth::challenge_tag.size());
                    if (message.size() < auth::minimum_challenge_length)
                        auth::throw_not_ours("its challenge is too short (" + std::to_string(message.size()) +
                                             " bytes)");
                    if (!message.starts_with(auth::digest_tag))
                        throw AuthenticationError(
                            "authentication failed: the peer asks for a digest other than HMAC-SHA256; only {sha256} "
                            "is supported");
                    auth::send_handshake_frame(fd(), auth::create_response(authkey_, message),
                                               "the answer to the challenge");
                    step_ = Step::verdict;
                    break;
                }
                case Step::verdict:
                    if (*frame == auth::welcome) return true;
                    if (*frame == auth::failure)
                        throw AuthenticationError("authentication failed: our authkey does not match the peer's (it "
                                                  "rejected our answer to its challenge)");
                    auth::throw_not_ours("its verdict on our answer is neither #WELCOME# nor #FAILURE#");
            }
        }
    }

private:
    enum class Step { answer, challenge, verdict };

    const char* waiting_for() const noexcept {
        switch (step_) {
            case Step::answer: return "the answer to our challenge";
            case Step::challenge: return "a challenge";
            case Step::verdict: return "the verdict on our answer";
        }
        return "";
    }

    // The next whole frame, or nothing while part of it is still on its way.
    std::optional<std::string> read_frame() {
        for (;;) {
            std::size_t want = wire::frame_header_size;
            if (buffer_.size() >= wire::frame_header_size) {
                const std::uint64_t length = wire::decode_frame_header(buffer_.data());
                if (length > auth::max_handshake_frame)
                    auth::throw_not_ours("oversized message: the header claims " + std::to_string(length) +
                                         " bytes, more than a handshake frame can be (" +
                                         std::to_string(auth::max_handshake_frame) + ")");
                want += static_cast<std::size_t>(length);
                if (buffer_.size() == want) {
                    std::string frame(reinterpret_cast<const char*>(buffer_.data()) + wire::frame_header_size,
                                      want - wire::frame_header_size);
                    buffer_.clear();
                    return frame;
                }
            }
            const std::size_t have = buffer_.size();
            buffer_.resize(want);
            const ssize_t k = ::recv(fd(), buffer_.data() + have, want - have, MSG_DONTWAIT);
            if (k > 0) {
                buffer_.resize(have + static_cast<std::size_t>(k));
                continue;
            }
            buffer_.resize(have);
            if (k < 0 && errno == EINTR) continue;
            if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return std::nullopt;
            if (have > 0) auth::throw_not_ours("it closed the connection in the middle of a handshake frame");
            throw AuthenticationError(std::string("authentication failed: the peer closed the connection while we "
                                                  "waited for ") +
                                      waiting_for() +
                                      ": it rejected us, expects no authkey, or is not a multiprocessing Listener, "
                                      "Client or manager");
        }
    }

    net::Socket socket_;
    std::string authkey_;
    Deadline deadline_;
    std::string message_;  // our challenge without its tag: what the answer must sign
    Step step_ = Step::answer;
    std::vector<std::byte> buffer_;
};

}  // namespace detail

namespace connection {

// Python's multiprocessing.connection.Listener: listens on a TCP or AF_UNIX address and
// gives a Connection<T> per Client. With an authkey, every connection first runs the
// HMAC challenge in both directions; a client with another key (or one that is not a
// Client) fails an accept() with AuthenticationError, and the next accept() serves the
// next client. Unlike Python's, accept() drives the handshakes of every connection that
// has arrived at once (up to max_pending_handshakes, the oldest dropped beyond), so a
// peer that connects and says nothing holds up no other client. Move-only; close() may
// come from another thread and wakes a blocked accept().
template <class T>
class Listener {
public:
    // Connections in the middle of the handshake that accept() keeps; a newer one
    // beyond makes it drop the one that has waited longest.
    static constexpr std::size_t max_pending_handshakes = 64;

    // backlog: how many connections may wait for accept() (Python's default is 1, which
    // lets one silent peer fill the queue; more arrivals wait in connect, they are not
    // refused). An empty authkey is a key (as b'' is in Python); std::nullopt means no
    // handshake.
    explicit Listener(Address address = {"127.0.0.1", 0}, std::optional<std::string> authkey = std::nullopt,
                      int backlog = 16)
        : state_(std::make_unique<State>(detail::net::ListeningSocket(address, std::max(backlog, 0)),
                                         std::move(authkey))) {
        detail::require_transferable<T>();
    }
    Listener(Listener&&) noexcept = default;
    Listener& operator=(Listener&&) noexcept = default;
    ~Listener() = default;

    // Waits for a client. With an authkey its handshake must finish within
    // detail::auth::default_handshake_timeout of its connecting; AuthenticationError
    // when one fails (or times out).
    Connection<T> accept() { return accept_until(detail::Deadline(), std::nullopt); }
    // TimeoutError when nobody connects within `timeout`. The handshake that follows a
    // connection has its own limit, as above.
    Connection<T> accept(Timeout timeout) { return accept_until(detail::Deadline(timeout), timeout); }

    // Where it listens; for port 0, with the port the kernel picked. Give this to Client.
    Address address() const { return state().listening.address(); }
    // The address of the last client accepted (TCP only: AF_UNIX clients have no name).
    std::optional<Address> last_accepted() const {
        std::lock_guard lock(state().mutex);
        return state().last_accepted;
    }

    // Stops listening (a socket file is removed). Connections already accepted stay open.
    void close() {
        if (!state_) return;
        std::lock_guard lock(state_->mutex);
        if (state_->closed) return;
        state_->closed = true;
        // shutdown() acts on the socket, which a forked child shares with its parent: a
        // child closing its inherited copy must only close its fd. (Nobody in the child
        // is inside accept(): fork copied one thread, the one here.)
        if (state_->accepting == 0 || ::getpid() != state_->owner) {
            state_->listening.close();
            return;
        }
        // A thread blocked in accept() wakes up and finds `closed`; the fd itself goes
        // when the last such thread has left it, never under its feet.
        state_->listening.shutdown();
    }
    bool closed() const {
        if (!state_) return true;
        std::lock_guard lock(state_->mutex);
        return state_->closed;
    }

private:
    struct State {
        State(detail::net::ListeningSocket s, std::optional<std::string> key)
            : listening(std::move(s)), authkey(std::move(key)) {}
        detail::net::ListeningSocket listening;
        const std::optional<std::string> authkey;
        const pid_t owner = ::getpid();
        // One accept() at a time drives the handshakes (timed, so accept(timeout) also
        // gives up while another thread is the one accepting).
        detail::DeadlineLock accept_lock;
        struct Pending {
            detail::ServerHandshake handshake;
            std::optional<Address> peer;
        };
        std::list<Pending> pending;  // arrival order; guarded by accept_lock
        mutable std::mutex mutex;
        int accepting = 0;  // threads of `owner` inside accept()
        bool closed = false;
        std::optional<Address> last_accepted;
    };

    State& state() const {
        if (!state_) throw ValueError("Listener: this Listener was moved from; use the one it was moved to");
        return *state_;
    }

    [[noreturn]] static void throw_closed() {
        throw ValueError("Listener.accept: the Listener is closed (close() was called); create a new one");
    }

    // Keeps the listening fd open while this thread uses it (see close()).
    struct Accepting {
        State& s;
        explicit Accepting(State& state) : s(state) {
            std::lock_guard lock(s.mutex);
            if (s.closed) throw_closed();
            ++s.accepting;
        }
        ~Accepting() {
            std::lock_guard lock(s.mutex);
            if (--s.accepting == 0 && s.closed) s.listening.close();
        }
        Accepting(const Accepting&) = delete;
        Accepting& operator=(const Accepting&) = delete;
    };

    static std::optional<Address> peer_of(int fd) {
        sockaddr_storage peer{};
        socklen_t length = sizeof peer;
        if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length) != 0) return std::nullopt;
        char text[INET6_ADDRSTRLEN] = {};
        if (peer.ss_family == AF_INET) {
            const auto* in = reinterpret_cast<const sockaddr_in*>(&peer);
            ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
            return Address{text, ntohs(in->sin_port), {}};
        }
        if (peer.ss_family == AF_INET6) {
            const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&peer);
            ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
            return Address{text, ntohs(in6->sin6_port), {}};
        }
        return std::nullopt;
    }

    [[noreturn]] static void fail_handshake(const char* op, const std::optional<Address>& peer, const char* why,
                                            const std::string& detail_text) {
        const std::string who = "a client" + (peer ? " from " + peer->to_string() : std::string());
        throw AuthenticationError(detail::wire::error_text(
            op, who + " " + why + " and was dropped (the next accept() waits for another): " + detail_text));
    }

    Connection<T> accept_until(const detail::Deadline& deadline, std::optional<Timeout> timeout) {
        constexpr const char* op = "Listener.accept";
        State& s = state();
        auto timed_out = [&] {
            return TimeoutError(detail::wire::error_text(
                op, "no client connected to " + s.listening.address().to_string() + " within " +
                        detail::describe_seconds(*timeout)));
        };
        std::unique_lock accepting_lock(s.accept_lock, std::defer_lock);
        if (!deadline.timed())
            accepting_lock.lock();
        else if (!accepting_lock.try_lock_until(*deadline.at()))
            throw timed_out();
        Accepting in_use(s);
        // A forked child does not go on with its parent's handshakes.
        if (::getpid() != s.owner) s.pending.clear();
        std::vector<pollfd> fds;
        for (;;) {
            // Handshakes past their time fail, one per accept() as Python's would.
            for (auto it = s.pending.begin(); it != s.pending.end(); ++it) {
                if (!it->handshake.deadline().expired()) continue;
                const auto peer = it->peer;
                s.pending.erase(it);
                fail_handshake(op, peer, "did not finish the handshake in time",
                               "no answer within " + detail::describe_seconds(detail::auth::default_handshake_timeout));
            }
            // The listening socket and every pending handshake; woken at the earliest deadline.
            fds.assign(1, pollfd{s.listening.fd(), POLLIN, 0});
            detail::Deadline wake = deadline;
            for (auto& p : s.pending) {
                fds.push_back(pollfd{p.handshake.fd(), static_cast<short>(POLLIN | POLLRDHUP), 0});
                if (!wake.timed() || *p.handshake.deadline().at() < *wake.at()) wake = p.handshake.deadline();
            }
            if (detail::wire::poll_or_throw(fds.data(), fds.size(), wake) == 0) {
                if (deadline.expired()) throw timed_out();
                continue;
            }
            // Pending handshakes first: they arrived before anything still in the queue.
            std::size_t i = 1;
            for (auto it = s.pending.begin(); it != s.pending.end(); ++i) {
                const short revents = fds[i].revents;
                if (!revents) {
                    ++it;
                    continue;
                }
                bool done = false;
                try {
                    done = it->handshake.advance();
                } catch (const AuthenticationError& e) {
                    const auto peer = it->peer;
                    s.pending.erase(it);
                    fail_handshake(op, peer, "failed the handshake", e.what());
                }
                if (!done) {
                    ++it;
                    continue;
                }
                detail::net::Socket socket = it->handshake.take_socket();
                s.pending.erase(it);
                return Connection<T>(std::move(socket));
            }
            if (fds[0].revents) {
                std::optional<detail::net::Socket> accepted;
                try {
                    accepted = s.listening.accept(detail::Deadline::now());
                } catch (const ProcessError&) {
                    // Woken by close() from another thread: say so, as for any closed Listener.
                    if (closed()) throw_closed();
                    throw;
                }
                if (!accepted) continue;
                const auto peer = peer_of(accepted->fd());
                {
                    std::lock_guard lock(s.mutex);
                    s.last_accepted = peer;
                }
                if (!s.authkey) return Connection<T>(std::move(*accepted));
                try {
                    s.pending.push_back({detail::ServerHandshake(std::move(*accepted), *s.authkey,
                                                                 detail::Deadline(detail::auth::default_handshake_timeout)),
                                         peer});
                } catch (const AuthenticationError& e) {
                    fail_handshake(op, peer, "failed the handshake", e.what());
                }
                if (s.pending.size() > max_pending_handshakes) s.pending.pop_front();
            }
        }
    }

    std::unique_ptr<State> state_;
};

// Python's multiprocessing.connection.Client: connects to a Listener (or any server of
// this library's framing) and returns a duplex Connection<T>. With an authkey, runs the
// handshake, which must finish within detail::auth::default_handshake_timeout; a wrong
// key throws AuthenticationError. Nothing listening there: ProcessError naming the address.
template <class T>
Connection<T> Client(const Address& address, std::optional<std::string> authkey) {
    detail::require_transferable<T>();
    return Connection<T>(detail::client_socket(address, authkey, detail::Deadline(),
                                               detail::Deadline(detail::auth::default_handshake_timeout)));
}

// As above, with `timeout` for connecting and the handshake together: TimeoutError when
// it runs out.
template <class T>
Connection<T> Client(const Address& address, std::optional<std::string> authkey, Timeout timeout) {
    detail::require_transferable<T>();
    const detail::Deadline deadline(timeout);
    return Connection<T>(detail::client_socket(address, authkey, deadline, deadline));
}

}  // namespace connection

// Context's factory (declared in context.hpp).
template <class T>
auto Context::Pipe(bool duplex) const {
    return multiprocessing::Pipe<T>(duplex);
}

}  // namespace multiprocessing
