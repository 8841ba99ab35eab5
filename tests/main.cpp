// The one Catch2 runner for every test program: freeze_support() comes first, as API.md
// asks of any program that may use the spawn start method.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <multiprocessing.hpp>

int main(int argc, char** argv) {
    multiprocessing::freeze_support();
    return Catch::Session().run(argc, argv);
}
