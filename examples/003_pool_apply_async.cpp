// Twin of seed 003_6e438f5af01fda3e.txt, lines 1000-1020 ("4.1、进程池", apply_async):
//     def process_func(process_id):
//         print("process id %d" %process_id)
//         time.sleep(3)
//         print("process id %d end" % process_id)
//     def main():
//         pool = multiprocessing.Pool(processes=3)
//         for i in range(10):
//             pool.apply_async(process_func,args=(i,))   # 向进程池中添加要执行的任务
//         pool.close()    # 先调用close关闭进程池,不能再有新任务被加入到进程池中
//         pool.join()     # join函数等待子进程结束
// The comment on close() ("no new task can be added") is checked: submitting then throws.
// (time.sleep(3) is scaled down to 50 ms.)
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

void process_func(int process_id) {                 // def process_func(process_id):
    std::printf("process id %d\n", process_id);     //     print("process id %d" %process_id)
    std::fflush(stdout);
    std::this_thread::sleep_for(50ms);              //     time.sleep(3)
    std::printf("process id %d end\n", process_id); //     print("process id %d end" % process_id)
    std::fflush(stdout);
}

int main() {                                        // def main():
    mp::freeze_support();
    auto t0 = std::chrono::steady_clock::now();
    mp::Pool pool(3);                               //     pool = multiprocessing.Pool(processes=3)
    std::vector<mp::AsyncResult<void>> results;     //     (kept only to check them below)
    for (int i = 0; i < 10; ++i)                    //     for i in range(10):
        results.push_back(pool.apply_async(process_func, i));   // pool.apply_async(process_func,args=(i,))

    pool.close();                                   //     pool.close()
    try {                                           //     (no new task after close)
        pool.apply_async(process_func, 10);
        std::fprintf(stderr, "apply_async after close() should throw mp::ValueError\n");
        return 1;
    } catch (const mp::ValueError& e) {
        std::printf("apply_async after close: ValueError: %s\n", e.what());
    }
    pool.join();                                    //     pool.join()
    auto elapsed = std::chrono::steady_clock::now() - t0;

    for (auto& r : results) {                       // join() waited for every task
        CHECK(r.ready());
        CHECK(r.successful());
    }
    // 10 tasks of 50 ms on at most 3 workers: one worker runs at least 4 of them
    std::printf("elapsed: %.3f s\n", std::chrono::duration<double>(elapsed).count());
    CHECK(elapsed >= 4 * 50ms);
    return 0;
}
