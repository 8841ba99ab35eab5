// Framing and fd I/O for byte streams between processes: the pipes of connection.hpp
// (and, later, the sockets of managers). A message is one frame: a u64 length
// (little-endian) and then that many bytes.
#pragma once

#include <cerrno>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../errors.hpp"
#include "deadline.hpp"
#include "shm.hpp"  // throw_errno

namespace multiprocessing {

namespace detail::wire {

// "Connection.recv: <text>". Out of line: error paths are cold, and GCC 12's
// -Warray-bounds misfires on string concatenation inlined into them.
[[gnu::cold, gnu::noinline]] inline std::string error_text(const char* op, const std::string& text) {
    std::string m(op);
    m += ": ";
    m += text;
    return m;
}

// ::ppoll until one of `fds` has an event or the deadline passes, retrying on EINTR with
// the time that is left. Returns the number of fds with events (0: the deadline passed).
inline int poll_until(pollfd* fds, nfds_t n, const Deadline& deadline) {
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
        if (r >= 0) return r;
        if (errno != EINTR) throw_errno("multiprocessing.connection: poll");
    }
}

// Data or EOF: anything that makes a read return at once counts, as Python's wait() has it.
inline constexpr short ready_to_read = POLLIN | POLLHUP | POLLERR | POLLRDHUP;

inline bool readable_within(int fd, const Deadline& deadline) {
    pollfd p{fd, static_cast<short>(POLLIN | POLLRDHUP), 0};
    return poll_until(&p, 1, deadline) > 0 && (p.revents & (ready_to_read | POLLNVAL));
}

// ---- framing -----------------------------------------------------------------------------

inline constexpr std::size_t frame_header_size = 8;

inline void encode_frame_header(std::byte* out, std::uint64_t length) noexcept {
    for (std::size_t i = 0; i < frame_header_size; ++i) out[i] = static_cast<std::byte>(length >> (8 * i));
}

inline std::uint64_t decode_frame_header(const std::byte* in) noexcept {
    std::uint64_t length = 0;
    for (std::size_t i = 0; i < frame_header_size; ++i) length |= std::uint64_t(in[i]) << (8 * i);
    return length;
}

[[noreturn]] inline void throw_peer_gone(const char* op) {
    throw std::system_error(EPIPE, std::generic_category(),
                            error_text(op, "the other end of the pipe is closed (every process that held it "
                                           "closed it or exited), so nothing more can be sent"));
}

// Writes every byte of `iov`, across partial writes and EINTR. MSG_NOSIGNAL turns the
// SIGPIPE of a vanished peer into EPIPE.
inline void send_all(int fd, iovec* iov, std::size_t count, const char* op) {
    while (count > 0) {
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = count;
        const ssize_t sent = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR) continue;
            // ECONNRESET: the peer closed with our data still unread. To the sender that
            // is the same fact as EPIPE, so it gets the same error.
            if (errno == EPIPE || errno == ECONNRESET) throw_peer_gone(op);
            throw_errno(error_text(op, "sendmsg"));
        }
        auto left = static_cast<std::size_t>(sent);
        while (count > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            ++iov;
            --count;
        }
        if (count > 0) {
            iov->iov_base = static_cast<char*>(iov->iov_base) + left;
            iov->iov_len -= left;
        }
    }
}

// Reads up to n bytes, fewer only at EOF; returns how many arrived.
inline std::size_t read_up_to(int fd, std::byte* out, std::size_t n, const char* op) {
    std::size_t got = 0;
    while (got < n) {
        const ssize_t k = ::read(fd, out + got, n - got);
        if (k > 0) {
            got += static_cast<std::size_t>(k);
            continue;
        }
        if (k == 0) break;
        if (errno == EINTR) continue;
        // The peer closed with data of ours unread. Linux reports this only once our own
        // receive queue is empty, so nothing sent to us is lost: it is EOF.
        if (errno == ECONNRESET) break;
        throw_errno(error_text(op, "read"));
    }
    return got;
}

[[noreturn]] inline void throw_truncated(const char* op, std::size_t got, std::uint64_t expected) {
    throw EOFError(error_text(op, "the other end closed in the middle of a message (got " + std::to_string(got) +
                                      " of " + std::to_string(expected) +
                                      " bytes); the sending process probably died while sending"));
}

// The length of the next message; EOFError when the stream ends before it.
inline std::uint64_t read_frame_header(int fd, const char* op) {
    std::byte header[frame_header_size];
    const std::size_t got = read_up_to(fd, header, frame_header_size, op);
    if (got == 0)
        throw EOFError(error_text(op, "the other end of the pipe is closed (every process that held it closed "
                                      "it or exited) and every message sent has been read"));
    if (got < frame_header_size) throw_truncated(op, got, frame_header_size);
    return decode_frame_header(header);
}

inline void read_frame_payload(int fd, std::byte* out, std::uint64_t length, const char* op) {
    const std::size_t got = read_up_to(fd, out, static_cast<std::size_t>(length), op);
    if (got < length) throw_truncated(op, got, length);
}

inline std::size_t checked_message_size(std::uint64_t length, const char* op) {
    if (length > std::uint64_t(SIZE_MAX) / 2)
        throw ProcessError(error_text(op, "a message header claims " + std::to_string(length) +
                                              " bytes; the stream is corrupt (did something other than a "
                                              "Connection write to this fd?)"));
    return static_cast<std::size_t>(length);
}

}  // namespace detail::wire

namespace detail::wire {

// What connection::wait() accepts: a pointer to anything with fileno() (a Connection), or a plain
// fd such as a Process::sentinel().
template <class C>
concept waitable = std::same_as<C, int> || (std::is_pointer_v<C> && requires(C c) {
                                                { c->fileno() } -> std::convertible_to<int>;
                                            });

template <class C>
int fd_of(const C& object) {
    if constexpr (std::same_as<C, int>)
        return object;
    else
        return object->fileno();
}

template <class C>
std::vector<C> wait_until(const std::vector<C>& objects, const Deadline& deadline) {
    std::vector<pollfd> fds;
    fds.reserve(objects.size());
    for (const auto& object : objects) {
        if constexpr (requires { object->readable(); }) {
            if (!object->readable())
                throw ValueError("connection.wait: a Connection in the list does not receive (it is the "
                                 "sending end of a one-way Pipe); wait only on ends that receive");
        }
        fds.push_back({fd_of(object), static_cast<short>(POLLIN | POLLRDHUP), 0});
    }
    std::vector<C> ready;
    if (poll_until(fds.data(), fds.size(), deadline) == 0) return ready;
    for (std::size_t i = 0; i < objects.size(); ++i)
        if (fds[i].revents & (ready_to_read | POLLNVAL)) ready.push_back(objects[i]);
    return ready;
}

}  // namespace detail::wire

}  // namespace multiprocessing
