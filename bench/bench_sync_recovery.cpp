// Uncontended acquire+release of a Lock and a BoundedSemaphore after 1, 40 and 1000
// distinct processes have used the object (issue 13: it must stay O(1), <= 50 ns, with
// no per-user bookkeeping growing behind it). Prints one line per case:
//   <primitive> after <N> users: <ns> ns per acquire+release (median of 7)
#include <multiprocessing.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <type_traits>
#include <vector>

namespace mp = multiprocessing;
using Clock = std::chrono::steady_clock;

namespace {

// `users` processes each take and give back the object once, then exit.
template <class L>
void let_processes_use(L& lock, int users) {
    for (int i = 0; i < users; ++i) {
        const pid_t pid = ::fork();
        if (pid == 0) {
            if (!lock.acquire(std::chrono::duration<double>(10))) ::_exit(1);
            lock.release();
            ::_exit(0);
        }
        int status = 0;
        ::waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            std::fprintf(stderr, "a user process failed\n");
            std::exit(1);
        }
    }
}

template <class L>
double ns_per_pair(L& lock, int iterations) {
    std::vector<double> runs;
    for (int r = 0; r < 7; ++r) {
        const auto t0 = Clock::now();
        for (int i = 0; i < iterations; ++i) {
            lock.acquire();
            lock.release();
        }
        runs.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / iterations);
    }
    std::sort(runs.begin(), runs.end());
    return runs[runs.size() / 2];
}

template <class L>
void run(const char* name, int users, int iterations) {
    L lock = [] {
        if constexpr (std::is_same_v<L, mp::BoundedSemaphore>) return L(1);
        else return L();
    }();
    let_processes_use(lock, users);
    std::printf("%-22s after %4d users: %6.1f ns per acquire+release\n", name, users, ns_per_pair(lock, iterations));
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    mp::freeze_support();
    const bool quick = argc > 1 && std::string_view(argv[1]) == "--quick";
    const int iterations = quick ? 200'000 : 2'000'000;
    for (int users : {1, 40, 1000}) {
        run<mp::Lock>("Lock", users, iterations);
        run<mp::BoundedSemaphore>("BoundedSemaphore(1)", users, iterations);
    }
    return 0;
}
