// Twin of seed 003_6e438f5af01fda3e.txt, section 4.2 (线程池, the thread pool): the same
// program twice, once with apply_async and once with map, on multiprocessing.dummy.Pool:
//     import multiprocessing.dummy
//     import time
//     def process_func(process_id):
//         print("process id %d" %process_id)
//         time.sleep(3)
//         print("process id %d end" % process_id)
//     def main():
//         pool = multiprocessing.dummy.Pool(processes=3)
//         for i in range(10):
//             pool.apply_async(process_func,args=(i,))     # 向线程池中添加要执行的任务
//         pool.close()                                      # 先调用close关闭进程池
//         pool.join()                                       # join函数等待子线程结束
//     (second version: pool.map(process_func,range(10)) instead of the loop)
// The sleep is 0.3 s instead of 3 s, so the example runs in a few seconds. What it checks:
// every id ran once, on one of exactly 3 worker threads, all in this one process.
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <numeric>
#include <set>
#include <thread>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

std::mutex seen_mutex;                                  // the threads share this process's memory
std::set<int> seen_ids;
std::set<std::thread::id> seen_threads;

void process_func(int process_id) {                     // def process_func(process_id):
    std::printf("process id %d\n", process_id);         //     print("process id %d" %process_id)
    std::fflush(stdout);
    std::this_thread::sleep_for(300ms);                 //     time.sleep(3)
    std::printf("process id %d end\n", process_id);     //     print("process id %d end" % process_id)
    std::fflush(stdout);
    std::lock_guard lock(seen_mutex);
    seen_ids.insert(process_id);
    seen_threads.insert(std::this_thread::get_id());
}

int main() {
    mp::freeze_support();                               // if __name__ == "__main__":
    {
        mp::dummy::Pool pool({.processes = 3});         // pool = multiprocessing.dummy.Pool(processes=3)
        for (int i = 0; i < 10; ++i)                    // for i in range(10):
            pool.apply_async(process_func, i);          //     pool.apply_async(process_func,args=(i,))
        pool.close();                                   // pool.close()
        pool.join();                                    // pool.join()
    }
    CHECK(seen_ids.size() == 10);
    CHECK(seen_threads.size() <= 3);
    CHECK(seen_threads.count(std::this_thread::get_id()) == 0);

    seen_ids.clear();
    {
        mp::dummy::Pool pool({.processes = 3});         // pool = multiprocessing.dummy.Pool(processes=3)
        std::vector<int> ids(10);
        std::iota(ids.begin(), ids.end(), 0);
        pool.map(process_func, ids);                    // pool.map(process_func,range(10))
        pool.close();                                   // pool.close()
        pool.join();                                    // pool.join()
    }
    CHECK(seen_ids.size() == 10);
    return 0;
}
