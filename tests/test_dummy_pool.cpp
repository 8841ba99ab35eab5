// mp::dummy::Pool: Python's multiprocessing.dummy.Pool (a ThreadPool). The same pool
// logic as mp::Pool (PoolCore, rings, result thread) with threads as the executor and
// the task's address as the transport, so what matters here is what differs: any
// callable, captures by reference, types that cannot be encoded, and what a thread
// cannot do (be killed).
#include <catch2/catch.hpp>
#include <multiprocessing.hpp>

#include "support.hpp"

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace mp = multiprocessing;
using namespace std::chrono_literals;

namespace {

// Neither trivially copyable nor serializable: only a pool of threads can take it.
struct Opaque {
    std::unique_ptr<int> value;
    std::string label;
};

}  // namespace

TEST_CASE("dummy::Pool runs lambdas that capture by reference, and move-only results", "[dummy][pool]") {
    mp::dummy::Pool pool(2);
    std::string prefix = "item-";  // captured by reference: the same memory, no copy
    std::atomic<int> calls{0};
    CHECK(pool.apply([&prefix, &calls](int i) {
              ++calls;
              return prefix + std::to_string(i);
          }, 5) == "item-5");
    CHECK(calls == 1);

    auto owned = pool.apply([] { return std::make_unique<int>(7); });
    REQUIRE(owned);
    CHECK(*owned == 7);

    Opaque in{std::make_unique<int>(3), "three"};
    auto r = pool.apply_async([](const Opaque& o) { return *o.value * 2; }, std::move(in));
    CHECK(r.get(5s) == 6);

    // Work runs on the pool's threads, not the caller's.
    const auto caller = std::this_thread::get_id();
    CHECK(pool.apply([] { return std::this_thread::get_id(); }) != caller);
    CHECK(pool.worker_pids().empty());  // no processes
}

TEST_CASE("dummy::Pool map, starmap, imap and imap_unordered give Python's results", "[dummy][pool]") {
    mp::dummy::Pool pool(3);
    std::vector<int> in(1000);
    for (int i = 0; i < 1000; ++i) in[i] = i;
    const std::string suffix = "!";
    auto out = pool.map([&suffix](int x) { return std::to_string(x * x) + suffix; }, in, {.chunksize = 7});
    REQUIRE(out.size() == 1000);
    for (int i = 0; i < 1000; ++i) REQUIRE(out[i] == std::to_string(i * i) + "!");

    std::vector<std::tuple<std::string, int>> pairs{{"a", 2}, {"b", 3}};
    CHECK(pool.starmap([](const std::string& s, int n) {
              std::string r;
              for (int i = 0; i < n; ++i) r += s;
              return r;
          }, pairs) == std::vector<std::string>{"aa", "bbb"});

    std::vector<int> ordered;
    for (int x : pool.imap([](int x) { return x + 1; }, in, {.chunksize = 10})) ordered.push_back(x);
    REQUIRE(ordered.size() == 1000);
    for (int i = 0; i < 1000; ++i) REQUIRE(ordered[i] == i + 1);

    std::multiset<int> unordered;
    for (int x : pool.imap_unordered([](int x) { return -x; }, in)) unordered.insert(x);
    CHECK(unordered.size() == 1000);
    CHECK(*unordered.begin() == -999);

    auto empty = pool.map([](int x) { return x; }, std::vector<int>{});
    CHECK(empty.empty());

    std::atomic<int> touched{0};
    pool.map([&touched](int) { ++touched; }, in);  // void: map returns nothing
    CHECK(touched == 1000);
}

TEST_CASE("dummy::Pool: an exception keeps its type, fails a whole map, and only its own item in imap",
          "[dummy][pool]") {
    mp::dummy::Pool pool(2);
    CHECK_THROWS_AS(pool.apply([] { throw std::out_of_range("oops"); }), std::out_of_range);
    struct Custom : std::runtime_error {
        using std::runtime_error::runtime_error;
    };
    // Any type: the same exception object is rethrown, no rebuilding.
    CHECK_THROWS_AS(pool.apply([] { throw Custom("mine"); }), Custom);

    std::vector<int> in{1, 2, 3, 4};
    CHECK_THROWS_AS(pool.map([](int x) { return x == 3 ? throw std::invalid_argument("three") : x; }, in),
                    std::invalid_argument);
    auto it = pool.imap([](int x) { return x == 2 ? throw std::domain_error("two") : x; }, in);
    CHECK(it.next() == 1);
    CHECK_THROWS_AS(it.next(), std::domain_error);
    CHECK(it.next() == 3);
    CHECK(it.next() == 4);
    CHECK_THROWS_AS(it.next(), mp::StopIteration);
}

TEST_CASE("dummy::Pool callbacks run in one result thread, before ready()", "[dummy][pool]") {
    mp::dummy::Pool pool(2);
    std::mutex m;
    std::set<std::thread::id> callback_threads;
    std::vector<int> seen;
    std::vector<mp::AsyncResult<int>> rs;
    for (int i = 0; i < 20; ++i)
        rs.push_back(pool.apply_async([](int x) { return x * 10; }, std::tuple{i},
                                      {.callback = [&](int v) {
                                           std::lock_guard g(m);
                                           callback_threads.insert(std::this_thread::get_id());
                                           seen.push_back(v);
                                       }}));
    for (auto& r : rs) REQUIRE(r.wait(5s));
    std::lock_guard g(m);
    CHECK(seen.size() == 20);
    CHECK(callback_threads.size() == 1);
    CHECK(callback_threads.count(std::this_thread::get_id()) == 0);
}

TEST_CASE("dummy::Pool: initializer per thread, maxtasksperchild replaces threads", "[dummy][pool]") {
    std::atomic<int> initialized{0};
    {
        mp::dummy::Pool pool({.processes = 2, .initializer = [&initialized] { ++initialized; },
                              .maxtasksperchild = 2});
        std::vector<int> in(10, 1);
        CHECK(pool.map([](int x) { return x; }, in, {.chunksize = 1}) == in);
        pool.close();
        pool.join();
    }
    // 10 one-item chunks at 2 per thread: at least 5 threads, each initialized once.
    CHECK(initialized >= 5);
}

TEST_CASE("dummy::Pool misuse: closed pool, join before close, task_timeout, zero threads", "[dummy][pool]") {
    CHECK_THROWS_AS(mp::dummy::Pool(0), mp::ValueError);
    mp::dummy::Pool pool(1);
    CHECK_THROWS_AS(pool.join(), mp::ValueError);
    pool.close();
    CHECK_THROWS_AS(pool.apply_async([] { return 1; }), mp::ValueError);
    pool.join();
    // A thread cannot be killed, so there is no per-task time limit here (API.md's
    // task_timeout is a process pool's). The options do not even have the field:
    // that it is rejected by the core is checked through the core itself.
    mp::detail::CoreOptions core;
    core.threads = true;
    core.task_timeout = std::chrono::seconds(1);
    try {
        mp::detail::PoolCore rejected(std::move(core));
        FAIL("a pool of threads took a task_timeout");
    } catch (const mp::ValueError& e) {
        CHECK_THAT(e.what(), Catch::Contains("task_timeout"));
    }
}

TEST_CASE("dummy::Pool terminate(): queued tasks fail at once, a running one finishes first", "[dummy][pool]") {
    std::atomic<bool> release{false};
    std::atomic<bool> started{false};
    auto pool = std::make_unique<mp::dummy::Pool>(1);
    auto running = pool->apply_async([&] {
        started = true;
        while (!release) std::this_thread::sleep_for(1ms);
        return 1;
    });
    auto queued = pool->apply_async([] { return 2; });
    while (!started) std::this_thread::sleep_for(1ms);
    pool->terminate();
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        release = true;
    });
    pool.reset();  // joins the worker thread, which finishes its task first
    releaser.join();
    CHECK_THROWS_AS(queued.get(1s), mp::ProcessError);
    CHECK_THROWS_AS(running.get(1s), mp::ProcessError);  // terminated before its result was taken
}
