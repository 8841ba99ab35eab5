// mp::mpi::Pool: mp::Pool's API over MPI ranks. ctest runs this program twice: under
// `mpirun -n 3` (rank 0 runs the tests, ranks 1 and 2 serve) and alone (each pool
// spawns its workers with MPI_Comm_spawn). A test that only makes sense in one of the
// two says so with launched_by_mpirun().
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <ranges>
#include <chrono>
#include <csignal>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <multiprocessing.hpp>
#include <multiprocessing/mpi.hpp>

namespace mp = multiprocessing;
using namespace std::chrono_literals;

namespace {

bool launched_by_mpirun() {
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size > 1;
}

int square(int x) { return x * x; }
long fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
int add(int a, int b) { return a + b; }
int add3(int a, int b, int c) { return a + b + c; }
std::string greet(const std::string& greeting, const std::string& name) { return greeting + name; }
std::string shout(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    return s + "!";
}
int my_pid(int) { return static_cast<int>(::getpid()); }
int fail_on_three(int x) {
    if (x == 3) throw std::invalid_argument("three is not allowed");
    return x;
}
int sleep_ms(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
}
int die(int) {
    ::raise(SIGKILL);
    return 0;
}

int initialized_with = 0;
void remember(int x) { initialized_with = x; }
int initialized(int) { return initialized_with; }
void refuse(int) { throw std::runtime_error("no database here"); }

}  // namespace

TEST_CASE("apply and apply_async run on worker ranks, not here", "[mpi]") {
    mp::mpi::Pool pool(2);
    CHECK(pool.apply(square, 7) == 49);
    CHECK(pool.apply(add, 2, 40) == 42);
    CHECK(pool.apply(shout, std::string("hello")) == "HELLO!");
    auto r = pool.apply_async(my_pid, 0);
    const int pid = r.get(30s);
    CHECK(pid != ::getpid());
    const auto pids = pool.worker_pids();
    CHECK(pids.size() == 2);
    CHECK(std::find(pids.begin(), pids.end(), pid) != pids.end());
    // A lambda without captures travels as a function does.
    CHECK(pool.apply([](int x) { return x + 1; }, 1) == 2);
}

TEST_CASE("map, starmap and their async forms keep the input's order", "[mpi]") {
    mp::mpi::Pool pool(2);
    std::vector<int> xs(40000);  // squares fit an int
    std::iota(xs.begin(), xs.end(), 0);
    const auto squares = pool.map(square, xs);
    REQUIRE(squares.size() == xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i) REQUIRE(squares[i] == xs[i] * xs[i]);
    CHECK(pool.map(square, xs, {.chunksize = 1}).back() == 39999 * 39999);

    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    CHECK(pool.starmap(add, pairs) == std::vector<int>{3, 7, 11});

    std::atomic<int> called{0};
    auto async = pool.map_async(fib, std::vector<int>{10, 20, 25},
                                {.callback = [&](const std::vector<long>& v) { called = static_cast<int>(v.size()); }});
    CHECK(async.get(60s) == std::vector<long>{55, 6765, 75025});
    CHECK(called == 3);
    CHECK(pool.map(shout, std::vector<std::string>{"a", "b"}) == std::vector<std::string>{"A!", "B!"});
}

TEST_CASE("mp::partial binds leading arguments, a string among them, for apply, map, starmap and imap", "[mpi]") {
    mp::mpi::Pool pool(2);
    CHECK(pool.apply(mp::partial(add, 40), 2) == 42);
    CHECK(pool.map(mp::partial(add, 10), std::vector<int>{1, 2, 3}) == std::vector<int>{11, 12, 13});
    const std::string greeting = "hello, ";
    CHECK(pool.map(mp::partial(greet, greeting), std::vector<std::string>{"ann", "bo"}) ==
          std::vector<std::string>{"hello, ann", "hello, bo"});
    std::vector<std::tuple<int>> singles{{1}, {2}};
    CHECK(pool.starmap(mp::partial(add, 5), singles) == std::vector<int>{6, 7});
    std::vector<int> got;
    for (int x : pool.imap(mp::partial(mp::partial(add3, 100), 20), std::vector<int>{1, 2})) got.push_back(x);
    CHECK(got == std::vector<int>{121, 122});
}

TEST_CASE("imap is lazy and ordered, imap_unordered yields everything", "[mpi]") {
    mp::mpi::Pool pool(2);
    std::vector<long> got;
    for (long v : pool.imap(fib, std::vector<int>{25, 1, 20, 2})) got.push_back(v);
    CHECK(got == std::vector<long>{75025, 1, 6765, 1});

    // An endless input: only what is consumed (plus a window) is ever pulled.
    auto naturals = std::views::iota(0);
    auto it = pool.imap(square, naturals);
    int n = 0;
    for (int v : it) {
        REQUIRE(v == n * n);
        if (++n == 1000) break;
    }
    std::multiset<int> unordered;
    for (int v : pool.imap_unordered(square, std::vector<int>{1, 2, 3, 4, 5}, {.chunksize = 2})) unordered.insert(v);
    CHECK(unordered == std::multiset<int>{1, 4, 9, 16, 25});
}

TEST_CASE("a task's exception reaches the caller with its type and message", "[mpi]") {
    mp::mpi::Pool pool(2);
    try {
        pool.apply(fail_on_three, 3);
        FAIL("expected std::invalid_argument");
    } catch (const std::invalid_argument& e) {
        CHECK(std::string(e.what()).find("three is not allowed") != std::string::npos);
    }
    CHECK_THROWS_AS(pool.map(fail_on_three, std::vector<int>{1, 2, 3, 4}), std::invalid_argument);
    std::string error;
    auto r = pool.apply_async(fail_on_three, std::tuple{3},
                              {.error_callback = [&](std::exception_ptr e) {
                                   try {
                                       std::rethrow_exception(e);
                                   } catch (const std::exception& x) {
                                       error = x.what();
                                   }
                               }});
    CHECK_THROWS_AS(r.get(30s), std::invalid_argument);
    CHECK(error.find("three") != std::string::npos);
    CHECK(pool.apply(square, 3) == 9);  // the worker goes on
}

TEST_CASE("get(timeout) returns or throws TimeoutError, never hangs", "[mpi]") {
    mp::mpi::Pool pool(2);
    auto slow = pool.apply_async(sleep_ms, 1500);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(slow.get(100ms), mp::TimeoutError);
    CHECK(std::chrono::steady_clock::now() - t0 < 1400ms);
    CHECK_FALSE(slow.ready());
    CHECK(slow.get(30s) == 1500);
}

TEST_CASE("close, join and terminate behave as mp::Pool's", "[mpi]") {
    {
        mp::mpi::Pool pool(2);
        auto r = pool.apply_async(sleep_ms, 200);
        CHECK_THROWS_AS(pool.join(), mp::ValueError);  // still running
        pool.close();
        CHECK_THROWS_AS(pool.apply(square, 1), mp::ValueError);
        pool.join();
        CHECK(r.get(1s) == 200);  // close lets queued work finish
    }
    {
        mp::mpi::Pool pool(2);
        std::vector<mp::AsyncResult<int>> results;
        for (int i = 0; i < 6; ++i) results.push_back(pool.apply_async(sleep_ms, 300));
        std::this_thread::sleep_for(50ms);
        pool.terminate();
        int failed = 0;
        for (auto& r : results) {
            try {
                r.get(30s);
            } catch (const mp::ProcessError&) {
                ++failed;
            }
        }
        CHECK(failed >= 4);  // at most one per worker was already done or running to its end
        CHECK(pool.join(30s));
    }
    // A pool after a terminated one works: late results of the old one are told apart.
    mp::mpi::Pool again(2);
    CHECK(again.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
}

TEST_CASE("the initializer runs on every worker before its first task", "[mpi]") {
    mp::mpi::Pool pool({.processes = 2, .initializer = {remember, 17}});
    CHECK(pool.map(initialized, std::vector<int>(20, 0), {.chunksize = 1}) == std::vector<int>(20, 17));
}

TEST_CASE("a failing initializer is a ProcessError from the constructor that names it", "[mpi]") {
    try {
        mp::mpi::Pool pool({.processes = 2, .initializer = {refuse, 1}});
        FAIL("expected mp::ProcessError");
    } catch (const mp::ProcessError& e) {
        CHECK_THAT(e.what(), Catch::Contains("initializer failed") && Catch::Contains("no database here"));
    }
    mp::mpi::Pool pool(2);  // the workers are still good for the next pool
    CHECK(pool.apply(square, 4) == 16);
}

TEST_CASE("a shared handle cannot be an MPI pool's initializer argument", "[mpi]") {
    mp::Lock lock;
    auto use_lock = [](mp::Lock) {};
    try {
        mp::mpi::Pool pool({.processes = 1, .initializer = {use_lock, lock}});
        FAIL("expected mp::ValueError");
    } catch (const mp::ValueError& e) {
        CHECK_THAT(e.what(), Catch::Contains("cannot reach another machine"));
    }
}

TEST_CASE("under mpirun: the ranks serve one pool at a time, and no more than there are", "[mpi]") {
    if (!launched_by_mpirun()) return;  // alone, every pool spawns its own workers
    mp::mpi::Pool pool(2);
    try {
        mp::mpi::Pool second(1);
        FAIL("expected mp::ValueError");
    } catch (const mp::ValueError& e) {
        CHECK_THAT(e.what(), Catch::Contains("one Pool at a time"));
    }
    try {
        mp::mpi::Pool too_big(5);
        FAIL("expected mp::ValueError");
    } catch (const mp::ValueError& e) {
        CHECK_THAT(e.what(), Catch::Contains("at most"));
    }
    CHECK(pool.apply(square, 5) == 25);
}

TEST_CASE("alone: two pools spawn their own workers side by side", "[mpi]") {
    if (launched_by_mpirun()) return;
    mp::mpi::Pool a(1), b(1);
    CHECK(a.apply(my_pid, 0) != b.apply(my_pid, 0));
    CHECK(a.apply(square, 2) + b.apply(square, 3) == 13);
}

// Under mpirun this needs --enable-recovery (ctest runs it so): Open MPI's default is to
// end the whole job when a rank dies.
TEST_CASE("a worker rank that dies fails its task with WorkerLostError and the pool goes on", "[mpi][kill]") {
    mp::mpi::Pool pool(2);
    auto doomed = pool.apply_async(die, 0);
    try {
        doomed.get(60s);
        FAIL("expected mp::WorkerLostError");
    } catch (const mp::WorkerLostError& e) {
        CHECK_THAT(e.what(), Catch::Contains("died"));
    }
    CHECK(pool.apply(square, 6) == 36);
    CHECK(pool.map(square, std::vector<int>{1, 2, 3, 4}, {.chunksize = 1}) == std::vector<int>{1, 4, 9, 16});
    // Spawned workers are replaced; mpirun's ranks cannot be.
    CHECK(pool.worker_pids().size() == (launched_by_mpirun() ? 1u : 2u));
    pool.close();
    CHECK(pool.join(60s));
}
