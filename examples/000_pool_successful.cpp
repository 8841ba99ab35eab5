// Twin of seed 000_d95e13487ef67c7d.txt, lines 217-242 ("4. 示例四", pool.py by Squall):
//     def f(x):
//         for i in range(10):
//             print '%s --- %s ' % (i, x)
//             sleep(1)
//     def main():
//         pool = Pool(processes=3)    # set the processes max number 3
//         for i in range(11,20):
//             result = pool.apply_async(f, (i,))
//         pool.close()
//         pool.join()
//         if result.successful():
//             print 'successful'
// The prose after it (lines 239-242) also says: join() must come after close() or
// terminate(), and successful() raises (AssertionError; ValueError here) while a
// worker has not finished. Both are checked too.
// (sleep(1) is scaled down to 10 ms.)
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <optional>
#include <thread>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

void f(int x) {                                     // def f(x):
    for (int i = 0; i < 10; ++i) {                  //     for i in range(10):
        std::printf("%d --- %d \n", i, x);          //         print '%s --- %s ' % (i, x)
        std::fflush(stdout);
        std::this_thread::sleep_for(10ms);          //         sleep(1)
    }
}

int main() {                                        // def main():
    mp::freeze_support();
    mp::Pool pool(3);                               //     pool = Pool(processes=3)
    std::optional<mp::AsyncResult<void>> result;
    for (int i = 11; i < 20; ++i)                   //     for i in range(11,20):
        result = pool.apply_async(f, i);            //         result = pool.apply_async(f, (i,))

    // The last task (19) cannot have finished yet unless 9 x 100 ms of work on
    // 3 workers went by; if it has not, successful() must throw.
    if (!result->ready()) {
        try {
            (void)result->successful();
            std::fprintf(stderr, "successful() before ready() should throw mp::ValueError\n");
            return 1;
        } catch (const mp::ValueError& e) {
            std::printf("successful() before ready: ValueError: %s\n", e.what());
        }
    }
    // join() before close()/terminate() is a misuse.
    try {
        pool.join();
        std::fprintf(stderr, "join() before close() should throw mp::ValueError\n");
        return 1;
    } catch (const mp::ValueError& e) {
        std::printf("join() before close: ValueError: %s\n", e.what());
    }

    pool.close();                                   //     pool.close()
    pool.join();                                    //     pool.join()
    CHECK(result->ready());
    if (result->successful()) {                     //     if result.successful():
        std::printf("successful\n");                //         print 'successful'
    } else {
        std::fprintf(stderr, "the last task did not succeed\n");
        return 1;
    }
    return 0;
}
