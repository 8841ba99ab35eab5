// Framing and fd I/O for byte streams between processes: the pipes of connection.hpp
// and the sockets of Listener/Client and managers. A message is one frame: a u64 length
// (little-endian) and then that many bytes. Also the HMAC challenge-response handshake
// that Listener/Client and managers run over a fresh socket (namespace auth).
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

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

// deadline.hpp's poll_until, with an error other than EINTR thrown.
inline int poll_or_throw(pollfd* fds, nfds_t n, const Deadline& deadline) {
    const int r = detail::poll_until(fds, n, deadline);
    if (r < 0) throw_errno("multiprocessing.connection: poll");
    return r;
}

// Data or EOF: anything that makes a read return at once counts, as Python's wait() has it.
inline constexpr short ready_to_read = POLLIN | POLLHUP | POLLERR | POLLRDHUP;

inline bool readable_within(int fd, const Deadline& deadline) {
    pollfd p{fd, static_cast<short>(POLLIN | POLLRDHUP), 0};
    return poll_or_throw(&p, 1, deadline) > 0 && (p.revents & (ready_to_read | POLLNVAL));
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

// A timed receive whose message began but did not finish in time: the rest of it is
// still to come, so the stream is no longer at a message boundary.
[[noreturn]] inline void throw_stalled(const char* op) {
    throw TimeoutError(error_text(op, "a message began but the rest of it did not arrive before the timeout ran "
                                      "out: the sender stalled in the middle of it, and this end, no longer at a "
                                      "message boundary, receives no more"));
}

// Reads up to n bytes, fewer only at EOF; returns how many arrived. With a deadline
// (a timed receive), each read waits for bytes only until then: a peer that stops in
// the middle of a message cannot hold the receiver past its timeout.
inline std::size_t read_up_to(int fd, std::byte* out, std::size_t n, const char* op, const Deadline& deadline = {}) {
    std::size_t got = 0;
    while (got < n) {
        if (deadline.timed() && !readable_within(fd, deadline)) throw_stalled(op);
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
inline std::uint64_t read_frame_header(int fd, const char* op, const Deadline& deadline = {}) {
    std::byte header[frame_header_size];
    const std::size_t got = read_up_to(fd, header, frame_header_size, op, deadline);
    if (got == 0)
        throw EOFError(error_text(op, "the other end of the pipe is closed (every process that held it closed "
                                      "it or exited) and every message sent has been read"));
    if (got < frame_header_size) throw_truncated(op, got, frame_header_size);
    return decode_frame_header(header);
}

inline void read_frame_payload(int fd, std::byte* out, std::uint64_t length, const char* op,
                               const Deadline& deadline = {}) {
    const std::size_t got = read_up_to(fd, out, static_cast<std::size_t>(length), op, deadline);
    if (got < length) throw_truncated(op, got, length);
}

// Reads a payload of `length` bytes into a buffer that grows with the bytes that arrive:
// up to eager_payload_bytes at once, then doubling. A header is only a claim, and a peer
// that claims a gigabyte and sends nothing (or dies) must not have cost a gigabyte: the
// receiver holds at most about twice what actually came. (Zero-filling and moving on
// growth cost a large honest message about one extra pass over its bytes.)
inline constexpr std::size_t eager_payload_bytes = std::size_t(1) << 20;

inline std::vector<std::byte> read_frame_payload_growing(int fd, std::size_t length, const char* op,
                                                         const Deadline& deadline = {}) {
    std::vector<std::byte> payload;
    std::size_t got = 0;
    while (got < length) {
        if (got == payload.size())
            payload.resize(std::min(length, std::max(eager_payload_bytes, payload.size() * 2)));
        const std::size_t want = payload.size() - got;
        const std::size_t n = read_up_to(fd, payload.data() + got, want, op, deadline);
        got += n;
        if (n < want) throw_truncated(op, got, length);
    }
    return payload;
}

// The default limit on one message received by a Connection (Connection::
// set_max_message_size changes it per connection). Python has none; with buffers that
// grow only as bytes arrive a limit is not needed for safety against a lying header, but
// it bounds what one peer can make this process hold by actually sending.
inline constexpr std::size_t default_max_message_size = std::size_t(1) << 30;

inline std::size_t checked_message_size(std::uint64_t length, const char* op) {
    if (length > std::uint64_t(SIZE_MAX) / 2)
        throw ProcessError(error_text(op, "a message header claims " + std::to_string(length) +
                                              " bytes; the stream is corrupt (did something other than a "
                                              "Connection write to this fd?)"));
    return static_cast<std::size_t>(length);
}

// ---- frames with a deadline and a size limit (sockets from outside) ----------------------

// One frame in one sendmsg (header and payload as two iovecs) when the socket buffer has
// room. std::system_error(EPIPE) when the peer is gone.
inline void send_frame(int fd, std::span<const std::byte> payload, const char* op) {
    std::byte header[frame_header_size];
    encode_frame_header(header, payload.size());
    iovec iov[2] = {{header, sizeof header}, {const_cast<std::byte*>(payload.data()), payload.size()}};
    send_all(fd, iov, payload.empty() ? 1 : 2, op);
}

[[noreturn]] inline void throw_deadline_passed(const char* op, bool inside_frame) {
    throw TimeoutError(error_text(
        op, inside_frame ? "the deadline passed in the middle of a message (the peer sent part of it and stalled); "
                           "the stream is now inside a frame and cannot be used any more"
                         : "no message arrived before the deadline"));
}

// Reads exactly n bytes from a socket; returns fewer only at EOF. Each read is
// non-blocking and only an empty socket costs a poll, so the deadline holds however the
// peer dribbles the bytes, and bytes already there are read even after the deadline.
inline std::size_t read_within(int fd, std::byte* out, std::size_t n, const Deadline& deadline, bool inside_frame,
                               const char* op) {
    std::size_t got = 0;
    while (got < n) {
        const ssize_t k = ::recv(fd, out + got, n - got, MSG_DONTWAIT);
        if (k > 0) {
            got += static_cast<std::size_t>(k);
            continue;
        }
        if (k == 0) break;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (!readable_within(fd, deadline)) throw_deadline_passed(op, inside_frame || got > 0);
            continue;
        }
        if (errno == EINTR) continue;
        if (errno == ECONNRESET) break;  // as in read_up_to: nothing sent to us is lost
        throw_errno(error_text(op, "recv"));
    }
    return got;
}

[[noreturn]] inline void throw_cut_short(const char* op, std::size_t got, std::uint64_t expected) {
    throw ProcessError(error_text(op, "the other end closed in the middle of a message (got " + std::to_string(got) +
                                          " of " + std::to_string(expected) +
                                          " bytes): the peer died or gave up while sending"));
}

// One frame of at most max_length bytes, all of it before `deadline`. `fd` is a socket.
//   EOFError      the stream ended cleanly before a frame began
//   TimeoutError  the deadline passed (before or inside the frame)
//   ProcessError  the header claims more than max_length ("oversized": nothing of it is
//                 read or allocated, so a hostile header costs nothing), or the stream
//                 ended inside the frame
inline std::vector<std::byte> recv_frame(int fd, std::size_t max_length, const Deadline& deadline, const char* op) {
    std::byte header[frame_header_size];
    const std::size_t got = read_within(fd, header, frame_header_size, deadline, false, op);
    if (got == 0)
        throw EOFError(error_text(op, "the other end closed the connection (and every message it sent has been read)"));
    if (got < frame_header_size) throw_cut_short(op, got, frame_header_size);
    const std::uint64_t length = decode_frame_header(header);
    if (length > max_length)
        throw ProcessError(error_text(op, "oversized message: the header claims " + std::to_string(length) +
                                              " bytes, more than the " + std::to_string(max_length) +
                                              " allowed here; the peer is not speaking this protocol, or the "
                                              "stream is corrupt"));
    std::vector<std::byte> payload(static_cast<std::size_t>(length));
    const std::size_t body = read_within(fd, payload.data(), payload.size(), deadline, true, op);
    if (body < payload.size()) throw_cut_short(op, body, length);
    return payload;
}

}  // namespace detail::wire

// ---- the handshake -----------------------------------------------------------------------

// Python's multiprocessing.connection deliver_challenge / answer_challenge, in its modern
// form (3.12+): the challenge is "{sha256}" + 40 random bytes, the answer is "{sha256}" +
// HMAC-SHA256(authkey, challenge), the verdict "#WELCOME#" or "#FAILURE#". Each side
// challenges the other, so a wrong key fails on both sides, and the key itself never
// crosses the wire. (Python's frames have a big-endian i32 header, ours a little-endian
// u64 one: the two do not interoperate; the protocol on top is the same.)
namespace detail::auth {

inline constexpr std::string_view challenge_tag = "#CHALLENGE#";
inline constexpr std::string_view welcome = "#WELCOME#";
inline constexpr std::string_view failure = "#FAILURE#";
inline constexpr std::string_view digest_tag = "{sha256}";
inline constexpr std::size_t challenge_length = 40;  // random bytes, as Python's MESSAGE_LENGTH
inline constexpr std::size_t minimum_challenge_length = 20;  // Python's legacy length, the least it accepts
inline constexpr std::size_t digest_length = 32;
// Every handshake frame is far smaller: a peer that claims more is not one of ours, and
// is rejected before anything is read or allocated.
inline constexpr std::size_t max_handshake_frame = 256;
// How long a handshake may take when the caller gave no timeout: generous for any
// network, but a peer that connects and says nothing cannot hold a server forever.
inline constexpr std::chrono::seconds default_handshake_timeout{30};

using Digest = std::array<unsigned char, digest_length>;

inline std::span<const std::byte> bytes_of(std::string_view s) noexcept {
    return std::as_bytes(std::span(s.data(), s.size()));
}
inline std::string_view text_of(std::span<const std::byte> b) noexcept {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}

inline Digest hmac_sha256(std::string_view key, std::span<const std::byte> data) {
    if (key.size() > static_cast<std::size_t>(INT_MAX)) throw ValueError("authkey: longer than 2 GiB");
    // An empty key is valid (Python allows b''), but OpenSSL reads a null key as "no key".
    static const unsigned char no_key = 0;
    const void* key_bytes = key.empty() ? static_cast<const void*>(&no_key) : key.data();
    Digest out{};
    unsigned int out_length = 0;
    if (!HMAC(EVP_sha256(), key_bytes, static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
              data.size(), out.data(), &out_length) ||
        out_length != out.size())
        throw ProcessError("authentication: HMAC-SHA256 failed in OpenSSL (is the sha256 digest available?)");
    return out;
}

inline void random_bytes(unsigned char* out, std::size_t n) {
    if (n > static_cast<std::size_t>(INT_MAX) || RAND_bytes(out, static_cast<int>(n)) != 1)
        throw ProcessError("authentication: OpenSSL's RAND_bytes failed (the system's random source is not seeded?)");
}

// A fresh key, for a manager that was given none: 32 random bytes, as Python's
// os.urandom(32) for a process's authkey.
inline std::string random_authkey() {
    unsigned char key[32];
    random_bytes(key, sizeof key);
    return std::string(reinterpret_cast<const char*>(key), sizeof key);
}

// The answer to `message` (the challenge without "#CHALLENGE#"): "{sha256}" + its HMAC.
// The MAC covers the "{sha256}" prefix too, so a peer cannot downgrade the digest.
inline std::string create_response(std::string_view authkey, std::string_view message) {
    const Digest mac = hmac_sha256(authkey, bytes_of(message));
    std::string response(digest_tag);
    response.append(reinterpret_cast<const char*>(mac.data()), mac.size());
    return response;
}

// Whether `response` is the right answer to `message` under `authkey`; constant time in
// the digest, so timing tells an attacker nothing about how much of it was right.
inline bool verify_response(std::string_view authkey, std::string_view message, std::string_view response) {
    if (response.size() != digest_tag.size() + digest_length || !response.starts_with(digest_tag)) return false;
    const Digest expected = hmac_sha256(authkey, bytes_of(message));
    return CRYPTO_memcmp(expected.data(), response.data() + digest_tag.size(), digest_length) == 0;
}

[[noreturn]] inline void throw_not_ours(const std::string& what) {
    throw AuthenticationError("authentication failed: " + what +
                              ": the peer is not a multiprocessing Listener, Client or manager (of this library), "
                              "or it expects no authkey");
}

// A handshake frame: failures of the peer (it hung up, sent garbage, sent a huge header)
// become AuthenticationError; a deadline that passed stays TimeoutError.
inline std::string recv_handshake_frame(int fd, const Deadline& deadline, const char* waiting_for) {
    const std::string op = std::string("while waiting for ") + waiting_for;
    try {
        auto frame = wire::recv_frame(fd, max_handshake_frame, deadline, op.c_str());
        return std::string(text_of(frame));
    } catch (const TimeoutError&) {
        throw TimeoutError(std::string("authentication timed out waiting for ") + waiting_for +
                           ": the peer expects no authkey (a Listener or Client without one?), is not a "
                           "multiprocessing peer, or is stuck");
    } catch (const EOFError&) {
        throw AuthenticationError(std::string("authentication failed: the peer closed the connection while we "
                                              "waited for ") +
                                  waiting_for +
                                  ": it rejected us, expects no authkey, or is not a multiprocessing Listener, "
                                  "Client or manager");
    } catch (const ProcessError& e) {
        // Oversized or cut short: nothing a multiprocessing peer would send.
        throw_not_ours(e.what());
    }
}

inline void send_handshake_frame(int fd, std::string_view frame, const char* what) {
    try {
        wire::send_frame(fd, bytes_of(frame), "authentication");
    } catch (const std::system_error&) {
        throw AuthenticationError(std::string("authentication failed: the peer closed the connection before we could "
                                              "send it ") +
                                  what);
    }
}

// The challenging side: proves that the peer holds `authkey`.
inline void deliver_challenge(int fd, std::string_view authkey, const Deadline& deadline) {
    std::string message(digest_tag);
    unsigned char nonce[challenge_length];
    random_bytes(nonce, sizeof nonce);
    message.append(reinterpret_cast<const char*>(nonce), sizeof nonce);
    send_handshake_frame(fd, std::string(challenge_tag) + message, "the challenge");
    const std::string response = recv_handshake_frame(fd, deadline, "the answer to our challenge");
    const bool digest_shaped = response.size() == digest_tag.size() + digest_length && response.starts_with(digest_tag);
    if (!digest_shaped || !verify_response(authkey, message, response)) {
        try {
            // Tell the peer why it is being dropped; it may already be gone.
            wire::send_frame(fd, bytes_of(failure), "authentication: sending the verdict");
        } catch (const std::system_error&) {
        }
        if (!digest_shaped)
            throw_not_ours("the answer to our challenge is not an HMAC-SHA256 digest (" +
                           std::to_string(response.size()) + " bytes)");
        throw AuthenticationError(
            "authentication failed: the peer's authkey does not match ours (its answer to our challenge is wrong)");
    }
    send_handshake_frame(fd, welcome, "the verdict");
}

// The challenged side: proves to the peer that we hold `authkey`.
inline void answer_challenge(int fd, std::string_view authkey, const Deadline& deadline) {
    const std::string challenge = recv_handshake_frame(fd, deadline, "a challenge");
    if (!challenge.starts_with(challenge_tag)) throw_not_ours("what it sent first is not a challenge");
    const std::string_view message = std::string_view(challenge).substr(challenge_tag.size());
    if (message.size() < minimum_challenge_length)
        throw_not_ours("its challenge is too short (" + std::to_string(message.size()) + " bytes)");
    if (!message.starts_with(digest_tag))
        throw AuthenticationError(
            "authentication failed: the peer asks for a digest other than HMAC-SHA256 (an old Python "
            "multiprocessing peer asking for HMAC-MD5?); only {sha256} is supported");
    send_handshake_frame(fd, create_response(authkey, message), "the answer to the challenge");
    const std::string verdict = recv_handshake_frame(fd, deadline, "the verdict on our answer");
    if (verdict == welcome) return;
    if (verdict == failure)
        throw AuthenticationError("authentication failed: our authkey does not match the peer's (it rejected our "
                                  "answer to its challenge)");
    throw_not_ours("its verdict on our answer is neither #WELCOME# nor #FAILURE#");
}

// The two directions in Python's order: the server challenges first, then answers; the
// client answers, then challenges. A key mismatch thus shows on the server as "the peer's
// authkey does not match ours" and on the client as "does not match the peer's".
inline void server_handshake(int fd, std::string_view authkey, const Deadline& deadline) {
    deliver_challenge(fd, authkey, deadline);
    answer_challenge(fd, authkey, deadline);
}

inline void client_handshake(int fd, std::string_view authkey, const Deadline& deadline) {
    answer_challenge(fd, authkey, deadline);
    deliver_challenge(fd, authkey, deadline);
}

}  // namespace detail::auth

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
    if (poll_or_throw(fds.data(), fds.size(), deadline) == 0) return ready;
    for (std::size_t i = 0; i < objects.size(); ++i)
        if (fds[i].revents & (ready_to_read | POLLNVAL)) ready.push_back(objects[i]);
    return ready;
}

}  // namespace detail::wire

}  // namespace multiprocessing
