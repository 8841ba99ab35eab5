// Anonymous shared segments: memfd-backed, so there is no name to leak when a process
// is killed; the memory goes away with the last mapping and the last fd.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

namespace multiprocessing::detail {

[[noreturn]] inline void throw_errno(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// Every shared object keeps the fd of its segment (a spawned child is given it), so a
// program with thousands of locks or values needs thousands of fds. The first time the
// soft limit is hit, it is raised to the hard one (as Go and the JVM do at start); true
// if it was raised and the call that failed is worth retrying.
inline bool raise_fd_limit_once() noexcept {
    static std::atomic<bool> tried{false};
    // relaxed: at worst two threads both raise the limit to the same value.
    if (tried.exchange(true, std::memory_order_relaxed)) return false;
    struct rlimit limit;
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return false;
    limit.rlim_cur = limit.rlim_max;
    return ::setrlimit(RLIMIT_NOFILE, &limit) == 0;
}

// Owns an fd for as long as one piece of code needs it.
class UniqueFd {
public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept {
        std::swap(fd_, o.fd_);
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() {
        if (fd_ >= 0) ::close(fd_);
    }
    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }

private:
    int fd_ = -1;
};

// Owns one mapping of an anonymous shared segment (and, while kept, its fd). Pages
// are only committed when first touched, so a large segment costs address space, not
// memory. Children made by fork() inherit the mapping; spawn-style children get the fd.
class SharedSegment {
public:
    SharedSegment() = default;

    static SharedSegment create(std::size_t size, const char* debug_name) {
        SharedSegment s;
        s.fd_ = ::memfd_create(debug_name, MFD_CLOEXEC);
        if (s.fd_ < 0 && errno == EMFILE && raise_fd_limit_once()) s.fd_ = ::memfd_create(debug_name, MFD_CLOEXEC);
        if (s.fd_ < 0) throw_errno("memfd_create (each shared object holds one fd; is the RLIMIT_NOFILE too low?)");
        if (::ftruncate(s.fd_, static_cast<off_t>(size)) != 0) throw_errno("ftruncate(shared segment)");
        s.map(size);
        return s;
    }

    // Maps the first `map_bytes` of the segment behind `fd` and owns the fd (for a
    // segment whose owner maps the rest piecemeal).
    static SharedSegment adopt_prefix(int fd, std::size_t map_bytes) {
        SharedSegment s;
        s.fd_ = fd;
        s.map(map_bytes);
        return s;
    }

    // Maps the whole segment behind `fd` (one a spawned child was given) and owns the fd.
    static SharedSegment adopt(int fd) {
        SharedSegment s;
        s.fd_ = fd;
        struct stat st;
        if (::fstat(fd, &st) != 0) {
            ::close(fd);
            s.fd_ = -1;
            throw_errno("fstat(shared segment)");
        }
        s.map(static_cast<std::size_t>(st.st_size));
        return s;
    }

    SharedSegment(SharedSegment&& o) noexcept { swap(o); }
    SharedSegment& operator=(SharedSegment&& o) noexcept {
        SharedSegment tmp(std::move(o));
        swap(tmp);
        return *this;
    }
    SharedSegment(const SharedSegment&) = delete;
    SharedSegment& operator=(const SharedSegment&) = delete;
    ~SharedSegment() { reset(); }

    std::byte* data() const noexcept { return base_; }
    std::size_t size() const noexcept { return size_; }
    int fd() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return base_ != nullptr; }

    // Drops the fd but keeps the mapping: once every process that needs the segment
    // has it mapped (fork children do at birth), nothing else can open it.
    void close_fd() noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

    void reset() noexcept {
        if (base_) ::munmap(base_, size_);
        base_ = nullptr;
        size_ = 0;
        close_fd();
    }

    // Gives the pages of [offset, offset+len) back to the kernel; they read as zero.
    void discard(std::size_t offset, std::size_t len) noexcept {
        if (base_) ::madvise(base_ + offset, len, MADV_REMOVE);
    }

private:
    void map(std::size_t size) {
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            ::close(fd_);
            fd_ = -1;
            errno = e;
            throw_errno("mmap(shared segment)");
        }
        base_ = static_cast<std::byte*>(p);
        size_ = size;
    }
    void swap(SharedSegment& o) noexcept {
        std::swap(base_, o.base_);
        std::swap(size_, o.size_);
        std::swap(fd_, o.fd_);
    }

    std::byte* base_ = nullptr;
    std::size_t size_ = 0;
    int fd_ = -1;
};

}  // namespace multiprocessing::detail
