// The forkserver start method: a server process, itself a spawned (so single-threaded,
// clean) copy of this program, forks the children on request. Forking from it is safe
// whatever threads the asking process runs and whatever locks they hold; and it is
// cheaper than spawn, since the server has already loaded and initialized the program.
//
// One server per process that uses the method, started on first use. A request is one
// SOCK_SEQPACKET message carrying, as SCM_RIGHTS, the child's bootstrap memfd (the one
// spawn_child() would give a spawned child), the write end of a pipe for its exit
// status, and the fds the child needs; the reply is its pid. The child runs the same
// bootstrap a spawned child runs. The server reaps its children and writes each one's
// wait status to its pipe, which is how the asker learns it (ChildRecord reads it).
//
// The server exits when the asking process's end of the socket closes (the asker exited
// or was killed); children that asked to die with their parent (pool workers) are then
// killed by PR_SET_PDEATHSIG, so a killed parent leaves no worker behind.
#pragma once

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "popen_spawn.hpp"

namespace multiprocessing::detail {

// A child the fork server made: its pid, a pidfd the server opened while the child was
// still its unreaped child (so it names that process even if it has already exited and
// its pid been reused), and where its wait status will arrive.
struct ServedChild {
    pid_t pid = 0;
    UniqueFd pidfd;
    UniqueFd status;
};

inline constexpr std::size_t forkserver_max_fds = 16;  // per request: bootstrap, status pipe, passed fds

namespace forkserver {

// Sends `data` with `fds` attached.
inline void send_with_fds(int socket, const void* data, std::size_t size, std::span<const int> fds) {
    iovec iov{const_cast<void*>(data), size};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * forkserver_max_fds)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (!fds.empty()) {
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n;
    do {
        n = ::sendmsg(socket, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) throw_errno("sendmsg(fork server)");
}

// Receives one message and the fds attached (owned by the caller, close-on-exec).
// Returns the bytes received; 0 at end of stream.
inline ssize_t receive_with_fds(int socket, void* data, std::size_t size, std::vector<UniqueFd>& fds) {
    iovec iov{data, size};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * forkserver_max_fds)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    do {
        n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            fds.emplace_back(fd);
        }
    }
    return n;
}

// In a child the server just forked: the bootstrap goes to fd 3 and the passed fds to
// 4, 5, ...; nothing else of the server's stays open. Then it runs as a spawned child.
[[noreturn]] inline void become_requested_child(pid_t server, std::vector<UniqueFd>& fds) {
    // fds: the bootstrap, the status pipe (the server's to write, not the child's), then
    // the passed ones. Each kept one first moves above the targets, so no dup2
    // overwrites a source still to be moved.
    const int passed = static_cast<int>(fds.size()) - 2;
    const int lowest_free = first_passed_fd + passed;
    std::vector<int> moved;
    for (std::size_t i = 0; i < fds.size(); ++i)
        if (i != 1) moved.push_back(::fcntl(fds[i].get(), F_DUPFD_CLOEXEC, lowest_free));
    ::dup2(moved[0], bootstrap_fd);
    for (int i = 0; i < passed; ++i) ::dup2(moved[1 + i], first_passed_fd + i);
    ::syscall(SYS_close_range, static_cast<unsigned>(first_passed_fd + passed), ~0U, 0);
    run_bootstrap(server);
}

// The server's loop (a SpawnEntry): its socket is fd 4.
inline int serve(ByteReader&) {
    const int socket = first_passed_fd;
    // Ctrl-C in a terminal signals the whole process group: the asker decides what
    // happens to its children, not the server. A pipe whose reader went away is an
    // error to ignore, not a reason to die.
    ::signal(SIGINT, SIG_IGN);
    ::signal(SIGPIPE, SIG_IGN);
    sigset_t chld, old_mask;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &chld, &old_mask);
    UniqueFd child_exits(::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK));
    if (child_exits.get() < 0) throw_errno("signalfd(SIGCHLD)");
    const pid_t server = ::getpid();
    std::map<pid_t, UniqueFd> status_pipes;

    auto reap = [&] {
        signalfd_siginfo info;
        while (::read(child_exits.get(), &info, sizeof info) > 0) {
        }
        int status;
        pid_t pid;
        while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
            auto it = status_pipes.find(pid);
            if (it == status_pipes.end()) continue;
            ssize_t n;
            do {
                n = ::write(it->second.get(), &status, sizeof status);
            } while (n < 0 && errno == EINTR);
            status_pipes.erase(it);
        }
    };

    for (;;) {
        pollfd waits[2] = {{socket, POLLIN, 0}, {child_exits.get(), POLLIN, 0}};
        if (::poll(waits, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        if (waits[1].revents) reap();
        if (!waits[0].revents) continue;
        std::uint32_t request = 0;
        std::vector<UniqueFd> fds;
        const ssize_t n = receive_with_fds(socket, &request, sizeof request, fds);
        if (n == 0 || (n < 0 && errno != EAGAIN)) return 0;  // the asker is gone
        std::int32_t reply = -EINVAL;
        if (n == sizeof request && fds.size() >= 2 && fds.size() == 2 + request) {
            const pid_t pid = ::fork();
            if (pid == 0) {
                ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
                ::signal(SIGINT, SIG_DFL);
                ::signal(SIGPIPE, SIG_DFL);
                become_requested_child(server, fds);
            }
            reply = pid > 0 ? pid : -errno;
            if (pid > 0) {
                // Opened before this loop can reap it: the asker's own pidfd_open would
                // race the child's exit (ESRCH, or a stranger who got the pid since).
                UniqueFd pidfd(pidfd_open(pid));
                status_pipes.emplace(pid, std::move(fds[1]));
                const int attached[] = {pidfd.get()};
                send_with_fds(socket, &reply, sizeof reply,
                              pidfd.get() >= 0 ? std::span<const int>(attached) : std::span<const int>());
                continue;
            }
        }
        send_with_fds(socket, &reply, sizeof reply, {});
    }
}

}  // namespace forkserver

// This process's connection to its fork server, started on first use. A fork child
// of this process starts its own: requests and replies on one socket shared by two
// processes would cross.
class ForkServerClient {
public:
    static ForkServerClient& instance() {
        // Leaked: used until exit, and a fork child may inherit one whose mutex another
        // thread held at the fork, so it is never touched again there.
        static std::atomic<ForkServerClient*> current{nullptr};
        // acquire: pairs with the CAS below, so the client's fields are seen built.
        ForkServerClient* client = current.load(std::memory_order_acquire);
        if (client && client->owner_ == ::getpid()) return *client;
        auto* fresh = new ForkServerClient;
        // acq_rel: publishes `fresh`, or sees the one another thread published first.
        if (current.compare_exchange_strong(client, fresh, std::memory_order_acq_rel)) return *fresh;
        delete fresh;
        return *client;
    }

    ServedChild start_child(const ForkOptions& options, code_address entry, std::span<const std::byte> payload,
                            std::span<const int> fds = {}) {
        if (fds.size() + 2 > forkserver_max_fds)
            throw ValueError("multiprocessing: a process started by the forkserver method can be given at most " +
                             std::to_string(forkserver_max_fds - 2) +
                             " fds of shared handles (one per queue, Pipe end, lock, event or Value; two for a "
                             "Condition, Value or Array with its lock) and " + std::to_string(fds.size()) +
                             " were given; pass fewer, or use spawn");
        UniqueFd boot = write_bootstrap(options, entry, payload);
        int status_pipe[2];
        if (::pipe2(status_pipe, O_CLOEXEC) != 0) throw_errno("pipe2(exit status)");
        UniqueFd status_read(status_pipe[0]), status_write(status_pipe[1]);
        std::vector<int> sent{boot.get(), status_write.get()};
        sent.insert(sent.end(), fds.begin(), fds.end());
        const auto request = static_cast<std::uint32_t>(fds.size());

        std::lock_guard lock(mutex_);
        if (socket_.get() < 0) start_server();
        std::int32_t reply = 0;
        std::vector<UniqueFd> pidfd;  // attached to a successful reply
        forkserver::send_with_fds(socket_.get(), &request, sizeof request, sent);
        if (forkserver::receive_with_fds(socket_.get(), &reply, sizeof reply, pidfd) != sizeof reply) {
            socket_ = UniqueFd();  // the server died: the next request starts a new one
            throw ProcessError("multiprocessing: the fork server exited unexpectedly");
        }
        if (reply < 0) {
            errno = -reply;
            throw_errno("fork (in the fork server)");
        }
        return ServedChild{reply, pidfd.empty() ? UniqueFd() : std::move(pidfd.front()), std::move(status_read)};
    }

private:
    // mutex_ held.
    void start_server() {
        int pair[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) throw_errno("socketpair(fork server)");
        UniqueFd ours(pair[0]), theirs(pair[1]);
        ForkOptions options;
        options.name = "ForkServer";
        options.daemon = true;
        const int passed[] = {theirs.get()};
        spawn_child(options, address_of_code(&forkserver::serve), {}, passed);
        socket_ = std::move(ours);
    }

    const pid_t owner_ = ::getpid();
    std::mutex mutex_;
    UniqueFd socket_;
};

// A child started by spawn or by the fork server: its pid, and when it is the fork
// server's child rather than this process's, the fd its exit status arrives on and the
// pidfd the server opened for it (else -1 both: a child of ours opens its own pidfd,
// safely, as it stays a zombie until we reap it).
struct FreshChild {
    pid_t pid;
    int status_fd;
    int pidfd;
};

// Starts a fresh process (spawn) or a fork of the clean server (forkserver) that runs
// `entry` with `payload`, given `fds` (from first_passed_fd on).
inline FreshChild start_fresh_child(StartMethod method, const ForkOptions& options, code_address entry,
                                    std::span<const std::byte> payload, std::span<const int> fds) {
    if (method == StartMethod::spawn) return {spawn_child(options, entry, payload, fds), -1, -1};
    auto served = ForkServerClient::instance().start_child(options, entry, payload, fds);
    return {served.pid, served.status.release(), served.pidfd.release()};
}

}  // namespace multiprocessing::detail
