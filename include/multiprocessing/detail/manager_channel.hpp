// One end of a manager connection: a socket that carries framed requests one way and
// framed replies the other, strictly alternating.
//
// A proxy call is a round trip, and on a machine with few cores most of its cost is
// not the bytes but the sleep and wake-up on each side. So a side that expects a frame
// soon polls the socket for a short while before it sleeps in poll(): the client right
// after sending a request, the server right after sending a reply (the next request of a
// busy client comes within microseconds). Only as many threads per process spin as the
// machine has spare cores, so spinning never steals the core the other side needs.
#pragma once

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>

#include "../errors.hpp"
#include "deadline.hpp"
#include "shared_object.hpp"
#include "socket.hpp"
#include "wire.hpp"

namespace multiprocessing::detail::manager {


// How many threads of this process may spin-wait on a socket at once.
class SpinSlots {
public:
    static bool try_take() noexcept {
        auto& n = in_use();
        // relaxed: a counter of permits; no data is published through it.
        int now = n.load(std::memory_order_relaxed);
        while (now < limit())
            if (n.compare_exchange_weak(now, now + 1, std::memory_order_relaxed)) return true;
        return false;
    }
    static void give_back() noexcept { in_use().fetch_sub(1, std::memory_order_relaxed); }

private:
    static std::atomic<int>& in_use() noexcept {
        static std::atomic<int> n{0};
        return n;
    }
    static int limit() noexcept {
        static const int spare = [] {
            const unsigned cores = std::thread::hardware_concurrency();
            return cores > 1 ? static_cast<int>(cores - 1) : 0;
        }();
        return spare;
    }
};

class FrameChannel {
public:
    FrameChannel() = default;
    explicit FrameChannel(net::Socket socket) : socket_(std::move(socket)), pid_(current_pid()) {
        notice_dead_peers(socket_.fd());
    }

    // A call may wait for its reply for as long as the served method blocks, so a dead
    // peer must show up as an error rather than as silence: on TCP, keepalive probes
    // after 5 s of quiet (every 2 s, 3 tries) and a 15 s limit on unacknowledged data
    // turn a vanished machine into a failed call within about 15 s. A live peer's kernel
    // answers the probes, so a long blocking get() on a healthy server is not affected.
    // (Unix sockets need none of this: a dead process closes its end at once.)
    static void notice_dead_peers(int fd) noexcept {
        sockaddr_storage address{};
        socklen_t length = sizeof address;
        if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return;
        if (address.ss_family != AF_INET && address.ss_family != AF_INET6) return;
        const int on = 1, idle = 5, interval = 2, probes = 3;
        const unsigned user_timeout_ms = 15000;
        ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
        ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
    }

    int fd() const noexcept { return socket_.fd(); }
    // The process that made this connection: a fork child must not use its parent's.
    pid_t pid() const noexcept { return pid_; }
    explicit operator bool() const noexcept { return static_cast<bool>(socket_); }
    net::Socket& socket() noexcept { return socket_; }

    // The buffer a frame is built in: frame_header_size bytes of room, then the payload.
    std::vector<std::byte>& out() noexcept { return out_; }

    // Sends out(), filling in its frame header.
    void send_out(const char* op) {
        wire::encode_frame_header(out_.data(), out_.size() - wire::frame_header_size);
        iovec iov{out_.data(), out_.size()};
        wire::send_all(socket_.fd(), &iov, 1, op);
    }

    // The next frame's payload, valid until the next receive. EOFError when the peer
    // closed between frames; ProcessError for a truncated or oversized frame (which the
    // caller answers by dropping the connection); TimeoutError at the deadline.
    std::span<const std::byte> receive(std::size_t max_length, const Deadline& deadline,
                                       std::chrono::nanoseconds spin, const char* op) {
        consume_previous();
        fill(wire::frame_header_size, deadline, spin, op, /*at_frame_start=*/true);
        const std::uint64_t length = wire::decode_frame_header(in_.data() + start_);
        if (length > max_length)
            throw ProcessError(wire::error_text(op, "a frame of " + std::to_string(length) +
                                                        " bytes is over the limit of " +
                                                        std::to_string(max_length) + " bytes"));
        const std::size_t total = wire::frame_header_size + static_cast<std::size_t>(length);
        fill(total, deadline, spin, op, false);
        frame_end_ = start_ + total;
        return {in_.data() + start_ + wire::frame_header_size, static_cast<std::size_t>(length)};
    }

private:
    void consume_previous() noexcept {
        if (frame_end_ == 0) return;
        start_ = frame_end_;
        frame_end_ = 0;
        if (start_ == have_) start_ = have_ = 0;
    }

    // Makes in_[start_, start_ + need) hold received bytes.
    void fill(std::size_t need, const Deadline& deadline, std::chrono::nanoseconds spin, const char* op,
              bool at_frame_start) {
        if (have_ - start_ >= need) return;
        if (in_.size() < start_ + need && start_ > 0) {
            // Move the unread bytes to the front before growing.
            std::memmove(in_.data(), in_.data() + start_, have_ - start_);
            have_ -= start_;
            start_ = 0;
        }
        bool may_spin = spin.count() > 0;
        while (have_ - start_ < need) {
            // The buffer grows with the bytes that arrive, never to what a header merely
            // claims: a peer announcing a huge frame and sending nothing costs nothing.
            if (have_ == in_.size())
                in_.resize(std::min(start_ + need, std::max<std::size_t>(in_.size() * 2, 4096)));
            const ssize_t got = ::recv(socket_.fd(), in_.data() + have_, in_.size() - have_, MSG_DONTWAIT);
            if (got > 0) {
                have_ += static_cast<std::size_t>(got);
                continue;
            }
            if (got == 0 || (got < 0 && errno == ECONNRESET)) {
                if (at_frame_start && have_ == start_)
                    throw EOFError(wire::error_text(op, "the other end closed the connection"));
                wire::throw_truncated(op, have_ - start_, need);
            }
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) throw_errno(wire::error_text(op, "recv"));
            if (may_spin) {
                may_spin = false;
                if (spin_until_readable(spin)) continue;
            }
            if (!wire::readable_within(socket_.fd(), deadline))
                throw TimeoutError(wire::error_text(op, "no reply within the timeout"));
        }
    }

    bool spin_until_readable(std::chrono::nanoseconds spin) {
        if (!SpinSlots::try_take()) return false;
        const auto until = std::chrono::steady_clock::now() + spin;
        bool ready = false;
        for (int i = 0;; ++i) {
            char probe;
            const ssize_t r = ::recv(socket_.fd(), &probe, 1, MSG_DONTWAIT | MSG_PEEK);
            if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                ready = true;
                break;
            }
            // Yield rather than pause: when the machine is busy the other side may be
            // waiting for this very core, and a yield hands it over at once.
            ::sched_yield();
            if ((i & 3) == 3 && std::chrono::steady_clock::now() >= until) break;
        }
        SpinSlots::give_back();
        return ready;
    }

    net::Socket socket_;
    pid_t pid_ = 0;
    std::vector<std::byte> out_;
    std::vector<std::byte> in_;
    std::size_t start_ = 0;      // first unread byte of in_
    std::size_t have_ = 0;       // end of the bytes received into in_
    std::size_t frame_end_ = 0;  // end of the frame last returned (0: none)
};

}  // namespace multiprocessing::detail::manager
