// Twin of seed 000_d95e13487ef67c7d.txt, lines 177-196 ("3、使用Pool,并需要关注结果"):
//     def func(msg):
//         for i in xrange(3):
//             print msg
//             time.sleep(1)
//         return "done " + msg
//     pool = multiprocessing.Pool(processes=4)
//     result = []
//     for i in xrange(10):
//         msg = "hello %d" %(i)
//         result.append(pool.apply_async(func, (msg, )))
//     pool.close(); pool.join()
//     for res in result:
//         print res.get()
//     print "Sub-process(es) done."
// (time.sleep(1) is scaled down to 20 ms.)
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

std::string func(std::string msg) {                 // def func(msg):
    for (int i = 0; i < 3; ++i) {                   //     for i in xrange(3):
        std::printf("%s\n", msg.c_str());           //         print msg
        std::fflush(stdout);
        std::this_thread::sleep_for(20ms);          //         time.sleep(1)
    }
    return "done " + msg;                           //     return "done " + msg
}

int main() {
    mp::freeze_support();
    mp::Pool pool(4);                               // pool = multiprocessing.Pool(processes=4)
    std::vector<mp::AsyncResult<std::string>> result;      // result = []
    for (int i = 0; i < 10; ++i) {                  // for i in xrange(10):
        std::string msg = "hello " + std::to_string(i);    // msg = "hello %d" %(i)
        result.push_back(pool.apply_async(func, msg));     // result.append(pool.apply_async(func, (msg, )))
    }
    pool.close();                                   // pool.close()
    pool.join();                                    // pool.join()
    int i = 0;
    for (auto& res : result) {                      // for res in result:
        std::string got = res.get();                //     print res.get()
        std::printf("%s\n", got.c_str());
        // each result belongs to its own submission, in submission order
        CHECK(got == "done hello " + std::to_string(i));
        ++i;
    }
    std::printf("Sub-process(es) done.\n");         // print "Sub-process(es) done."
    return 0;
}
