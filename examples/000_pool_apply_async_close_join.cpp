// Twin of seed 000_d95e13487ef67c7d.txt, lines 155-170 ("2、使用进程池"):
//     def func(msg):
//         for i in xrange(3):
//             print msg
//             time.sleep(1)
//     pool = multiprocessing.Pool(processes=4)
//     for i in xrange(10):
//         msg = "hello %d" %(i)
//         pool.apply_async(func, (msg, ))
//     pool.close()
//     pool.join()
//     print "Sub-process(es) done."
// (time.sleep(1) is scaled down to 30 ms.)
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

void func(std::string msg) {                        // def func(msg):
    for (int i = 0; i < 3; ++i) {                   //     for i in xrange(3):
        std::printf("%s\n", msg.c_str());           //         print msg
        std::fflush(stdout);
        std::this_thread::sleep_for(30ms);          //         time.sleep(1)
    }
}

int main() {
    mp::freeze_support();
    auto t0 = std::chrono::steady_clock::now();
    mp::Pool pool(4);                               // pool = multiprocessing.Pool(processes=4)
    std::vector<mp::AsyncResult<void>> results;     // (kept only to check them below)
    for (int i = 0; i < 10; ++i) {                  // for i in xrange(10):
        std::string msg = "hello " + std::to_string(i);    // msg = "hello %d" %(i)
        results.push_back(pool.apply_async(func, msg));    // pool.apply_async(func, (msg, ))
    }
    pool.close();                                   // pool.close()
    pool.join();                                    // pool.join()
    auto elapsed = std::chrono::steady_clock::now() - t0;
    std::printf("Sub-process(es) done.\n");         // print "Sub-process(es) done."

    // join() returned only after every task ran to completion...
    for (auto& res : results) {
        CHECK(res.ready());
        CHECK(res.successful());
    }
    // ...and 10 tasks of 3 x 30 ms on at most 4 workers take at least 3 rounds.
    std::printf("elapsed: %.3f s\n", std::chrono::duration<double>(elapsed).count());
    CHECK(elapsed >= 3 * 90ms);
    return 0;
}
