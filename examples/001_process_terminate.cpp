// Twin of seed 001_22a7b71a27b014c2.txt, lines 33-35 (prose after the Process demo):
//     "手工终止一个进程能够调用terminate方法,在UNIX系统中。该方法会发送SIGTERM信号量"
//     (a process is stopped by hand with terminate(); on UNIX it sends SIGTERM)
// The seed has no code for it; the usual Python is:
//     p = Process(target=time.sleep, args=(30,)); p.start()
//     p.terminate(); p.join()
//     print p.exitcode          # -15 (-SIGTERM)
#include <multiprocessing.hpp>

#include <csignal>
#include <chrono>
#include <cstdio>
#include <thread>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

void sleep_seconds(double seconds) {                // time.sleep
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

int main() {
    mp::freeze_support();
    mp::Process p(sleep_seconds, 30.0);             // p = Process(target=time.sleep, args=(30,))
    auto t0 = std::chrono::steady_clock::now();
    p.start();                                      // p.start()
    CHECK(p.is_alive());                            // p.is_alive() -> True (30 s to go)
    CHECK(!p.exitcode().has_value());               // p.exitcode -> None while running
    p.terminate();                                  // p.terminate()
    p.join();                                       // p.join()
    auto elapsed = std::chrono::steady_clock::now() - t0;
    std::printf("exitcode: %d after %.3f s\n", p.exitcode().value_or(999),
                std::chrono::duration<double>(elapsed).count());
    CHECK(!p.is_alive());
    CHECK(p.exitcode() == -SIGTERM);                // print p.exitcode  # -15
    CHECK(elapsed < 10s);                           // it did not sleep its 30 s
    return 0;
}
