// Twin of seed 000_d95e13487ef67c7d.txt, lines 125-147 ("1. 示例一", the Python docs' pool demo):
//     pool = Pool(processes=4)
//     result = pool.apply_async(f, (10,));  print result.get(timeout=1)   # 100
//     print pool.map(f, range(10))                                        # [0, 1, 4,..., 81]
//     it = pool.imap(f, range(10)); it.next(); it.next(); it.next(timeout=1)   # 0 1 4
//     result = pool.apply_async(time.sleep, (10,)); print result.get(timeout=1) # TimeoutError
// (time.sleep(10) / timeout=1 are scaled down to 1 s / 100 ms.)
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <ranges>
#include <thread>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

int f(int x) {                                      // def f(x):
    return x * x;                                   //     return x*x
}

void sleep_seconds(double seconds) {                // time.sleep
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

int main() {
    mp::freeze_support();
    mp::Pool pool(4);                               // pool = Pool(processes=4)

    auto result = pool.apply_async(f, 10);          // result = pool.apply_async(f, (10,))
    int r = result.get(1s);                         // print result.get(timeout=1)
    std::printf("%d\n", r);
    CHECK(r == 100);

    auto squares = pool.map(f, std::views::iota(0, 10));   // print pool.map(f, range(10))
    std::printf("[");
    for (std::size_t i = 0; i < squares.size(); ++i)
        std::printf("%s%d", i ? ", " : "", squares[i]);
    std::printf("]\n");
    CHECK((squares == std::vector<int>{0, 1, 4, 9, 16, 25, 36, 49, 64, 81}));

    auto it = pool.imap(f, std::views::iota(0, 10));       // it = pool.imap(f, range(10))
    int a = it.next();                              // print it.next()           # prints "0"
    int b = it.next();                              // print it.next()           # prints "1"
    int c = it.next(1s);                            // print it.next(timeout=1)  # prints "4"
    std::printf("%d\n%d\n%d\n", a, b, c);
    CHECK(a == 0);
    CHECK(b == 1);
    CHECK(c == 4);

    auto sleeping = pool.apply_async(sleep_seconds, 1.0);  // result = pool.apply_async(time.sleep, (10,))
    auto t0 = std::chrono::steady_clock::now();
    try {
        sleeping.get(100ms);                        // print result.get(timeout=1)  # raises TimeoutError
        std::fprintf(stderr, "expected mp::TimeoutError from get(100ms)\n");
        return 1;
    } catch (const mp::TimeoutError& e) {
        std::printf("TimeoutError: %s\n", e.what());
    }
    auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(waited >= 95ms);                          // the timeout was honoured, not cut short
    CHECK(!sleeping.ready());
    std::fflush(stdout);
    return 0;                                       // ~Pool() terminates the sleeping worker
}
