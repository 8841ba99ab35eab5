// For test_start_methods: a program whose main() forgets mp::freeze_support(). Its pool's
// spawned workers are fresh runs of this program, which must not run this main() again:
//  - built as is, the program never calls freeze_support(), and the workers stop before
//    main() with a message saying so;
//  - built with MP_CALL_FREEZE_SUPPORT_LATE, it calls it, but only on a path not taken (as
//    a program that calls it after other work would), so the workers do run main()
//    again; there the Pool constructor refuses to start (it prints CHILD: and the reason).
// Either way the workers exit before starting, and the real parent's pool must give up
// with a message that names freeze_support() rather than respawn them forever. Prints
// PARENT-OK when it saw that message; exit code 0 then, 1 otherwise.
#include <multiprocessing.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace mp = multiprocessing;

int twice(int x) { return 2 * x; }

int main(int argc, char**) {
    // No mp::freeze_support() first, on purpose.
#ifdef MP_CALL_FREEZE_SUPPORT_LATE
    if (argc > 99) mp::freeze_support();
#else
    (void)argc;
#endif
    const bool spawned = std::getenv("MULTIPROCESSING_SPAWNED") != nullptr;
    try {
        mp::Pool pool({.processes = 1, .context = mp::get_context("spawn")});
        const int r = pool.apply(twice, 21);
        std::printf("%s: the pool worked (%d); it should have failed\n", spawned ? "CHILD" : "PARENT", r);
        return 1;
    } catch (const std::exception& e) {
        const bool clear = std::string(e.what()).find("freeze_support") != std::string::npos;
        std::printf("%s: %s\n", spawned ? "CHILD" : (clear ? "PARENT-OK" : "PARENT-UNCLEAR"), e.what());
        std::fflush(stdout);
        return clear ? 0 : 1;
    }
}
