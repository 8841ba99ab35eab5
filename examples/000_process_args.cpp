// Twin of seed 000_d95e13487ef67c7d.txt, lines 16-28 ("一、单进程编程"):
//     def func(msg):
//         for i in xrange(3):
//             print msg
//             time.sleep(1)
//     p = multiprocessing.Process(target=func, args=("hello", ))
//     p.start(); p.join()
//     print "Sub-process done."
// (time.sleep(1) is scaled down to 50 ms.)
#include <multiprocessing.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

void func(std::string msg) {                        // def func(msg):
    for (int i = 0; i < 3; ++i) {                   //     for i in xrange(3):
        std::printf("%s\n", msg.c_str());           //         print msg
        std::fflush(stdout);
        std::this_thread::sleep_for(50ms);          //         time.sleep(1)
    }
}

int main() {
    mp::freeze_support();                           // if __name__ == "__main__":
    mp::Process p(func, "hello");                   //     p = multiprocessing.Process(target=func, args=("hello", ))
    CHECK(!p.pid().has_value());                    // (no pid before start)
    auto t0 = std::chrono::steady_clock::now();
    p.start();                                      //     p.start()
    CHECK(p.pid().has_value() && *p.pid() != ::getpid());
    p.join();                                       //     p.join()
    auto elapsed = std::chrono::steady_clock::now() - t0;
    std::printf("Sub-process done.\n");             //     print "Sub-process done."

    // join() waited for the child's three 50 ms sleeps, and the child exited cleanly.
    CHECK(elapsed >= 150ms);
    CHECK(!p.is_alive());
    CHECK(p.exitcode() == 0);
    return 0;
}
