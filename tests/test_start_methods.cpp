// Start methods and contexts: what differs between fork, spawn and forkserver, and what
// must not. (The Pool tests also run whole under each method: tests/CMakeLists.txt.)
//
// Behaviours from CPython's _TestStartMethod / TestStartMethod (Lib/test/
// _test_multiprocessing.py): set_start_method once, force to change, get_context
// validation, spawned children being fresh programs; plus API.md's: functions travel as
// image offsets (so a function in a shared library works too), a killed parent leaves
// no worker, a main() without freeze_support() fails with a clear error, not a loop.
#include <catch2/catch.hpp>
#include <multiprocessing.hpp>

#include "support.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <unistd.h>

namespace mp = multiprocessing;
using namespace std::chrono_literals;
using mp_test::Pipe;
using mp_test::get_int;
using mp_test::put_int;
using mp_test::wait_gone;

namespace {

// Set by the parent after the program started: a fork child sees it, a spawned child
// (a fresh run of the program) and a fork-server child (forked from a fresh run) do not.
int g_set_after_start = 0;

int read_global() { return g_set_after_start; }
int square(int x) { return x * x; }
std::string worker_name() { return mp::current_process().name(); }
int worker_parent_pid() { return mp::parent_process() ? mp::parent_process()->pid() : -1; }
int worker_pid() { return static_cast<int>(::getpid()); }
void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }
std::string join_words(std::vector<std::string> words, std::string sep) {
    std::string out;
    for (auto& w : words) out += (out.empty() ? "" : sep) + w;
    return out;
}

void exit_with(int code) { std::exit(code); }
void check_args_arrive(std::string s, std::vector<int> v, double d) {
    CHILD_REQUIRE(s == "héllo" && v == std::vector<int>({1, 2, 3}) && d == 2.5);
    CHILD_REQUIRE(mp::parent_process().has_value());
    CHILD_REQUIRE(g_set_after_start == 0);
}
void throw_runtime_error() { throw std::runtime_error("from the child"); }

void put_squares(mp::Queue<int> q, int n) {
    for (int i = 0; i < n; ++i) q.put(i * i);
}
void echo_once(mp::Connection<std::string> end) { end.send(end.recv() + "!"); }
void double_until_negative(mp::JoinableQueue<int> jobs, mp::SimpleQueue<int> out) {
    for (;;) {
        const int v = jobs.get();
        if (v >= 0) out.put(2 * v);
        jobs.task_done();
        if (v < 0) return;
    }
}

// The parent holds `lock` and `rlock` and waits at `barrier` for this child.
void use_sync_objects(mp::Lock lock, mp::RLock rlock, mp::Semaphore sem, mp::BoundedSemaphore bounded,
                      mp::Event done, mp::Condition cond, mp::Barrier barrier) {
    CHILD_REQUIRE(!lock.acquire(false));   // held by the parent: the same lock
    CHILD_REQUIRE(!rlock.acquire(false));
    CHILD_REQUIRE(sem.acquire(false) && sem.acquire(false) && !sem.acquire(false));
    bool threw = false;
    try {
        bounded.release();  // its bound (1) came along
    } catch (const mp::ValueError&) {
        threw = true;
    }
    CHILD_REQUIRE(threw);
    CHILD_REQUIRE(barrier.wait(20s) >= 0);
    {
        std::lock_guard g(cond);
        done.set();
        cond.notify_all();
    }
}

// Writes what the parent then reads.
void use_shared_data(mp::Value<int> counter, mp::Array<double> xs, mp::RawValue<long> raw,
                     mp::shared_memory::SharedMemory shm, mp::shared_memory::ShareableList<int> list,
                     mp::managers::ListProxy<int> proxy) {
    CHILD_REQUIRE(!counter.get_lock().acquire(false));  // the parent holds it, so it is the same lock
    for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = 1.5 * static_cast<double>(i);
    raw.value() = 42;
    shm.buf()[0] = std::byte{7};
    list[1] = 20;
    proxy.append(3);
    std::lock_guard g(counter);  // waits until the parent lets go
    counter.value() += 5;
}

struct Subclass : mp::Process {
    void run() override {}
};

const char* const non_fork_methods[] = {"spawn", "forkserver"};

}  // namespace

TEST_CASE("get_all_start_methods lists fork (the default), spawn and forkserver", "[context]") {
    CHECK(mp::get_all_start_methods() == std::vector<std::string>{"fork", "spawn", "forkserver"});
    for (const auto& m : mp::get_all_start_methods()) CHECK(mp::get_context(m).get_start_method() == m);
    try {
        (void)mp::get_context("vfork");
        FAIL("get_context accepted an unknown method");
    } catch (const mp::ValueError& e) {
        CHECK_THAT(e.what(), Catch::Contains("vfork") && Catch::Contains("fork, spawn, forkserver"));
    }
    CHECK_THROWS_AS(mp::set_start_method("vfork", true), mp::ValueError);
}

TEST_CASE("set_start_method: once, and again only with force (else ProcessError)", "[context]") {
    const std::string before = mp::get_start_method();  // the test parameter, or fork
    CHECK_THROWS_AS(mp::set_start_method("spawn"), mp::ProcessError);
    mp::set_start_method("forkserver", /*force=*/true);
    CHECK(mp::get_start_method() == "forkserver");
    mp::set_start_method(before, /*force=*/true);
    CHECK(mp::get_start_method() == before);
}

TEST_CASE("Pool workers: forks of the parent under fork, fresh programs otherwise", "[context][pool]") {
    g_set_after_start = 7;
    {
        mp::Pool pool({.processes = 1, .context = mp::get_context("fork")});
        CHECK(pool.apply(read_global) == 7);
        CHECK(pool.apply(worker_name).rfind("ForkPoolWorker-", 0) == 0);
    }
    const std::string method = GENERATE(values<std::string>({"spawn", "forkserver"}));
    CAPTURE(method);
    mp::Pool pool({.processes = 2, .context = mp::get_context(method)});
    CHECK(pool.apply(read_global) == 0);
    CHECK(pool.apply(worker_name).rfind(method == "spawn" ? "SpawnPoolWorker-" : "ForkServerPoolWorker-", 0) == 0);
    // The worker's parent is this process, even when the fork server forked it.
    CHECK(pool.apply(worker_parent_pid) == static_cast<int>(::getpid()));
    std::vector<int> in(1000);
    for (int i = 0; i < 1000; ++i) in[i] = i;
    const auto out = pool.map(square, in, {.chunksize = 7});
    REQUIRE(out.size() == 1000);
    for (int i = 0; i < 1000; ++i) REQUIRE(out[i] == i * i);
    CHECK(pool.apply(join_words, std::vector<std::string>{"a", "b", "c"}, std::string("-")) == "a-b-c");
    // A lambda with a trivially copyable capture carries its capture along.
    const int offset = 5;
    CHECK(pool.apply([offset](int x) { return x + offset; }, 10) == 15);
    g_set_after_start = 0;
}

TEST_CASE("A function from a shared library travels too (its offset in libc, not in the program)",
          "[context][pool]") {
    const std::string method = GENERATE(values<std::string>({"fork", "spawn", "forkserver"}));
    CAPTURE(method);
    mp::Pool pool({.processes = 1, .context = mp::get_context(method)});
    int (*libc_abs)(int) = &::abs;
    CHECK(pool.apply(libc_abs, -42) == 42);
}

TEST_CASE("A spawned initializer runs with its initargs, a Queue among them, but a Barrier's action is refused",
          "[context][pool]") {
    const std::string method = GENERATE(values<std::string>({"spawn", "forkserver"}));
    CAPTURE(method);
    {
        mp::Pool pool({.processes = 2,
                       .initializer = {[](int v) { g_set_after_start = v; }, 31},
                       .context = mp::get_context(method)});
        std::vector<int> v(8);
        CHECK(pool.map([](int) { return read_global(); }, v, {.chunksize = 1}) == std::vector<int>(8, 31));
    }
    mp::Queue<int> q;
    {
        // Each worker's initializer reports on a Queue given as an initarg (its fd goes
        // after the pool's segment).
        mp::Pool pool({.processes = 2,
                       .initializer = {[](mp::Queue<int> qq) { qq.put(static_cast<int>(::getpid())); }, q},
                       .context = mp::get_context(method)});
        std::set<int> pids{q.get(20s), q.get(20s)};
        CHECK(pids.size() == 2);
        CHECK_FALSE(pids.count(static_cast<int>(::getpid())));
        CHECK(pids.count(pool.apply(worker_pid)));
    }
    mp::Barrier with_action(2, [] {});  // a handle whose action (code) cannot cross
    try {
        mp::Pool pool({.processes = 1,
                       .initializer = {[](mp::Barrier) {}, with_action},
                       .context = mp::get_context(method)});
        FAIL("a spawned pool took an initializer with a Barrier with an action");
    } catch (const mp::ValueError& e) {
        CHECK_THAT(e.what(), Catch::Contains("action") && Catch::Contains("fork start method"));
    }
}

TEST_CASE("A spawned worker killed mid-task fails its task with WorkerLostError and is replaced",
          "[context][pool]") {
    const std::string method = GENERATE(values<std::string>({"spawn", "forkserver"}));
    CAPTURE(method);
    mp::Pool pool({.processes = 1, .context = mp::get_context(method)});
    const int victim = pool.apply(worker_pid);
    auto r = pool.apply_async(sleep_ms, 30000);
    sleep_ms(100);  // let it start
    REQUIRE(::kill(victim, SIGKILL) == 0);
    try {
        r.get(20s);
        FAIL("the task of a killed worker succeeded");
    } catch (const mp::WorkerLostError& e) {
        CHECK_THAT(e.what(), Catch::Contains(std::to_string(victim)) && Catch::Contains("SIGKILL"));
    }
    const int replacement = pool.apply(worker_pid);
    CHECK(replacement != victim);
    CHECK(pool.apply(square, 9) == 81);
}

TEST_CASE("Processes under spawn and forkserver: arguments, exit codes, names, kill", "[context][process]") {
    const std::string method = GENERATE(values<std::string>({"spawn", "forkserver"}));
    CAPTURE(method);
    auto ctx = mp::get_context(method);

    auto ok = ctx.Process(check_args_arrive, std::string("héllo"), std::vector<int>{1, 2, 3}, 2.5);
    ok.start();
    REQUIRE(ok.join(20s));
    CHECK(ok.exitcode() == 0);

    auto code = ctx.Process(exit_with, 3);
    code.start();
    REQUIRE(code.join(20s));
    CHECK(code.exitcode() == 3);

    auto thrower = ctx.Process(throw_runtime_error);
    thrower.start();
    REQUIRE(thrower.join(20s));
    CHECK(thrower.exitcode() == 1);

    auto sleeper = ctx.Process(sleep_ms, 30000);
    sleeper.start();
    CHECK_FALSE(sleeper.join(50ms));
    CHECK(sleeper.is_alive());
    sleeper.kill();
    REQUIRE(sleeper.join(20s));
    CHECK(sleeper.exitcode() == -SIGKILL);
    CHECK_FALSE(sleeper.is_alive());
}

TEST_CASE("What a spawned Process cannot take is refused at start() with the reason", "[context][process]") {
    const std::string method = GENERATE(values<std::string>({"spawn", "forkserver"}));
    CAPTURE(method);
    mp::set_start_method(method, /*force=*/true);
    struct Restore {
        ~Restore() {
            const char* m = std::getenv("MP_TEST_START_METHOD");
            mp::set_start_method(m && *m ? m : "fork", true);
        }
    } restore;
    Subclass sub;
    try {
        sub.start();
        FAIL("a Process subclass started under " + method);
    } catch (const mp::ValueError& e) {
        CHECK_THAT(e.what(), Catch::Contains("overrides run()") && Catch::Contains(method));
    }
    // (An argument that is neither encodable nor a shared handle does not compile.)
    mp::Barrier with_action(2, [] {});
    mp::Process at_barrier([](mp::Barrier b) { b.wait(); }, with_action);
    try {
        at_barrier.start();
        FAIL("a Process was given a Barrier with an action under " + method);
    } catch (const mp::ValueError& e) {
        CHECK_THAT(e.what(), Catch::Contains("action") && Catch::Contains("fork start method"));
    }
}

TEST_CASE("Queues and Pipe ends pass to spawned and fork-server processes as arguments", "[context][process]") {
    const std::string method = GENERATE(values<std::string>({"spawn", "forkserver"}));
    CAPTURE(method);
    auto ctx = mp::get_context(method);

    mp::Queue<int> q(4);  // bounded: the child waits for room, so both sides use the slots
    auto producer = ctx.Process(put_squares, q, 100);
    producer.start();
    for (int i = 0; i < 100; ++i) REQUIRE(q.get(20s) == i * i);
    REQUIRE(producer.join(20s));
    CHECK(producer.exitcode() == 0);

    auto [mine, theirs] = mp::Pipe<std::string>();
    auto echo = ctx.Process(echo_once, theirs);
    echo.start();
    theirs.close();  // the child holds its own copy of that end now
    mine.send("hello");
    CHECK(mine.recv(20s) == "hello!");
    REQUIRE(echo.join(20s));
    CHECK(echo.exitcode() == 0);
    CHECK_THROWS_AS(mine.recv(5s), mp::EOFError);  // every holder of the other end is gone

    mp::JoinableQueue<int> jobs;
    mp::SimpleQueue<int> doubled;
    auto consumer = ctx.Process(double_until_negative, jobs, doubled);
    consumer.start();
    for (int i = 0; i < 10; ++i) jobs.put(i);
    jobs.put(-1);
    CHECK(jobs.join(20s));  // the child's task_done() calls reach this process's count
    int sum = 0;
    for (int i = 0; i < 10; ++i) sum += doubled.get(20s);
    CHECK(sum == 90);
    REQUIRE(consumer.join(20s));
    CHECK(consumer.exitcode() == 0);
}

TEST_CASE("A parent with 4 threads hammering malloc and a mutex creates and uses 50 pools in a row",
          "[context][pool]") {
#if defined(__SANITIZE_THREAD__)
    // TSan's own runtime can be left locked in a child forked while other threads run
    // (see .ci/run): under TSan only the fork server, whose forks are single-threaded.
    const std::string method = GENERATE(values<std::string>({"forkserver"}));
#else
    const std::string method = GENERATE(values<std::string>({"fork", "forkserver"}));
#endif
    CAPTURE(method);
    std::atomic<bool> stop{false};
    std::mutex shared;
    std::vector<std::thread> hammers;
    for (int t = 0; t < 4; ++t)
        hammers.emplace_back([&] {
            std::size_t n = 0;
            while (!stop.load(std::memory_order_relaxed)) {
                std::lock_guard lock(shared);
                auto block = std::make_unique<std::vector<char>>(64 + (++n % 4096));
                (*block)[0] = 1;
            }
        });
    struct Stop {
        std::atomic<bool>& stop;
        std::vector<std::thread>& threads;
        ~Stop() {
            stop = true;
            for (auto& t : threads) t.join();
        }
    } stopper{stop, hammers};
    const std::vector<int> in{1, 2, 3, 4, 5, 6, 7, 8};
    const std::vector<int> expected{1, 4, 9, 16, 25, 36, 49, 64};
    for (int i = 0; i < 50; ++i) {
        mp::Pool pool({.processes = 2, .context = mp::get_context(method)});
        REQUIRE(pool.map(square, in, {.chunksize = 1}) == expected);
    }
}

TEST_CASE("A SIGKILLed parent leaves no spawned or fork-server worker behind", "[context][pool]") {
    const std::string method = GENERATE(values<std::string>({"spawn", "forkserver"}));
    CAPTURE(method);
    Pipe report;
    // The parent that gets killed: a fork child of this test, which starts a pool, says
    // who its workers are, and waits to be killed.
    auto parent = mp::get_context("fork").Process(
        [](int fd, bool forkserver) {
            mp::Pool pool({.processes = 2, .context = mp::get_context(forkserver ? "forkserver" : "spawn")});
            for (int i = 0; i < 8; ++i) pool.apply(square, i);  // both workers are up
            for (pid_t pid : pool.worker_pids()) put_int(fd, pid);
            sleep_ms(60000);
        },
        report.w, method == "forkserver");
    parent.start();
    mp_test::Reaper reaper{parent};
    std::vector<pid_t> workers;
    for (int i = 0; i < 2; ++i) {
        auto pid = get_int(report.r, 30s);
        REQUIRE(pid);
        workers.push_back(static_cast<pid_t>(*pid));
    }
    parent.kill();
    REQUIRE(parent.join(10s));
    for (pid_t w : workers) CHECK(wait_gone(w, 10s));
}

TEST_CASE("A program whose main() lacks freeze_support() gets a clear error, not a loop of workers",
          "[context][pool]") {
    // tests/helpers/no_freeze_support.cpp; the pool in the real parent gives up with a
    // message naming freeze_support (the helper prints PARENT-OK when it saw that message).
    const auto run = [](const char* program) {
        std::FILE* out = ::popen(("timeout 60 " + std::string(program) + " 2>&1").c_str(), "r");
        REQUIRE(out);
        std::string text;
        char buf[512];
        while (std::fgets(buf, sizeof buf, out)) text += buf;
        const int status = ::pclose(out);
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 0);
        return text;
    };
    SECTION("never called: the spawned workers stop before main() runs again") {
        const std::string text = run(MP_TEST_NO_FREEZE_SUPPORT);
        INFO(text);
        CHECK_THAT(text, Catch::Contains("PARENT-OK"));
        CHECK_THAT(text, Catch::Contains("never calls mp::freeze_support()"));
        CHECK_THAT(text, !Catch::Contains("CHILD:"));  // no worker ran main()
    }
    SECTION("called too late: the workers' own Pool refuses, saying so") {
        const std::string text = run(MP_TEST_LATE_FREEZE_SUPPORT);
        INFO(text);
        CHECK_THAT(text, Catch::Contains("PARENT-OK"));
        CHECK_THAT(text, Catch::Contains("CHILD:") && Catch::Contains("freeze_support"));
    }
}

TEST_CASE("A Context makes the shared objects too, as Python's context does", "[context]") {
    auto ctx = mp::get_context("forkserver");
    auto q = ctx.Queue<int>(2);
    q.put(1);
    q.put(2);
    CHECK_THROWS_AS(q.put_nowait(3), mp::Full);
    CHECK(q.get() == 1);
    auto jq = ctx.JoinableQueue<std::string>();
    jq.put("x");
    CHECK(jq.get() == "x");
    jq.task_done();
    auto sq = ctx.SimpleQueue<int>();
    CHECK(sq.empty());
    auto [a, b] = ctx.Pipe<int>();
    a.send(7);
    CHECK(b.recv() == 7);
    auto lock = ctx.Lock();
    CHECK(lock.acquire(false));
    CHECK_FALSE(lock.acquire(false));
    lock.release();
    auto sem = ctx.BoundedSemaphore(1);
    CHECK(sem.acquire(false));
    sem.release();
    CHECK_THROWS_AS(sem.release(), mp::ValueError);
    auto ev = ctx.Event();
    ev.set();
    CHECK(ev.is_set());
    auto bar = ctx.Barrier(1);
    CHECK(bar.wait() == 0);
    auto v = ctx.Value<double>(1.5);
    CHECK(v.value() == 1.5);
    auto arr = ctx.Array<int>(std::vector<int>{1, 2, 3});
    CHECK(arr.size() == 3);
    CHECK(arr[2] == 3);
    (void)ctx.RLock();
    (void)ctx.Condition();
    (void)ctx.Semaphore(2);
}

TEST_CASE("Locks, semaphores, events, conditions and barriers pass to spawned and fork-server processes",
          "[context][process]") {
    const std::string method = GENERATE(values<std::string>({"spawn", "forkserver"}));
    CAPTURE(method);
    auto ctx = mp::get_context(method);
    mp::Lock lock;
    mp::RLock rlock;
    mp::Semaphore sem(2);
    mp::BoundedSemaphore bounded(1);
    mp::Event done;
    mp::Condition cond(mp::Lock{});
    mp::Barrier barrier(2, {}, 20s);
    REQUIRE(lock.acquire(false));
    REQUIRE(rlock.acquire(false));

    auto child = ctx.Process(use_sync_objects, lock, rlock, sem, bounded, done, cond, barrier);
    child.start();
    CHECK(barrier.wait() >= 0);  // met by the child: the same barrier
    {
        std::unique_lock g(cond);
        CHECK(cond.wait_for([&] { return done.is_set(); }, 20s));
    }
    REQUIRE(child.join(20s));
    CHECK(child.exitcode() == 0);
    CHECK(sem.get_value() == 0);  // the child took both units
    lock.release();
    rlock.release();
}

TEST_CASE("Value, Array, SharedMemory, ShareableList and manager proxies pass to spawned and fork-server "
          "processes",
          "[context][process]") {
    const std::string method = GENERATE(values<std::string>({"spawn", "forkserver"}));
    CAPTURE(method);
    auto ctx = mp::get_context(method);
    mp::Value<int> counter(10);
    mp::Array<double> xs(4);
    mp::RawValue<long> raw(0);
    mp::shared_memory::SharedMemory shm(std::nullopt, true, 64);
    mp::shared_memory::ShareableList<int> list(std::vector<int>{1, 2, 3});
    auto manager = mp::Manager();
    auto proxy = manager.list<int>(std::vector<int>{1, 2});

    counter.acquire();
    auto child = ctx.Process(use_shared_data, counter, xs, raw, shm, list, proxy);
    child.start();
    // The child's last step waits for this lock; all else it wrote before that.
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (proxy.size() < 3 && std::chrono::steady_clock::now() < until) sleep_ms(5);
    CHECK(child.is_alive());
    counter.release();
    REQUIRE(child.join(20s));
    CHECK(child.exitcode() == 0);
    CHECK(counter.value() == 15);
    CHECK(std::vector<double>(xs.begin(), xs.end()) == std::vector<double>{0, 1.5, 3, 4.5});
    CHECK(raw.value() == 42);
    CHECK(shm.buf()[0] == std::byte{7});
    CHECK(list[1] == 20);
    CHECK(proxy.get() == std::vector<int>{1, 2, 3});
    shm.unlink();
    list.shm().unlink();
}

namespace {
struct Tally {
    long n = 0;
    virtual ~Tally() = default;
    long add(long k) { return n += k; }
    virtual long twice() { return n *= 2; }
};
}  // namespace

TEST_CASE("A manager's server starts by spawn and forkserver too, repeating the registrations",
          "[context][manager]") {
    const std::string method = GENERATE(values<std::string>({"spawn", "forkserver"}));
    CAPTURE(method);
    auto ctx = mp::get_context(method);
    g_set_after_start = 17;  // a fork of this process would see it; a fresh server does not
    struct Reset {
        ~Reset() { g_set_after_start = 0; }
    } reset;

    {
        auto manager = ctx.Manager();
        auto numbers = manager.list<int>({1, 2});
        numbers.append(3);
        CHECK(numbers.get() == std::vector<int>{1, 2, 3});
        auto words = manager.dict<std::string, int>({{"a", 1}});
        words.set("b", 2);
        CHECK(words.size() == 2);
        REQUIRE(manager.server_pid().has_value());
        CHECK(*manager.server_pid() != ::getpid());
    }

    mp::BaseManager base({.context = ctx});
    base.register_("read_global", read_global);
    base.register_("square", [](int x) { return x * x; });
    base.register_("shared_queue", []() -> mp::Queue<int>& {
        static mp::Queue<int> q;
        return q;
    });
    base.start();
    CHECK(base.call<int()>("read_global") == 0);  // the server is a fresh program
    CHECK(base.call<int(int)>("square", 12) == 144);
    auto q = base.get<mp::Queue<int>>("shared_queue");
    q.put(5);
    CHECK(base.get<mp::Queue<int>>("shared_queue").get() == 5);
    base.shutdown();

    // A class of the user's, its methods exposed as member function pointers (one
    // virtual) and a lambda: made again in the fresh server.
    mp::BaseManager with_class({.context = ctx});
    with_class.register_("Tally", [] { return Tally{}; },
                         mp::managers::exposed<Tally>(mp::managers::method("add", &Tally::add),
                                                      mp::managers::method("twice", &Tally::twice),
                                                      mp::managers::method("get", [](Tally& t) { return t.n; })));
    with_class.start();
    auto tally = with_class.get<Tally>("Tally");
    CHECK(tally.call<long>("add", 5L) == 5);
    CHECK(tally.call<long>("twice") == 10);
    CHECK(tally.call<long>("get") == 10);
    with_class.shutdown();

    // A callable holding heap memory cannot be repeated in a fresh process: refused at
    // start(), with the way out.
    mp::BaseManager with_state({.context = ctx});
    with_state.register_("greeting", [s = std::string("hi")] { return s; });
    try {
        with_state.start();
        FAIL("a manager with a std::string-capturing callable started under " + method);
    } catch (const mp::ValueError& e) {
        CHECK_THAT(e.what(), Catch::Contains("'greeting'") && Catch::Contains("get_context(\"fork\")"));
    }
}
