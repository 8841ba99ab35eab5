// Pool fault cases: workers that die (signal, _exit, abort, killed from outside), a pool
// terminated while busy, a parent SIGKILLed with live workers, and resource leaks
// (fds, threads, children, /dev/shm) over many pools.
//
// Python hangs on most of these; API.md asks for WorkerLostError on exactly the
// affected result, a replaced worker, and never a hang. Every wait here has a timeout
// so that a bug fails the test instead of hanging it.
#include <catch2/catch.hpp>
#include <multiprocessing.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../support.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;
using mp_test::get_int;
using mp_test::pid_gone;
using mp_test::Pipe;
using mp_test::put_int;
using mp_test::seconds_since;
using mp_test::wait_gone;

namespace {

// Every pid in `pids` must be gone within `timeout` (each checked on its own).
void check_all_gone(const std::set<pid_t>& pids, std::chrono::milliseconds timeout) {
    for (pid_t w : pids) {
        INFO("worker " << w);
        CHECK(wait_gone(w, timeout));
    }
}

// A failing test must not leave workers behind for the tests after it.
void kill_leftovers(const std::set<pid_t>& pids) {
    for (pid_t w : pids)
        if (!pid_gone(w)) ::kill(w, SIGKILL);
}

std::size_t count_dir(const char* path) {
    std::size_t n = 0;
    DIR* d = ::opendir(path);
    if (!d) return 0;
    while (auto* e = ::readdir(d)) {
        std::string name = e->d_name;
        if (name != "." && name != "..") ++n;
    }
    ::closedir(d);
    return n;
}

std::set<std::string> dir_entries(const char* path) {
    std::set<std::string> out;
    DIR* d = ::opendir(path);
    if (!d) return out;
    while (auto* e = ::readdir(d)) {
        std::string name = e->d_name;
        if (name != "." && name != "..") out.insert(name);
    }
    ::closedir(d);
    return out;
}

// Live (non-zombie) children of this process, from /proc.
std::set<pid_t> live_children() {
    std::set<pid_t> out;
    const pid_t me = ::getpid();
    for (const auto& name : dir_entries("/proc")) {
        if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
        std::ifstream stat("/proc/" + name + "/stat");
        std::string line;
        if (!std::getline(stat, line)) continue;
        auto close_paren = line.rfind(')');
        if (close_paren == std::string::npos) continue;
        std::istringstream rest(line.substr(close_paren + 2));
        char state;
        pid_t ppid;
        if (!(rest >> state >> ppid)) continue;
        if (ppid == me && state != 'Z' && state != 'X') out.insert(std::stoi(name));
    }
    return out;
}

// Requires that `call` throws mp::WorkerLostError naming `pid` and `needle`.
template <class F>
void require_worker_lost(F&& call, pid_t pid, const std::string& needle) {
    auto t0 = std::chrono::steady_clock::now();
    try {
        call();
        FAIL("expected WorkerLostError, nothing was thrown");
    } catch (const mp::WorkerLostError& e) {
        std::string what = e.what();
        INFO("what(): " << what);
        if (pid > 0) CHECK_THAT(what, Catch::Contains(std::to_string(pid)));
        CHECK_THAT(what, Catch::Contains(needle));
    } catch (const mp::TimeoutError& e) {
        FAIL("the result of a dead worker's task never completed: " << e.what());
    } catch (const std::exception& e) {
        FAIL("expected WorkerLostError, got: " << e.what());
    }
    CHECK(seconds_since(t0) < 5.0);
}

// ---------------------------------------------------------------------------------
// Tasks

int sqr(int x) { return x * x; }
pid_t worker_pid() { return ::getpid(); }
int sleep_seconds_then(int secs) {
    std::this_thread::sleep_for(std::chrono::seconds(secs));
    return secs;
}

// Each dying task first reports its pid on `fd`, then dies its own way.
int die_by_signal(int fd, int sig) {
    put_int(fd, ::getpid());
    ::raise(sig);
    std::this_thread::sleep_for(10s);  // not reached for fatal signals
    return 0;
}

int die_by_exit(int fd, int code) {
    put_int(fd, ::getpid());
    ::_exit(code);
}

int die_by_abort(int fd) {
    put_int(fd, ::getpid());
    // abort() may dump core; keep the test quick and the disk clean.
    rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    std::abort();
}

int report_then_sleep(int fd, int secs) {
    put_int(fd, ::getpid());
    std::this_thread::sleep_for(std::chrono::seconds(secs));
    return secs;
}

int sqr_or_die_on_5(int x) {
    if (x == 5) ::raise(SIGKILL);
    return x * x;
}
std::string name_or_die_on_5(int x) {  // a result that is not raw bytes: the other chunk path
    if (x == 5) ::raise(SIGKILL);
    return "n" + std::to_string(x);
}

}  // namespace

// =====================================================================================
// Run first: forks a raw helper while this process has as few threads as possible.

TEST_CASE("A SIGKILLed parent leaves no idle worker behind", "[faults][pool]") {
    Pipe pids;
    pid_t helper = ::fork();
    REQUIRE(helper >= 0);
    if (helper == 0) {
        // The helper: a pool whose workers report their pids, then wait to be killed.
        try {
            int fd = pids.w;
            mp::Pool pool({.processes = 2, .initializer = [fd] { put_int(fd, ::getpid()); }});
            pool.apply(sqr, 2);
            for (;;) ::pause();
        } catch (...) {
        }
        ::_exit(1);
    }
    std::set<pid_t> workers;
    for (int i = 0; i < 2; ++i) {
        auto p = get_int(pids.r);
        if (p) workers.insert(static_cast<pid_t>(*p));
    }
    ::kill(helper, SIGKILL);
    int status = 0;
    ::waitpid(helper, &status, 0);
    REQUIRE(workers.size() == 2);
    check_all_gone(workers, 3000ms);
    kill_leftovers(workers);
}

TEST_CASE("A SIGKILLed parent leaves no busy worker behind", "[faults][pool]") {
    Pipe pids, started;
    pid_t helper = ::fork();
    REQUIRE(helper >= 0);
    if (helper == 0) {
        try {
            int fd = pids.w;
            mp::Pool pool({.processes = 2, .initializer = [fd] { put_int(fd, ::getpid()); }});
            std::vector<mp::AsyncResult<int>> rs;
            for (int i = 0; i < 4; ++i) rs.push_back(pool.apply_async(report_then_sleep, started.w, 30));
            for (;;) ::pause();
        } catch (...) {
        }
        ::_exit(1);
    }
    std::set<pid_t> workers;
    for (int i = 0; i < 2; ++i) {
        auto p = get_int(pids.r);
        if (p) workers.insert(static_cast<pid_t>(*p));
    }
    auto busy = get_int(started.r);  // at least one worker is inside a 30 s task
    std::this_thread::sleep_for(50ms);
    ::kill(helper, SIGKILL);
    int status = 0;
    ::waitpid(helper, &status, 0);
    REQUIRE(workers.size() == 2);
    REQUIRE(busy.has_value());
    CHECK(workers.count(static_cast<pid_t>(*busy)) == 1);
    check_all_gone(workers, 3000ms);
    kill_leftovers(workers);
}

// =====================================================================================
// A worker dies inside a task

TEST_CASE("raise(SIGKILL) in a task fails that task with WorkerLostError", "[faults][pool]") {
    Pipe out;
    mp::Pool pool(2);
    auto before = pool.apply_async(sqr, 3);
    auto r = pool.apply_async(die_by_signal, out.w, SIGKILL);
    auto dead = get_int(out.r);
    REQUIRE(dead.has_value());
    require_worker_lost([&] { r.get(5s); }, static_cast<pid_t>(*dead), "SIGKILL");
    CHECK(r.ready());
    CHECK_FALSE(r.successful());
    CHECK(before.get(5s) == 9);

    // The pool goes on, with a replacement worker.
    std::set<pid_t> seen;
    for (int i = 0; i < 10; ++i) seen.insert(pool.apply_async(worker_pid).get(5s));
    CHECK(seen.count(static_cast<pid_t>(*dead)) == 0);
    CHECK(pool.apply_async(sqr, 7).get(5s) == 49);
}

TEST_CASE("raise(SIGSEGV) in a task fails that task with WorkerLostError", "[faults][pool]") {
    Pipe out;
    mp::Pool pool(2);
    auto r = pool.apply_async(die_by_signal, out.w, SIGSEGV);
    auto dead = get_int(out.r);
    REQUIRE(dead.has_value());
    require_worker_lost([&] { r.get(5s); }, static_cast<pid_t>(*dead), "SIGSEGV");
    auto later = pool.apply_async(worker_pid).get(5s);
    CHECK(later != static_cast<pid_t>(*dead));
    CHECK(pool.apply_async(sqr, 6).get(5s) == 36);
}

TEST_CASE("_exit(3) in a task fails that task with WorkerLostError naming the code",
          "[faults][pool]") {
    Pipe out;
    mp::Pool pool(2);
    auto r = pool.apply_async(die_by_exit, out.w, 3);
    auto dead = get_int(out.r);
    REQUIRE(dead.has_value());
    auto t0 = std::chrono::steady_clock::now();
    try {
        r.get(5s);
        FAIL("expected WorkerLostError");
    } catch (const mp::WorkerLostError& e) {
        std::string what = e.what();
        INFO("what(): " << what);
        auto pid_text = std::to_string(*dead);
        CHECK_THAT(what, Catch::Contains(pid_text));
        // The exit code, somewhere other than inside the pid.
        auto at = what.find(pid_text);
        if (at != std::string::npos) what.erase(at, pid_text.size());
        CHECK_THAT(what, Catch::Contains("3"));
        CHECK_THAT(what, !Catch::Contains("SIG"));
    } catch (const std::exception& e) {
        FAIL("expected WorkerLostError, got: " << e.what());
    }
    CHECK(seconds_since(t0) < 5.0);
    CHECK(pool.apply_async(worker_pid).get(5s) != static_cast<pid_t>(*dead));
}

TEST_CASE("std::abort() in a task fails that task with WorkerLostError", "[faults][pool]") {
    Pipe out;
    mp::Pool pool(2);
    auto r = pool.apply_async(die_by_abort, out.w);
    auto dead = get_int(out.r);
    REQUIRE(dead.has_value());
    require_worker_lost([&] { r.get(5s); }, static_cast<pid_t>(*dead), "SIGABRT");
    CHECK(pool.apply_async(worker_pid).get(5s) != static_cast<pid_t>(*dead));
}

TEST_CASE("Many worker deaths in a row: each fails its own result, the pool goes on",
          "[faults][pool]") {
    Pipe out;
    mp::Pool pool(2);
    std::vector<mp::AsyncResult<int>> dying, fine;
    for (int i = 0; i < 6; ++i) {
        dying.push_back(pool.apply_async(die_by_signal, out.w, SIGKILL));
        fine.push_back(pool.apply_async(sqr, i));
    }
    for (auto& r : dying) CHECK_THROWS_AS(r.get(5s), mp::WorkerLostError);
    for (int i = 0; i < 6; ++i) CHECK(fine[static_cast<std::size_t>(i)].get(5s) == i * i);
    std::vector<int> v(20);
    for (int i = 0; i < 20; ++i) v[static_cast<std::size_t>(i)] = i;
    auto r = pool.map_async(sqr, v);
    auto got = r.get(5s);
    REQUIRE(got.size() == 20);
    CHECK(got[19] == 361);
}

TEST_CASE("Tasks queued behind a dying task still run", "[faults][pool]") {
    Pipe out;
    mp::Pool pool(2);
    auto dying = pool.apply_async(die_by_signal, out.w, SIGKILL);
    std::vector<mp::AsyncResult<int>> rest;
    for (int i = 0; i < 50; ++i) rest.push_back(pool.apply_async(sqr, i));
    CHECK_THROWS_AS(dying.get(5s), mp::WorkerLostError);
    for (int i = 0; i < 50; ++i) REQUIRE(rest[static_cast<std::size_t>(i)].get(5s) == i * i);
}

TEST_CASE("A map chunk whose worker dies fails the map with WorkerLostError",
          "[faults][pool]") {
    mp::Pool pool(2);
    std::vector<int> v(10);
    for (int i = 0; i < 10; ++i) v[static_cast<std::size_t>(i)] = i;
    // The error names the item that was running (issue 16), wherever it sits in its chunk.
    for (std::size_t chunksize : {std::size_t{1}, std::size_t{3}, std::size_t{4}}) {
        INFO("chunksize " << chunksize);
        auto r = pool.map_async(sqr_or_die_on_5, v, {.chunksize = chunksize});
        require_worker_lost([&] { r.get(5s); }, 0, "SIGKILL while running item 5 of the input");
        CHECK_FALSE(r.successful());
        auto named = pool.map_async(name_or_die_on_5, v, {.chunksize = chunksize});
        require_worker_lost([&] { named.get(5s); }, 0, "while running item 5 of the input");
    }
    auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(pool.map(sqr_or_die_on_5, v), mp::WorkerLostError);
    CHECK(seconds_since(t0) < 5.0);
    auto ok = pool.map_async(sqr, v).get(5s);
    CHECK(ok[9] == 81);
}

TEST_CASE("imap: the item whose worker died throws WorkerLostError, the rest come",
          "[faults][pool]") {
    mp::Pool pool(2);
    std::vector<int> v(10);
    for (int i = 0; i < 10; ++i) v[static_cast<std::size_t>(i)] = i;
    auto it = pool.imap(sqr_or_die_on_5, v);
    for (int i = 0; i < 5; ++i) REQUIRE(it.next(5s) == i * i);
    require_worker_lost([&] { it.next(5s); }, 0, "while running item 5 of the input");
    for (int i = 6; i < 10; ++i) REQUIRE(it.next(5s) == i * i);
    CHECK_THROWS_AS(it.next(5s), mp::StopIteration);
}

// =====================================================================================
// Killed from outside

TEST_CASE("A worker SIGKILLed from outside mid-task fails its task", "[faults][pool]") {
    Pipe started;
    mp::Pool pool(1);
    pid_t idle_pid = pool.apply(worker_pid);
    auto r = pool.apply_async(report_then_sleep, started.w, 10);
    auto busy = get_int(started.r);
    REQUIRE(busy.has_value());
    CHECK(*busy == idle_pid);
    REQUIRE(::kill(static_cast<pid_t>(*busy), SIGKILL) == 0);
    require_worker_lost([&] { r.get(5s); }, static_cast<pid_t>(*busy), "SIGKILL");
    pid_t next = pool.apply_async(worker_pid).get(5s);
    CHECK(next != static_cast<pid_t>(*busy));
    CHECK(pool.apply_async(sqr, 5).get(5s) == 25);
}

TEST_CASE("An idle worker SIGKILLed from outside is replaced", "[faults][pool]") {
    mp::Pool pool(1);
    pid_t first = pool.apply(worker_pid);
    REQUIRE(::kill(first, SIGKILL) == 0);
    CHECK(wait_gone(first, 2000ms));
    auto r = pool.apply_async(worker_pid);
    pid_t second = r.get(5s);  // a task is not lost because its worker died idle
    CHECK(second != first);
    CHECK(pool.apply_async(sqr, 4).get(5s) == 16);
}

TEST_CASE("A worker SIGTERMed from outside mid-task fails its task", "[faults][pool]") {
    Pipe started;
    mp::Pool pool(2);
    auto r = pool.apply_async(report_then_sleep, started.w, 10);
    auto busy = get_int(started.r);
    REQUIRE(busy.has_value());
    REQUIRE(::kill(static_cast<pid_t>(*busy), SIGTERM) == 0);
    require_worker_lost([&] { r.get(5s); }, static_cast<pid_t>(*busy), "SIGTERM");
    CHECK(pool.apply_async(sqr, 5).get(5s) == 25);
}

// =====================================================================================
// terminate() on a busy pool

TEST_CASE("terminate() on a busy pool returns quickly and leaves no worker",
          "[faults][pool]") {
    Pipe started;
    std::set<pid_t> workers;
    mp::Pool pool(2);
    int fd = started.w;
    std::vector<int> v(100, 30);
    auto r = pool.map_async([fd](int secs) { return report_then_sleep(fd, secs); }, v,
                            {.chunksize = 1});
    // Both workers are inside a 30 s task.
    for (int i = 0; i < 2; ++i) {
        auto p = get_int(started.r);
        REQUIRE(p.has_value());
        workers.insert(static_cast<pid_t>(*p));
    }
    REQUIRE(workers.size() == 2);

    auto t0 = std::chrono::steady_clock::now();
    pool.terminate();
    CHECK(seconds_since(t0) < 5.0);
    pool.join();
    CHECK(seconds_since(t0) < 5.0);
    check_all_gone(workers, 2000ms);
    t0 = std::chrono::steady_clock::now();
    try {
        r.get(5s);
        FAIL("a terminated map returned a value");
    } catch (const mp::TimeoutError&) {
        FAIL("get() waited for a map that terminate() cancelled");
    } catch (const mp::ProcessError&) {
    }
    CHECK(seconds_since(t0) < 2.0);
    kill_leftovers(workers);
}

TEST_CASE("Destroying a busy pool returns quickly and leaves no worker", "[faults][pool]") {
    Pipe started;
    std::set<pid_t> workers;
    auto t0 = std::chrono::steady_clock::now();
    {
        mp::Pool pool(2);
        for (int i = 0; i < 2; ++i) pool.apply_async(report_then_sleep, started.w, 30);
        for (int i = 0; i < 2; ++i) {
            auto p = get_int(started.r);
            if (p) workers.insert(static_cast<pid_t>(*p));
        }
        t0 = std::chrono::steady_clock::now();
    }
    CHECK(seconds_since(t0) < 5.0);
    REQUIRE_FALSE(workers.empty());
    check_all_gone(workers, 2000ms);
    kill_leftovers(workers);
}

// =====================================================================================
// Leaks

TEST_CASE("1000 pools leak no fd, thread, child or /dev/shm entry", "[faults][pool][leaks]") {
    {  // warm up whatever the library sets up once
        mp::Pool pool(2);
        CHECK(pool.apply(sqr, 2) == 4);
    }
    std::this_thread::sleep_for(50ms);
    const std::size_t fds_before = count_dir("/proc/self/fd");
    const std::size_t threads_before = count_dir("/proc/self/task");
    const auto shm_before = dir_entries("/dev/shm");
    const auto children_before = live_children();

    for (int i = 0; i < 1000; ++i) {
        mp::Pool pool(2);
        REQUIRE(pool.apply(sqr, i) == i * i);
    }
    std::this_thread::sleep_for(100ms);

    CHECK(count_dir("/proc/self/fd") == fds_before);
    CHECK(count_dir("/proc/self/task") == threads_before);
    auto shm_after = dir_entries("/dev/shm");
    std::vector<std::string> new_shm;
    std::set_difference(shm_after.begin(), shm_after.end(), shm_before.begin(), shm_before.end(),
                        std::back_inserter(new_shm));
    INFO("new /dev/shm entries: " << new_shm.size());
    CHECK(new_shm.empty());

    // Children: allow a moment for the last workers to be reaped.
    auto deadline = std::chrono::steady_clock::now() + 2s;
    auto children_after = live_children();
    while (children_after.size() > children_before.size() &&
           std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(20ms);
        children_after = live_children();
    }
    CHECK(children_after.size() <= children_before.size());
}

TEST_CASE("Pools whose workers died leak no fd or /dev/shm entry", "[faults][pool][leaks]") {
    Pipe out;
    {
        mp::Pool pool(2);
        auto r = pool.apply_async(die_by_signal, out.w, SIGKILL);
        CHECK_THROWS_AS(r.get(5s), mp::WorkerLostError);
    }
    std::this_thread::sleep_for(50ms);
    // Drain what the dying tasks wrote.
    while (get_int(out.r, 0ms)) {
    }
    const std::size_t fds_before = count_dir("/proc/self/fd");
    const auto shm_before = dir_entries("/dev/shm");
    for (int i = 0; i < 20; ++i) {
        mp::Pool pool(2);
        auto r = pool.apply_async(die_by_signal, out.w, SIGKILL);
        CHECK_THROWS_AS(r.get(5s), mp::WorkerLostError);
        CHECK(pool.apply_async(sqr, i).get(5s) == i * i);
        while (get_int(out.r, 0ms)) {
        }
    }
    std::this_thread::sleep_for(100ms);
    CHECK(count_dir("/proc/self/fd") == fds_before);
    auto shm_after = dir_entries("/dev/shm");
    CHECK(shm_after.size() <= shm_before.size());
}

TEST_CASE("task_timeout kills a worker whose task overruns, fails it with TimeoutError, replaces it",
          "[faults][pool]") {
    mp::Pool pool({.processes = 1, .task_timeout = 200ms});
    const pid_t before = pool.apply(worker_pid);
    auto slow = pool.apply_async(sleep_seconds_then, 30);
    auto queued = pool.apply_async(sqr, 9);  // behind the slow one, on the same worker
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(slow.get(10s), mp::TimeoutError);
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);  // generous: only catches a hang
    CHECK(queued.get(10s) == 81);
    CHECK(pool.apply(worker_pid) != before);
    CHECK(wait_gone(before, 2000ms));
}
