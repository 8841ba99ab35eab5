// Twin of seed 001_22a7b71a27b014c2.txt, lines 10-25 (Process demo; line 10 is garbled in the
// seed, it created child_proc = Process(target=sleeper, args=('bob', 5))):
//     def sleeper(name, seconds):
//         print "Process ID# %s" % (os.getpid())
//         print "Parent Process ID# %s" % (os.getppid())
//         print "%s will sleep for %s seconds" % (name, seconds)
//         time.sleep(seconds)
//     child_proc = Process(target=sleeper, args=('bob', 5))
//     child_proc.start()
//     print "in parent process after child process start"
//     print "parent process abount to join child process"
//     child_proc.join()
//     print "in parent process after child process join"
//     print "the parent's parent process: %s" % (os.getppid())
// (5 seconds are scaled down to 0.2 s.)
#include <multiprocessing.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

void sleeper(std::string name, double seconds) {    // def sleeper(name, seconds):
    std::printf("Process ID# %d\n", static_cast<int>(::getpid()));          // print "Process ID# %s" % (os.getpid())
    std::printf("Parent Process ID# %d\n", static_cast<int>(::getppid()));  // print "Parent Process ID# %s" % (os.getppid())
    std::printf("%s will sleep for %g seconds\n", name.c_str(), seconds);   // print "%s will sleep for %s seconds" % (name, seconds)
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));    // time.sleep(seconds)
}

int main() {
    mp::freeze_support();                           // if __name__ == "__main__":
    mp::Process child_proc(sleeper, "bob", 0.2);    //     child_proc = Process(target=sleeper, args=('bob', 5))
    auto t0 = std::chrono::steady_clock::now();
    child_proc.start();                             //     child_proc.start()
    std::printf("in parent process after child process start\n");
    std::printf("parent process abount to join child process\n");
    std::fflush(stdout);
    child_proc.join();                              //     child_proc.join()
    auto elapsed = std::chrono::steady_clock::now() - t0;
    std::printf("in parent process after child process join\n");
    std::printf("the parent's parent process: %d\n", static_cast<int>(::getppid()));

    // join() blocked until the child had slept its 0.2 s and exited cleanly
    std::printf("join returned after %.3f s\n", std::chrono::duration<double>(elapsed).count());
    CHECK(elapsed >= 200ms);
    CHECK(!child_proc.is_alive());
    CHECK(child_proc.exitcode() == 0);
    CHECK(child_proc.pid().has_value() && *child_proc.pid() != ::getpid());
    return 0;
}
