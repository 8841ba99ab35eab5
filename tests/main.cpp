// The one Catch2 runner for every test program: freeze_support() comes first, as API.md
// asks of any program that may use the spawn start method.
#define CATCH_CONFIG_RUNNER
// Catch2's crash handlers would be inherited by every forked child and pool worker,
// and a child killed on purpose would then print a Catch2 failure report of its own.
#define CATCH_CONFIG_NO_POSIX_SIGNALS
#include <catch2/catch.hpp>

#include <cstdlib>

#include <multiprocessing.hpp>

int main(int argc, char** argv) {
    multiprocessing::freeze_support();
    // The start method is a test parameter: ctest runs the Pool, Process and Queue tests
    // once per method (tests/CMakeLists.txt), setting this; unset means the default, fork.
    if (const char* method = std::getenv("MP_TEST_START_METHOD"); method && *method)
        multiprocessing::set_start_method(method);
    return Catch::Session().run(argc, argv);
}
