// The runner for the MPI pool's tests. Every rank starts here: mp::mpi::serve() keeps
// ranks 1..N-1 of an mpirun-launched run (and every worker a pool spawns) serving, and
// only rank 0, or the program run alone, goes on to run the tests.
#define CATCH_CONFIG_RUNNER
#define CATCH_CONFIG_NO_POSIX_SIGNALS  // a worker killed on purpose must not report as a test
#include <catch2/catch.hpp>

#include <multiprocessing.hpp>
#include <multiprocessing/mpi.hpp>

int main(int argc, char** argv) {
    multiprocessing::mpi::serve();
    multiprocessing::freeze_support();
    return Catch::Session().run(argc, argv);
}
