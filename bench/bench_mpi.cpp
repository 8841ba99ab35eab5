// MPI pool benchmarks: the workloads of bench/python/bench_mpi.py (mpi4py.futures).
//
// Run on 3 local ranks: `mpirun --oversubscribe -n 3 bench_mpi` (bench/run.py --suite
// mpi does). Rank 0 measures; ranks 1 and 2 are the pool's workers. Beside them, the
// same two workloads on mp::Pool(2) (forked workers) in the same run:
//   mpi_apply_async_roundtrip   mp::mpi::Pool: apply_async(noop).get(), one in flight, us
//   mpi_map_square_1M           mp::mpi::Pool: map(square, 1M int64), default chunks, Mitems/s
//   mpi_ref_pool_apply_async_roundtrip, mpi_ref_pool_map_square_1M: the same on mp::Pool(2)
//
// Usage: mpirun -n 3 bench_mpi [--quick] [--filter SUBSTRING]
#include <multiprocessing.hpp>
#include <multiprocessing/mpi.hpp>

#include "bench_support.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace mp = multiprocessing;

namespace {

using namespace bench;

void noop() {}
std::int64_t square(std::int64_t x) { return x * x; }

template <class P>
void bench_map_square(P& pool, const char* name, int n, std::size_t count) {
    std::vector<std::int64_t> data(count);
    for (std::size_t i = 0; i < count; ++i) data[i] = static_cast<std::int64_t>(i);
    const auto last = static_cast<std::int64_t>(count - 1);
    (void)pool.map(square, data);  // warm-up, full size
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        std::vector<std::int64_t> out = pool.map(square, data);
        const double dt = seconds_since(t0);
        check(out.size() == count && out.back() == last * last, "map(square)");
        runs.push_back(static_cast<double>(count) / dt / 1e6);
    }
    emit(name, "Mitems/s", runs);
}

}  // namespace

int main(int argc, char** argv) {
    mp::mpi::serve();
    mp::freeze_support();
    parse_args(argc, argv);
    {
        mp::mpi::Pool pool;  // ranks 1..N-1
        guarded("mpi_apply_async_roundtrip", "us",
                [&] { bench_apply_roundtrip(pool, noop, "mpi_apply_async_roundtrip", reps(7), 2000); });
        guarded("mpi_map_square_1M", "Mitems/s", [&] { bench_map_square(pool, "mpi_map_square_1M", reps(7), 1'000'000); });
    }
    {
        mp::Pool pool(2);
        guarded("mpi_ref_pool_apply_async_roundtrip", "us",
                [&] { bench_apply_roundtrip(pool, noop, "mpi_ref_pool_apply_async_roundtrip", reps(7), 2000); });
        guarded("mpi_ref_pool_map_square_1M", "Mitems/s",
                [&] { bench_map_square(pool, "mpi_ref_pool_map_square_1M", reps(7), 1'000'000); });
    }
    return 0;
}
