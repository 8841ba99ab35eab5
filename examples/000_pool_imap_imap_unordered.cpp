// Twin of seed 000_d95e13487ef67c7d.txt, lines 73-86 (the Pool method list):
//     imap(func, iterable[, chunksize]) -- a lazy map; a large chunksize is much faster
//         for very long iterables; next(timeout) raises multiprocessing.TimeoutError
//         if the result cannot be returned within timeout seconds.
//     imap_unordered(func, iterable[, chunksize]) -- the same, results in any order
//         ("Only when there is only one worker process is the order guaranteed").
// The seed has no code for this; this is the usual Python use of each sentence:
//     for y in pool.imap(f, range(1000), chunksize=64): ...
//     it = pool.imap(slow, [1]); it.next(timeout=0.02)   # TimeoutError; it.next() later works
//     sorted(pool.imap_unordered(f, range(20))) == [f(x) for x in range(20)]
//     list(Pool(1).imap_unordered(f, range(20))) == [f(x) for x in range(20)]
#include <multiprocessing.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ranges>
#include <thread>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

int f(int x) {
    return x * x;
}

int slow(int x) {
    std::this_thread::sleep_for(300ms);
    return x + 1;
}

int main() {
    mp::freeze_support();
    std::vector<int> expected;
    for (int x = 0; x < 20; ++x)
        expected.push_back(f(x));

    {
        mp::Pool pool(4);

        // imap with a large chunksize over a long input: results in input order
        int n = 0;
        for (int y : pool.imap(f, std::views::iota(0, 1000), {.chunksize = 64})) {
            if (y != n * n) {
                std::fprintf(stderr, "imap item %d: got %d, expected %d\n", n, y, n * n);
                return 1;
            }
            ++n;
        }
        CHECK(n == 1000);
        std::printf("imap(chunksize=64): 1000 results in order\n");

        // next(timeout) raises TimeoutError while the item is not done; next() then gets it
        std::vector<int> one{1};
        auto it = pool.imap(slow, one);
        try {
            (void)it.next(20ms);                    // it.next(timeout=0.02)
            std::fprintf(stderr, "next(20ms) should throw mp::TimeoutError\n");
            return 1;
        } catch (const mp::TimeoutError& e) {
            std::printf("next(20ms): TimeoutError: %s\n", e.what());
        }
        CHECK(it.next() == 2);                      // it.next()
        try {
            (void)it.next();                        // past the end: StopIteration
            std::fprintf(stderr, "next() past the end should throw mp::StopIteration\n");
            return 1;
        } catch (const mp::StopIteration&) {
            std::printf("next() past the end: StopIteration\n");
        }

        // imap_unordered: every result once, in any order
        std::vector<int> got;
        for (int y : pool.imap_unordered(f, std::views::iota(0, 20)))
            got.push_back(y);
        std::ranges::sort(got);
        CHECK(got == expected);
        std::printf("imap_unordered with 4 workers: all 20 results\n");

        pool.close();
        pool.join();
    }
    {
        // "Only when there is only one worker process is the order guaranteed"
        mp::Pool pool(1);
        std::vector<int> got;
        for (int y : pool.imap_unordered(f, std::views::iota(0, 20)))
            got.push_back(y);
        CHECK(got == expected);
        std::printf("imap_unordered with 1 worker: input order\n");
        pool.close();
        pool.join();
    }
    return 0;
}
