// Twin of seed 003_6e438f5af01fda3e.txt, lines 1046-1065 ("4.1、进程池", map):
//     def process_func(process_id):
//         print("process id %d" %process_id)
//         time.sleep(3)
//         print("process id %d end" % process_id)
//     def main():
//         pool = multiprocessing.Pool(processes=3)
//         pool.map(process_func,range(10))
//         pool.close()    # 先调用close关闭进程池,不能再有新任务被加入到进程池中
//         pool.join()     # join函数等待子进程结束
// process_func returns nothing, so map() returns void here. The comment on close()
// ("no new task can be added") is checked: map() then throws.
// (time.sleep(3) is scaled down to 50 ms.)
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <ranges>
#include <thread>

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
    mp::Pool pool(3);                               //     pool = multiprocessing.Pool(processes=3)

    auto t0 = std::chrono::steady_clock::now();
    pool.map(process_func, std::views::iota(0, 10));   // pool.map(process_func,range(10))
    auto elapsed = std::chrono::steady_clock::now() - t0;
    // map() blocks until all 10 items ran; 10 items of 50 ms on 3 workers: >= 4 rounds
    std::printf("map took %.3f s\n", std::chrono::duration<double>(elapsed).count());
    CHECK(elapsed >= 4 * 50ms);

    pool.close();                                   //     pool.close()
    try {                                           //     (no new task after close)
        pool.map(process_func, std::views::iota(0, 1));
        std::fprintf(stderr, "map after close() should throw mp::ValueError\n");
        return 1;
    } catch (const mp::ValueError& e) {
        std::printf("map after close: ValueError: %s\n", e.what());
    }
    pool.join();                                    //     pool.join()
    return 0;
}
