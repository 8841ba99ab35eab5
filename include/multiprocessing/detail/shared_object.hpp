// What every shared object (a lock, a queue, a shared value) is made of: a block of
// anonymous shared memory that all handle copies in this process point to, and that
// forked children inherit mapped at the same address; plus the two facts about
// processes that robust objects need: who am I (cheaply), and is that owner still alive.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "reduction.hpp"
#include "shm.hpp"

namespace multiprocessing::detail {

// ---- who am I -----------------------------------------------------------------------------

// getpid() and gettid() are system calls in today's glibc; a lock's fast path cannot
// afford one (about 50 ns each). Both are cached and the cache is dropped in a fork
// child by an atfork handler (it runs for every fork through glibc, ours or the user's).
inline std::atomic<pid_t>& pid_cache() noexcept {
    static std::atomic<pid_t> pid{0};
    return pid;
}
inline pid_t& tid_cache() noexcept {
    thread_local pid_t tid = 0;
    return tid;
}
// The same for the process's and the thread's identity as a holder (recovery.hpp: the
// id and its start time in one word), which a fork child must not inherit either.
inline std::atomic<std::uint64_t>& process_identity_cache() noexcept {
    static std::atomic<std::uint64_t> id{0};
    return id;
}
inline std::uint64_t& thread_identity_cache() noexcept {
    thread_local std::uint64_t id = 0;
    return id;
}
inline void install_identity_fork_handler() noexcept {
    static const bool installed = [] {
        ::pthread_atfork(nullptr, nullptr, [] {
            // relaxed: the child has one thread, this one.
            pid_cache().store(0, std::memory_order_relaxed);
            tid_cache() = 0;
            process_identity_cache().store(0, std::memory_order_relaxed);
            thread_identity_cache() = 0;
        });
        return true;
    }();
    (void)installed;
}

inline pid_t current_pid() noexcept {
    // relaxed: every thread computes the same value; a race only repeats the syscall.
    pid_t pid = pid_cache().load(std::memory_order_relaxed);
    if (pid == 0) {
        install_identity_fork_handler();
        pid = ::getpid();
        pid_cache().store(pid, std::memory_order_relaxed);
    }
    return pid;
}

inline pid_t current_tid() noexcept {
    pid_t& tid = tid_cache();
    if (tid == 0) {
        install_identity_fork_handler();
        tid = static_cast<pid_t>(::syscall(SYS_gettid));
    }
    return tid;
}

// ---- is the owner still alive -------------------------------------------------------------

// True while the process or thread `id` exists and has not exited. A process that died
// but is not yet reaped by its parent (a zombie) counts as dead: its parent may be the
// very process waiting for the lock the zombie held. Only ever asked on a slow path.
inline bool task_alive(pid_t id) noexcept {
    if (id <= 0) return false;
    if (::kill(id, 0) != 0 && errno == ESRCH) return false;
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(id));
    FILE* f = std::fopen(path, "re");
    if (!f) return errno != ENOENT;
    // The state follows the command name in parentheses, which may itself hold ") ".
    char buf[512];
    std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    const char* close_paren = nullptr;
    for (const char* p = buf; *p; ++p)
        if (*p == ')') close_paren = p;
    if (!close_paren || close_paren[1] == '\0') return true;
    const char state = close_paren[2];
    return state != 'Z' && state != 'X' && state != 'x';
}

// ---- the shared block ---------------------------------------------------------------------

// What a shared block is in a spawned child's payload: the number its fd will have there.
struct ReducedBlock {
    std::int32_t fd;
};

// One object of type T (plus `extra` trailing bytes) in its own anonymous segment.
// Copies share it. The memory outlives every handle in every process that maps it and
// is freed by the kernel with the last mapping and fd, so a killed process leaks
// nothing; for the same reason T's destructor never runs, which is why T must not need
// one. The segment's fd is kept while a handle here maps it: it is what a process
// started by spawn or forkserver is given to map the same object (reduce/rebuild).
template <class T>
class SharedBlock {
    static_assert(std::is_trivially_destructible_v<T>,
                  "a shared object outlives every process that maps it: it cannot have a destructor");

public:
    SharedBlock() = default;

    template <class... Args>
    static SharedBlock create(std::size_t extra, const char* debug_name, Args&&... args) {
        auto segment = std::make_shared<SharedSegment>(SharedSegment::create(sizeof(T) + extra, debug_name));
        SharedBlock b;
        b.object_ = ::new (segment->data()) T(std::forward<Args>(args)...);
        b.segment_ = std::move(segment);
        return b;
    }

    // For a process started by spawn or forkserver (detail/reduction.hpp).
    ReducedBlock reduce(PassedFds& fds) const { return {fds.add(segment_->fd())}; }
    // In that process: maps the block behind the fd it was given; the object is already
    // constructed, by its creator.
    static SharedBlock rebuild(const ReducedBlock& r) {
        auto segment = std::make_shared<SharedSegment>(SharedSegment::adopt(r.fd));
        if (segment->size() < sizeof(T))
            throw ValueError("a shared object passed to this process has the wrong size (" +
                             std::to_string(segment->size()) + " bytes, not at least " + std::to_string(sizeof(T)) +
                             "): parent and child must be the same program");
        SharedBlock b;
        b.object_ = std::launder(reinterpret_cast<T*>(segment->data()));
        b.segment_ = std::move(segment);
        return b;
    }

    T* get() const noexcept { return object_; }
    T* operator->() const noexcept { return object_; }
    T& operator*() const noexcept { return *object_; }
    explicit operator bool() const noexcept { return object_ != nullptr; }
    // The bytes after T.
    std::byte* extra() const noexcept { return segment_->data() + sizeof(T); }
    std::size_t extra_size() const noexcept { return segment_->size() - sizeof(T); }
    // Expires when no handle in this process maps the block any more.
    std::weak_ptr<void> lifetime() const noexcept { return segment_; }

    friend bool operator==(const SharedBlock& a, const SharedBlock& b) noexcept { return a.object_ == b.object_; }

private:
    std::shared_ptr<SharedSegment> segment_;
    T* object_ = nullptr;
};

}  // namespace multiprocessing::detail
