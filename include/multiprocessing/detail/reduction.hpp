// How a shared handle (a Queue, a Pipe end) crosses to a process started by the spawn or
// forkserver start method, which shares no memory with its parent (Python's
// multiprocessing.reduction: DupFd and the per-type reducers).
//
// A fork child inherits the handle's mapping or fd with its memory, so this is only for
// fresh processes. A handle type that can cross declares
//
//     using reduced_type = R;                  // transferable (codec.hpp)
//     R reduce(PassedFds& fds) const;          // what the child needs, fds added to `fds`
//     static Handle rebuild(const R& r);       // in the child, from r and its fds
//
// `fds` duplicates each fd it is given, so the parent's handle may close in the meantime;
// add() answers the number the fd will have in the child (the child finds the fds it was
// given at first_passed_fd and up, after any the start path passes first), which is what
// R records. A rebuilt handle owns that fd.
#pragma once

#include <concepts>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>

#include "../errors.hpp"
#include "codec.hpp"
#include "shm.hpp"

namespace multiprocessing::detail {

// A spawned child finds its bootstrap at fd 3 and the fds it was given from fd 4 on.
inline constexpr int bootstrap_fd = 3;
inline constexpr int first_passed_fd = 4;

class PassedFds {
public:
    // `ahead`: how many fds the start path passes before these (a pool worker's segment).
    PassedFds() = default;
    explicit PassedFds(int ahead) : ahead_(ahead) {}

    // Keeps a duplicate of `fd` to pass; returns the number it will have in the child.
    std::int32_t add(int fd) {
        UniqueFd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
        if (copy.get() < 0) throw_errno("fcntl(F_DUPFD_CLOEXEC) of a handle passed to a new process");
        fds_.push_back(std::move(copy));
        return first_passed_fd + ahead_ + static_cast<std::int32_t>(fds_.size()) - 1;
    }

    // The fds to pass, in order.
    std::vector<int> numbers() const {
        std::vector<int> out;
        out.reserve(fds_.size());
        for (const auto& fd : fds_) out.push_back(fd.get());
        return out;
    }

private:
    int ahead_ = 0;
    std::vector<UniqueFd> fds_;
};

// rebuild() gives the handle, or what the handle is constructed from (a manager proxy's
// state, which every proxy type shares).
template <class H>
concept reducible_handle = requires(const H& handle, PassedFds& fds) {
    typename H::reduced_type;
    requires transferable<typename H::reduced_type>;
    { handle.reduce(fds) } -> std::same_as<typename H::reduced_type>;
    requires std::constructible_from<H, decltype(H::rebuild(std::declval<const typename H::reduced_type&>()))>;
};

// What an argument is in a spawned process's payload: the reduced form of a handle that
// has one, else the value itself.
template <class A>
decltype(auto) portable_form(const A& argument, PassedFds& fds) {
    if constexpr (reducible_handle<A>)
        return argument.reduce(fds);
    else
        return (argument);
}

template <class A>
A rebuild_argument(ByteReader& in) {
    if constexpr (reducible_handle<A>)
        return A(A::rebuild(get<typename A::reduced_type>(in)));
    else
        return get<A>(in);
}

// Every argument can reach a fresh process: transferable, or a handle with a reducer.
template <class A>
inline constexpr bool spawn_portable = transferable<A> || reducible_handle<A>;

}  // namespace multiprocessing::detail
