// Twin of seed 000_d95e13487ef67c7d.txt, lines 52-71 (the Pool method list):
//     apply_async(func[, args[, kwds[, callback]]]) -- if callback is given it is called
//         with the result once it is ready; it should return at once, or it blocks the
//         thread that handles results.
//     map_async(func, iterable[, chunksize[, callback]]) -- callback is applied to the
//         result list once it is ready (unless the call failed).
// The seed has no code for this; this is the usual Python pattern it describes:
//     results = []
//     for i in range(10):
//         pool.apply_async(f, (i,), callback=results.append)
//     r = pool.map_async(f, range(10), callback=...)
//     pool.close(); pool.join()
#include <multiprocessing.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <ranges>
#include <tuple>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

int f(int x) {
    return x * x;
}

int main() {
    mp::freeze_support();
    mp::Pool pool(4);

    // Callbacks run in the parent, in the pool's result-handling thread: guard the list.
    std::mutex mutex;
    std::vector<int> results;                       // results = []
    auto collect = [&](const int& r) {              // callback=results.append
        std::lock_guard lock(mutex);
        results.push_back(r);
    };
    std::vector<mp::AsyncResult<int>> handles;
    for (int i = 0; i < 10; ++i)                    // for i in range(10):
        handles.push_back(pool.apply_async(f, std::tuple{i}, {.callback = collect}));

    // A callback has run before its result turns ready.
    for (int i = 0; i < 10; ++i) {
        int r = handles[i].get(5s);
        CHECK(r == i * i);
        std::lock_guard lock(mutex);
        CHECK(std::ranges::find(results, r) != results.end());
    }

    std::vector<int> mapped;                        // map_async(..., callback=...)
    auto map_result = pool.map_async(f, std::views::iota(0, 10), {.callback = [&](const std::vector<int>& v) {
                                         std::lock_guard lock(mutex);
                                         mapped = v;
                                     }});

    pool.close();                                   // pool.close()
    pool.join();                                    // pool.join()

    std::vector<int> expected{0, 1, 4, 9, 16, 25, 36, 49, 64, 81};
    // join() also waited for the result handler: every callback has run.
    CHECK(map_result.ready());
    CHECK(map_result.get() == expected);
    std::lock_guard lock(mutex);
    // apply_async callbacks: one per task, in completion order (any order)
    std::vector<int> sorted = results;
    std::ranges::sort(sorted);
    std::printf("apply_async callbacks collected %zu results\n", results.size());
    CHECK(sorted == expected);
    // map_async callback: the whole list once, in input order
    CHECK(mapped == expected);
    std::printf("map_async callback got [");
    for (std::size_t i = 0; i < mapped.size(); ++i)
        std::printf("%s%d", i ? ", " : "", mapped[i]);
    std::printf("]\n");
    return 0;
}
