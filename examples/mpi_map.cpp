// The fib map of seed 002_8c71d8103970d9b2.txt (lines 8-10 and 26-29) on MPI ranks:
//     from multiprocessing import Pool
//     pool = Pool(2)
//     pool.map(fib, [35] * 2)
// as mpi4py's users write it, with the workers being MPI processes, here or on other
// machines:
//     mpirun -n 3 ./mpi_map                       # rank 0 runs main, ranks 1 and 2 serve
//     mpirun -n 3 -host node1,node2,node3 ./mpi_map
//     ./mpi_map                                   # alone: the pool spawns its 2 workers
// Timings are printed, never asserted; the results are checked.
#include <multiprocessing/mpi.hpp>

#include <chrono>
#include <cstdio>
#include <numeric>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;

long fib(int n) {                                   // def fib(n):
    if (n <= 2)                                     //     if n <=2 :
        return 1;                                   //         return 1
    return fib(n - 1) + fib(n - 2);                 //     return fib(n-1) + fib(n-2)
}

int main() {
    mp::mpi::serve();  // ranks other than 0 (and spawned workers) serve here and never return

    const auto start = std::chrono::steady_clock::now();
    mp::mpi::Pool pool(2);                          // pool = Pool(2)
    auto result = pool.map(fib, std::vector<int>(2, 35));  // pool.map(fib, [35] * 2)
    std::printf("pool.map(fib, [35] * 2) on MPI ranks (pids %d, %d): %.3fs\n", pool.worker_pids().at(0),
                pool.worker_pids().at(1), std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    CHECK((result == std::vector<long>{9227465, 9227465}));

    // A bigger map, in chunks over both workers, against the same computed here.
    std::vector<int> ns(2000);
    for (std::size_t i = 0; i < ns.size(); ++i) ns[i] = static_cast<int>(i % 25);
    auto fibs = pool.map(fib, ns);
    long expected = 0;
    for (int n : ns) expected += fib(n);
    CHECK(std::accumulate(fibs.begin(), fibs.end(), 0L) == expected);

    pool.close();
    pool.join();
    return 0;
}
