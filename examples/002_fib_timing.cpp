// Twin of seed 002_8c71d8103970d9b2.txt, lines 14-58 (fib cost: one process vs Process vs
// Pool; the Pool(2).map(fib, [35] * 2) of lines 8-10 is the same call):
//     def log_time(methond_name): ...  print('%s cost %ss' % (methond_name, end - start))
//     def fib(n):
//         if n <=2 : return 1
//         return fib(n-1) + fib(n-2)
//     @log_time('single_process')
//     def single_process(): fib(33); fib(33)
//     @log_time('multi_process')
//     def multi_process():
//         jobs = []
//         for _ in range(2):
//             p = Process(target=fib, args=(33, )); p.start(); jobs.append(p)
//         for j in jobs: j.join()
//     @log_time('pool_process')
//     def pool_process():
//         pool = Pool(2); pool.map(fib, [33]*2)
//     @log_time('dummy_pool')
//     def dummy_pool():
//         pool = DummyPool(2); pool.map(fib, [33]*2)     # from multiprocessing.dummy import Pool as DummyPool
// (As in Python, the dummy pool's threads share one process; unlike CPython's, they run
// fib in parallel, since C++ has no GIL: expect it as fast as pool_process here.)
// Timings are printed, never asserted; the results are checked.
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <deque>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;

constexpr int N = 33;
constexpr long FIB_N = 3524578;                     // fib(33)

// def log_time(methond_name): a decorator printing how long the call took
template <class F>
auto log_time(const char* method_name, F f) {
    return [=] {
        auto start_time = std::chrono::steady_clock::now();        // start_time = time.time()
        auto res = f();                                             // res = f(*args, **kwargs)
        auto end_time = std::chrono::steady_clock::now();          // end_time = time.time()
        std::printf("%s cost %.3fs\n", method_name,                 // print('%s cost %ss' % ...)
                    std::chrono::duration<double>(end_time - start_time).count());
        std::fflush(stdout);
        return res;                                                 // return res
    };
}

long fib(int n) {                                   // def fib(n):
    if (n <= 2)                                     //     if n <=2 :
        return 1;                                   //         return 1
    return fib(n - 1) + fib(n - 2);                 //     return fib(n-1) + fib(n-2)
}

// @log_time('single_process')
auto single_process = log_time("single_process", [] {
    return std::vector<long>{fib(N), fib(N)};       // fib(33); fib(33)
});

// @log_time('multi_process')
auto multi_process = log_time("multi_process", [] {
    std::deque<mp::Process> jobs;                   // jobs = []
    for (int i = 0; i < 2; ++i) {                   // for _ in range(2):
        auto& p = jobs.emplace_back(fib, N);        //     p = Process(target=fib, args=(33, ))
        p.start();                                  //     p.start(); jobs.append(p)
    }
    std::vector<int> exitcodes;
    for (auto& j : jobs) {                          // for j in jobs:
        j.join();                                   //     j.join()
        exitcodes.push_back(j.exitcode().value_or(999));
    }
    return exitcodes;
});

// @log_time('pool_process')
auto pool_process = log_time("pool_process", [] {
    mp::Pool pool(2);                               // pool = Pool(2)
    return pool.map(fib, std::vector<int>(2, N));   // pool.map(fib, [33]*2)
});

// @log_time('dummy_pool')
auto dummy_pool = log_time("dummy_pool", [] {
    mp::dummy::Pool pool(2);                        // pool = DummyPool(2)
    return pool.map(fib, std::vector<int>(2, N));   // pool.map(fib, [33]*2)
});

int main() {
    mp::freeze_support();                           // if __name__ == '__main__':
    auto single = single_process();                 //     single_process()
    auto codes = multi_process();                   //     multi_process()
    auto pooled = pool_process();                   //     pool_process()
    auto threaded = dummy_pool();                   //     dummy_pool()

    CHECK((single == std::vector<long>{FIB_N, FIB_N}));
    CHECK((codes == std::vector<int>{0, 0}));       // both children ran fib(33) and exited cleanly
    CHECK((pooled == std::vector<long>{FIB_N, FIB_N}));
    CHECK((threaded == std::vector<long>{FIB_N, FIB_N}));
    return 0;
}
