// The fork start method: the child is a copy of the caller and runs `body` in it.
#pragma once

#include <exception>
#include <string>
#include <utility>
#include <vector>

#include <sys/prctl.h>
#include <unistd.h>

#include "process_state.hpp"
#include "shm.hpp"

namespace multiprocessing::detail {

struct ForkOptions {
    std::string name;
    bool daemon = false;
    std::vector<int> identity;
    // The child is killed when the thread that forked it exits (PR_SET_PDEATHSIG), so a
    // parent killed with SIGKILL leaves no such child behind.
    bool die_with_parent = false;
};

// Forks; in the child, sets it up, runs `body()` (which returns an exit code) and exits.
// Returns the child's pid in the parent.
template <class Body>
pid_t fork_child(ForkOptions options, Body&& body) {
    flush_standard_streams();  // or the child would print the parent's buffered output again
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw_errno("fork");
    if (pid > 0) return pid;

    if (options.die_with_parent) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        // The parent may have died before the line above: then we were re-parented.
        if (::getppid() != parent) ::_exit(1);
    }
    int code = 1;
    try {
        become_child(std::move(options.name), options.daemon, std::move(options.identity));
        code = body();
    } catch (...) {
        // body() reports its own errors; this only keeps an exception from escaping fork.
        code = 1;
    }
    exit_child(code);
}

}  // namespace multiprocessing::detail
