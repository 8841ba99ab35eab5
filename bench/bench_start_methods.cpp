// Start-method benchmarks: the workloads of bench/python/bench_start_methods.py.
//
// For each of spawn and forkserver: Pool(2) start + close + join (ms), and
// apply_async(noop).get() with one call in flight (us); and the same round trip on
// mp::dummy::Pool(2) (threads) beside Python's multiprocessing.dummy. One JSON line per
// workload (see bench_support.hpp); bench/run.py --suite start pairs them with Python's.
//
// Usage: bench_start_methods [--quick] [--filter SUBSTRING]
//
// As on the Python side, the fork server's own start is paid once before timing (a
// warm-up pool), as a long-running program pays it once.

#include <multiprocessing.hpp>

#include "bench_support.hpp"

#include <string>
#include <vector>

namespace mp = multiprocessing;

namespace {

using namespace bench;
constexpr std::size_t kPoolSize = 2;

void noop() {}

void bench_lifecycle(const std::string& method, int n) {
    auto ctx = mp::get_context(method);
    {
        auto warm = ctx.Pool(kPoolSize);
        warm.close();
        warm.join();
    }
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        {
            auto p = ctx.Pool(kPoolSize);
            p.close();
            p.join();
        }
        runs.push_back(seconds_since(t0) * 1e3);
    }
    emit(("pool_start_close_join_" + method).c_str(), "ms", runs);
}

}  // namespace

int main(int argc, char** argv) {
    mp::freeze_support();
    parse_args(argc, argv);
    for (std::string method : {"spawn", "forkserver"}) {
        guarded(("pool_start_close_join_" + method).c_str(), "ms", [&] { bench_lifecycle(method, reps(15)); });
        const std::string rt = "apply_async_roundtrip_" + method;
        guarded(rt.c_str(), "us", [&] {
            auto pool = mp::get_context(method).Pool(kPoolSize);
            bench_apply_roundtrip(pool, noop, rt, reps(7), 2000);
        });
    }
    guarded("dummy_apply_async_roundtrip", "us", [] {
        mp::dummy::Pool pool(kPoolSize);
        bench_apply_roundtrip(pool, noop, "dummy_apply_async_roundtrip", reps(7), 5000);
    });
    return 0;
}
