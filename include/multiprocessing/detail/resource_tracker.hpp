// The resource tracker, as in Python's multiprocessing.resource_tracker: one small
// process per process tree that unlinks the named shared memory segments the tree
// created and never unlinked, once every process of the tree is gone, also when they
// were killed with SIGKILL.
//
// How it knows when everyone is gone: every process of the tree holds the write end of
// one socket (created CLOEXEC and inherited through fork, so children and pool workers
// share it and keep the tracker alive); the tracker holds the only read end. A creator
// sends "REGISTER name", unlink() sends "UNREGISTER name". When the last writer is gone,
// however it died, the tracker reads EOF, unlinks every name still registered, prints
// one warning line per name, and exits.
//
// Why a socket where Python uses a pipe: writing to a pipe whose reader died raises
// SIGPIPE, whose default action kills the writer. Python ignores SIGPIPE process-wide; a
// library cannot, but send(MSG_NOSIGNAL) reports EPIPE instead. SOCK_SEQPACKET keeps each
// message whole when many processes write at once, as PIPE_BUF does for a pipe.
//
// Who uses which tracker:
//   * A forked child that inherited the socket and creates a segment registers it with the
//     same tracker. The segment then belongs to the tree: it outlives that child (the
//     parent may still use it, e.g. a worker filled it and returned its name) and is
//     unlinked when the whole tree is gone, unless someone unlink()s it first.
//   * When the process that started the tracker exits while children still run, the
//     tracker is reparented (to init or the nearest subreaper) and keeps serving the
//     children, which still hold the write end; it exits after the last of them and its
//     new parent reaps it.
//   * A process that lost its copy of the socket (it closed every fd) notices, because the
//     fd no longer names the same socket, and starts a tracker of its own.
//   * A program started by exec (a spawn-style child) does not inherit the CLOEXEC socket:
//     it starts its own tracker at its first tracked segment.
//
// Zombies: the tracker is a direct child of the process that started it, deliberately not
// in the registry of children (active_children() must not list it, and the exit hook must
// not wait for it, since it only exits after its starter). It cannot exit while its
// starter lives, because the starter keeps a write end until it exits, so it normally
// ends reparented and is reaped by its new parent. Only a tracker killed from outside
// ends earlier: the starter's next message fails with EPIPE, and it reaps the dead tracker
// before starting a new one (with a warning, as Python gives: what the dead one knew is
// lost).
//
// A residual race, accepted: another thread that forks during the few instructions
// between socketpair() and the parent closing its copy of the read end gives its child
// a read end too. That only matters if the tracker is then killed: until that child
// exits, messages fill the socket instead of failing with EPIPE.
#pragma once

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../errors.hpp"
#include "shared_object.hpp"

namespace multiprocessing::detail {

namespace tracker_process {

// A shm name is at most NAME_MAX (255) bytes after its leading '/'.
inline constexpr std::size_t max_name = 255;
// Far more segments than a program keeps alive at once; only touched pages cost memory.
inline constexpr std::size_t table_capacity = 16384;
// The one fd number the tracker keeps for its socket (0..2 are the standard streams).
inline constexpr int socket_fd = 3;

inline constexpr std::string_view register_verb = "REGISTER ";
inline constexpr std::string_view unregister_verb = "UNREGISTER ";

// One registered name. `count` is how many live registrations the name has: a name may
// be registered again before the UNREGISTER of its previous incarnation arrives (one
// process unlinks it, another creates it anew), and counting keeps that order harmless.
struct Entry {
    std::uint32_t count;
    std::uint32_t length;
    char name[max_name + 1];
};

// Everything below runs in the tracker, a fork of a possibly multi-threaded process:
// only async-signal-safe calls (read, write, close, dup2, sigaction, sigprocmask,
// shm_unlink, _exit), no malloc, no stdio, no locks. The name table was mapped by the
// parent before fork.

inline void write_all(int fd, const char* p, std::size_t n) noexcept {
    while (n > 0) {
        ssize_t k = ::write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return;
        p += k;
        n -= static_cast<std::size_t>(k);
    }
}

// Appends to a fixed buffer, truncating instead of overflowing (no snprintf: not safe here).
struct Line {
    char text[640];
    std::size_t size = 0;
    Line& operator<<(std::string_view s) noexcept {
        std::size_t n = s.size() < sizeof text - size ? s.size() : sizeof text - size;
        std::memcpy(text + size, s.data(), n);
        size += n;
        return *this;
    }
    Line& operator<<(int v) noexcept {
        char digits[16];
        std::size_t n = 0;
        unsigned u = v < 0 ? 0u - static_cast<unsigned>(v) : static_cast<unsigned>(v);
        do {
            digits[n++] = static_cast<char>('0' + u % 10);
            u /= 10;
        } while (u && n < sizeof digits);
        if (v < 0) *this << "-";
        while (n) *this << std::string_view(&digits[--n], 1);
        return *this;
    }
};

inline Entry* find(Entry* table, std::size_t used, std::string_view name) noexcept {
    for (std::size_t i = 0; i < used; ++i)
        if (table[i].count && table[i].length == name.size() && std::memcmp(table[i].name, name.data(), name.size()) == 0)
            return &table[i];
    return nullptr;
}

inline void remember(Entry* table, std::size_t& used, std::string_view name, bool have_stderr) noexcept {
    if (name.empty() || name.size() > max_name) return;
    if (Entry* e = find(table, used, name)) {
        ++e->count;
        return;
    }
    Entry* slot = nullptr;
    for (std::size_t i = 0; i < used && !slot; ++i)
        if (table[i].count == 0) slot = &table[i];
    if (!slot && used < table_capacity) slot = &table[used++];
    if (!slot) {
        if (have_stderr) {
            Line line;
            line << "multiprocessing.resource_tracker: too many shared memory segments to track; '" << name
                 << "' will not be cleaned up if the program dies without unlinking it\n";
            write_all(2, line.text, line.size);
        }
        return;
    }
    slot->count = 1;
    slot->length = static_cast<std::uint32_t>(name.size());
    std::memcpy(slot->name, name.data(), name.size());
    slot->name[name.size()] = '\0';
}

inline void forget(Entry* table, std::size_t used, std::string_view name) noexcept {
    // An unknown name is not an error: it may have been created untracked, or by a
    // process of another tree, and unlinked here.
    if (Entry* e = find(table, used, name)) --e->count;
}

// Every other signal keeps its default action. These are the ones a terminal or a
// `kill`/`killall` sends to a whole group or by name: the tracker must outlive the
// processes they kill, to clean up after them, and it exits by itself once they are
// gone. And SIGPIPE, so that a closed stderr fails a warning instead of killing the
// tracker before it has unlinked everything.
inline constexpr int ignored_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE};

// Leaves the tracker with fd 2 (stderr, when it is one) and its socket as fd 3, and
// nothing else: an inherited copy of a user's pipe or socket end would keep that
// user's peer from ever seeing EOF.
inline bool keep_only_socket_and_stderr(int read_fd, int write_fd, int fallback_max_fd) noexcept {
    ::close(write_fd);
    if (read_fd != socket_fd) {
        // Exiting closes the socket: the next message fails with EPIPE and the sender
        // starts a new tracker.
        if (::dup2(read_fd, socket_fd) < 0) ::_exit(1);
        ::close(read_fd);
    }
    const bool have_stderr = read_fd != 2 && write_fd != 2 && ::fcntl(2, F_GETFD) != -1;
    ::close(0);
    ::close(1);
#ifdef SYS_close_range
    if (::syscall(SYS_close_range, socket_fd + 1, ~0u, 0) == 0) return have_stderr;
#endif
    // Kernels before 5.9: close one by one, up to the limit the parent read before fork.
    for (int fd = socket_fd + 1; fd < fallback_max_fd; ++fd) ::close(fd);
    return have_stderr;
}

[[noreturn]] inline void run(int read_fd, int write_fd, int fallback_max_fd, Entry* table) noexcept {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigemptyset(&dfl.sa_mask);
    // The parent's handlers are the parent's business: none of them may run here.
    for (int sig = 1; sig < NSIG; ++sig)
        if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
    struct sigaction ign = dfl;
    ign.sa_handler = SIG_IGN;
    for (int sig : ignored_signals) ::sigaction(sig, &ign, nullptr);
    // All signals were blocked across fork, so none could arrive before the lines above.
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);

    const bool have_stderr = keep_only_socket_and_stderr(read_fd, write_fd, fallback_max_fd);

    std::size_t used = 0;
    char message[register_verb.size() + unregister_verb.size() + max_name + 1];
    for (;;) {
        ssize_t n = ::read(socket_fd, message, sizeof message);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;  // EOF: every process that could register or unregister is gone
        std::string_view m(message, static_cast<std::size_t>(n));
        if (m.starts_with(register_verb))
            remember(table, used, m.substr(register_verb.size()), have_stderr);
        else if (m.starts_with(unregister_verb))
            forget(table, used, m.substr(unregister_verb.size()));
    }

    for (std::size_t i = 0; i < used; ++i) {
        if (table[i].count == 0) continue;
        const std::string_view name(table[i].name, table[i].length);
        char path[max_name + 2];
        path[0] = '/';
        std::memcpy(path + 1, name.data(), name.size());
        path[name.size() + 1] = '\0';
        const bool unlinked = ::shm_unlink(path) == 0;
        const int error = errno;
        // ENOENT: someone outside this tree (or through an untracked handle of another
        // tree) unlinked it; nothing leaked.
        if (!have_stderr || (!unlinked && error == ENOENT)) continue;
        Line line;
        if (unlinked)
            line << "multiprocessing.resource_tracker: unlinked leaked shared_memory segment '" << name
                 << "': no process unlink()ed it before they all exited (create it with track=false "
                    "to keep it)\n";
        else
            line << "multiprocessing.resource_tracker: could not unlink leaked shared_memory segment '"
                 << name << "' (errno " << error << ")\n";
        write_all(2, line.text, line.size);
    }
    ::_exit(0);
}

}  // namespace tracker_process

// This process's connection to its tree's tracker.
class ResourceTracker {
public:
    constexpr ResourceTracker() = default;
    ResourceTracker(const ResourceTracker&) = delete;
    ResourceTracker& operator=(const ResourceTracker&) = delete;

    // Starts this tree's tracker unless this process already has one.
    void ensure_running() {
        install_fork_handler();
        std::lock_guard lock(mutex_);
        if (!connected_locked()) start_locked();
    }

    // Named register_ because `register` is a C++ keyword (as API.md's register_).
    void register_(std::string_view name) { send(tracker_process::register_verb, name, /*start=*/true); }

    // Never starts a tracker: one that was not running has nothing to forget.
    void unregister(std::string_view name) { send(tracker_process::unregister_verb, name, /*start=*/false); }

    // The tracker this process talks to, if any (for tests and diagnostics).
    std::optional<pid_t> pid() {
        install_fork_handler();
        std::lock_guard lock(mutex_);
        if (!connected_locked()) return std::nullopt;
        return connection_.pid;
    }

private:
    // A fork in another thread while one holds the mutex would leave the child's copy
    // locked forever; the child rebuilds it. Whatever connection state the child then
    // sees is safe: a half-written one fails the identity check and a new tracker starts.
    // (An atomic flag, not a function-local static: a fork during a static's guarded
    // initialization would leave the child waiting on that guard.)
    static void install_fork_handler() noexcept;

    struct Connection {
        int fd = -1;
        dev_t dev = 0;
        ino_t ino = 0;
        pid_t pid = 0;
        pid_t starter = 0;  // the tracker's parent: the only process that may reap it
    };

    // Still the socket we were given: a process may have closed every fd and reused the
    // number for something else, which must never receive our messages.
    bool connected_locked() const noexcept {
        if (connection_.fd < 0) return false;
        struct stat st {};
        return ::fstat(connection_.fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == connection_.dev &&
               st.st_ino == connection_.ino;
    }

    void send(std::string_view verb, std::string_view name, bool start) {
        if (name.size() > tracker_process::max_name)
            throw ValueError("resource_tracker: the shared memory name '" + std::string(name) +
                             "' is longer than 255 bytes");
        std::string message;
        message.reserve(verb.size() + name.size());
        message.append(verb).append(name);

        install_fork_handler();
        std::lock_guard lock(mutex_);
        if (!connected_locked()) {
            if (!start) return;
            if (connection_.fd >= 0) {
                warn_relaunch("this process lost its connection to it");
                forget_locked(/*dead=*/false, /*ours=*/false);
            }
            start_locked();
        }
        for (bool relaunched = false;;) {
            ssize_t n = ::send(connection_.fd, message.data(), message.size(), MSG_NOSIGNAL);
            if (n == static_cast<ssize_t>(message.size())) return;
            if (n < 0 && errno == EINTR) continue;
            const int error = n < 0 ? errno : EIO;
            const bool tracker_gone = error == EPIPE || error == ECONNRESET || error == ECONNREFUSED;
            if (!tracker_gone || relaunched)
                throw std::system_error(error, std::generic_category(),
                                        "resource_tracker: cannot send '" + message + "' to the tracker");
            forget_locked(/*dead=*/true, /*ours=*/true);
            if (!start) return;  // the new tracker would not know the name anyway
            warn_relaunch("it died unexpectedly");
            start_locked();
            relaunched = true;
        }
    }

    static void warn_relaunch(const char* why) noexcept {
        std::fprintf(stderr,
                     "multiprocessing.resource_tracker: %s; relaunching it. Shared memory segments "
                     "registered with the old tracker may leak.\n",
                     why);
        std::fflush(stderr);
    }

    // Drops the connection. A dead tracker we started is reaped here (this is the one
    // case where it ends before us); its socket being closed means it is already
    // exiting, so the wait is short.
    void forget_locked(bool dead, bool ours) noexcept {
        if (ours && connection_.fd >= 0) ::close(connection_.fd);
        if (connection_.starter == current_pid() && connection_.pid > 0) {
            int status = 0;
            pid_t r;
            do {
                r = ::waitpid(connection_.pid, &status, dead ? 0 : WNOHANG);
            } while (r < 0 && errno == EINTR);
        }
        connection_ = Connection{};
    }

    void start_locked() {
        using tracker_process::Entry;
        int fds[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0)
            throw std::system_error(errno, std::generic_category(), "resource_tracker: socketpair");
        const int read_fd = fds[0], write_fd = fds[1];

        // The tracker may not allocate (see tracker_process), so its table is mapped here;
        // MAP_NORESERVE: only the pages it touches will ever cost memory.
        const std::size_t table_bytes = tracker_process::table_capacity * sizeof(Entry);
        void* table = ::mmap(nullptr, table_bytes, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (table == MAP_FAILED) {
            const int error = errno;
            ::close(read_fd);
            ::close(write_fd);
            throw std::system_error(error, std::generic_category(), "resource_tracker: mmap");
        }
        struct rlimit limit {};
        const int fallback_max_fd =
            ::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < (1u << 20)
                ? static_cast<int>(limit.rlim_cur)
                : (1 << 20);
        struct stat st {};
        if (::fstat(write_fd, &st) != 0) {
            const int error = errno;
            ::munmap(table, table_bytes);
            ::close(read_fd);
            ::close(write_fd);
            throw std::system_error(error, std::generic_category(), "resource_tracker: fstat");
        }

        // No handler of ours (or of the user's) may run in the child before it resets them.
        sigset_t all, old;
        ::sigfillset(&all);
        ::pthread_sigmask(SIG_SETMASK, &all, &old);
        const pid_t pid = ::fork();
        if (pid == 0) tracker_process::run(read_fd, write_fd, fallback_max_fd, static_cast<Entry*>(table));
        const int fork_error = errno;
        ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
        ::munmap(table, table_bytes);
        ::close(read_fd);
        if (pid < 0) {
            ::close(write_fd);
            throw std::system_error(fork_error, std::generic_category(), "resource_tracker: fork");
        }
        connection_ = Connection{write_fd, st.st_dev, st.st_ino, pid, current_pid()};
    }

    std::mutex mutex_;
    Connection connection_;
};

// Constant-initialized: usable from any static constructor or destructor, and nothing
// to destroy at exit (a segment may be unlinked from an atexit handler).
inline constinit ResourceTracker resource_tracker_instance;
inline constinit std::atomic<bool> resource_tracker_fork_handler_installed{false};

inline void ResourceTracker::install_fork_handler() noexcept {
    // relaxed: pthread_atfork has its own lock; the flag only keeps us from registering twice.
    if (resource_tracker_fork_handler_installed.exchange(true, std::memory_order_relaxed)) return;
    ::pthread_atfork(nullptr, nullptr, [] { new (&resource_tracker_instance.mutex_) std::mutex; });
}

inline ResourceTracker& resource_tracker() noexcept { return resource_tracker_instance; }

}  // namespace multiprocessing::detail
