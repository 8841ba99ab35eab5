// A fresh process tree for test_shared_memory's leak tests: it creates a segment (4096
// bytes, starting with "orphan"), prints "<name> <tracker pid or 0> <child pid or 0>" on
// stdout and SIGKILLs itself, so that nothing of it can unlink the segment but its
// resource tracker (which is not the test program's: a tracker serves one tree, and exec
// does not inherit the test's CLOEXEC socket). The pids let the test, a subreaper while
// it runs this, reap the orphans and check how the tracker ended.
//
//   shm_orphan solo       only this process used the tracker
//   shm_orphan tree       first starts a child Process, which inherits the tracker's
//                         socket and lives until its stdin reaches EOF, then SIGKILLs itself
//   shm_orphan untracked  creates the segment with track=false (no tracker at all)
#include <multiprocessing/context.hpp>
#include <multiprocessing/process.hpp>
#include <multiprocessing/shared_memory.hpp>

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace mp = multiprocessing;

namespace {

void live_until_stdin_closes() {
    char c;
    while (::read(0, &c, 1) > 0) {
    }
    ::kill(::getpid(), SIGKILL);
}

}  // namespace

int main(int argc, char** argv) {
    mp::freeze_support();
    const bool tree = argc > 1 && std::strcmp(argv[1], "tree") == 0;
    const bool track = !(argc > 1 && std::strcmp(argv[1], "untracked") == 0);
    mp::shared_memory::SharedMemory shm(std::nullopt, /*create=*/true, 4096, track);
    std::memcpy(shm.buf().data(), "orphan", 6);
    pid_t child_pid = 0;
    if (tree) {
        mp::Process child(live_until_stdin_closes);
        child.start();
        child_pid = *child.pid();
    }
    std::printf("%s %d %d\n", shm.name().c_str(), static_cast<int>(mp::detail::resource_tracker().pid().value_or(0)),
                static_cast<int>(child_pid));
    std::fflush(stdout);
    ::kill(::getpid(), SIGKILL);
    return 1;
}
