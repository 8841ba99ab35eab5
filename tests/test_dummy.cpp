// dummy.hpp: Python's multiprocessing.dummy, the library's API on threads of this process.
//
// Catch2 2.x is not thread-safe, so no REQUIRE or CHECK ever runs on a dummy thread:
// threads record what they saw (atomics, queues, plain variables read after join()), and
// the test thread checks it. Timed waits are checked to end and to last roughly their
// timeout, with generous bounds (sanitizers, busy CI); never tightly.
#include <catch2/catch.hpp>
#include <multiprocessing.hpp>

#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support.hpp"

namespace mp = multiprocessing;
namespace dummy = multiprocessing::dummy;
using namespace std::chrono_literals;
using mp_test::seconds_since;
using mp_test::StderrCapture;
using mp_test::throws_as;

namespace {

using Clock = std::chrono::steady_clock;

constexpr double quick = 1.0;  // "returned at once", generously
constexpr double slack = 5.0;  // how late a timed wait may end, generously

bool fd_readable(int fd, int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

int dummy_number(const std::string& name) {
    const std::string prefix = "Dummy-";
    REQUIRE(name.rfind(prefix, 0) == 0);
    return std::stoi(name.substr(prefix.size()));
}

// Waits (boundedly) until no thread that an earlier test started from this thread is
// still in its last steps, so that active_children() shows only this test's.
void settle_children() {
    for (int i = 0; i < 5000 && !dummy::active_children().empty(); ++i) std::this_thread::sleep_for(1ms);
    REQUIRE(dummy::active_children().empty());
}

// Sets the event when the scope ends, so that a failing test does not leave a thread
// blocked for ever (the exit hook would then wait for it). Threads that wait on such an
// event hold their own copy of the handle: they may still be waking up when the test's
// scope (and its copy) is gone.
struct SetOnExit {
    dummy::Event& ev;
    ~SetOnExit() { ev.set(); }
};

}  // namespace

// ---------------------------------------------------------------------------------
// Process

TEST_CASE("dummy::Process: a lambda capturing by reference runs on a thread and changes the caller's data",
          "[dummy][process]") {
    std::vector<int> seen;
    std::string text = "start";
    dummy::Process p([&](int a, const std::string& b) {
        seen.push_back(a);
        text += b;
    }, 7, std::string("+tail"));
    CHECK_FALSE(p.is_alive());
    CHECK_FALSE(p.exitcode().has_value());
    CHECK_FALSE(p.pid().has_value());
    CHECK_FALSE(p.native_id().has_value());
    p.start();
    CHECK(p.pid() == ::getpid());  // every dummy process runs in this process
    REQUIRE(p.native_id().has_value());
    CHECK(*p.native_id() != ::getpid());  // ... on a thread of its own
    p.join();
    CHECK_FALSE(p.is_alive());
    CHECK(p.exitcode() == 0);
    CHECK(seen == std::vector<int>{7});
    CHECK(text == "start+tail");
}

TEST_CASE("dummy::Process: move-only targets and arguments, std::ref and lvalue-reference parameters",
          "[dummy][process]") {
    int out = 0;
    auto owned = std::make_unique<int>(40);
    dummy::Process p([own = std::move(owned), &out](std::unique_ptr<int> extra) { out = *own + *extra; },
                     std::make_unique<int>(2));
    p.start();
    p.join();
    CHECK(out == 42);

    int counter = 1;
    dummy::Process by_ref([](int& c) { c *= 10; }, std::ref(counter));
    by_ref.start();
    by_ref.join();
    CHECK(counter == 10);

    // An int& parameter without std::ref gets the stored copy (as mp::Process's child does).
    int untouched = 5;
    dummy::Process by_copy([](int& c) { c = 99; }, untouched);
    by_copy.start();
    by_copy.join();
    CHECK(untouched == 5);

    // A plain function and a member function pointer.
    struct Acc {
        int total = 0;
        void add(int n) { total += n; }
    } acc;
    dummy::Process member(&Acc::add, &acc, 3);
    member.start();
    member.join();
    CHECK(acc.total == 3);
}

TEST_CASE("dummy::Process: default names are Dummy-N, increasing, set_name and daemon", "[dummy][process]") {
    dummy::Process a([] {});
    dummy::Process b([] {});
    const int na = dummy_number(a.name());
    const int nb = dummy_number(b.name());
    CHECK(nb > na);
    CHECK_FALSE(a.daemon());  // the main thread is not a daemon, and a child inherits that
    a.set_name("worker");
    CHECK(a.name() == "worker");
    a.set_daemon(true);
    CHECK(a.daemon());
    a.start();
    CHECK(throws_as<mp::ValueError>([&] { a.set_daemon(false); }));
    a.join();
    CHECK(a.name() == "worker");
}

TEST_CASE("dummy::Process: misuse throws ValueError (start twice, join/sentinel before start, self-join)",
          "[dummy][process]") {
    dummy::Process p([] {});
    CHECK(throws_as<mp::ValueError>([&] { p.join(); }));
    CHECK(throws_as<mp::ValueError>([&] { p.join(1s); }));
    CHECK(throws_as<mp::ValueError>([&] { (void)p.sentinel(); }));
    CHECK(throws_as<mp::ValueError>([&] { p.terminate(); }));
    p.start();
    CHECK(throws_as<mp::ValueError>([&] { p.start(); }));
    p.join();
    CHECK(throws_as<mp::ValueError>([&] { p.start(); }));

    // join() from the process's own thread (Python: RuntimeError, "cannot join current thread").
    std::atomic<int> outcome{0};  // 1: ValueError, 2: something else
    std::unique_ptr<dummy::Process> self_joiner;
    dummy::Event go;
    self_joiner = std::make_unique<dummy::Process>([&] {
        go.wait();
        try {
            self_joiner->join();
        } catch (const mp::ValueError&) {
            outcome = 1;
            return;
        } catch (...) {
        }
        outcome = 2;
    });
    self_joiner->start();
    go.set();
    REQUIRE(self_joiner->join(20s));
    CHECK(outcome == 1);
}

TEST_CASE("dummy::Process: join(timeout) is false while the thread runs, then true", "[dummy][process][timeout]") {
    dummy::Event release;
    SetOnExit guard{release};
    dummy::Process p([release]() mutable { release.wait(); });
    p.start();
    const auto t0 = Clock::now();
    CHECK_FALSE(p.join(0.2s));
    const double waited = seconds_since(t0);
    CHECK(waited >= 0.15);
    CHECK(waited < slack);
    CHECK(p.is_alive());
    CHECK_FALSE(p.exitcode().has_value());
    CHECK_FALSE(p.join(0s));  // a zero timeout only polls
    release.set();
    REQUIRE(p.join(20s));
    CHECK_FALSE(p.is_alive());
    CHECK(p.exitcode() == 0);
    CHECK(p.join(0s));  // joining again is fine
}

TEST_CASE("dummy::Process: an exception escaping the target is printed as 'Process <name>:' and exitcode is 0",
          "[dummy][process]") {
    dummy::Process p([] { throw std::runtime_error("boom from a thread"); });
    const std::string name = p.name();
    StderrCapture capture;
    p.start();
    p.join();
    const std::string err = capture.stop();
    INFO("stderr: " << err);
    CHECK(err.find("Process " + name + ":\n") != std::string::npos);
    CHECK(err.find("std::runtime_error: boom from a thread") != std::string::npos);
    CHECK(p.exitcode() == 0);  // as Python's DummyProcess
    CHECK_FALSE(p.is_alive());
}

TEST_CASE("dummy::Process: terminate() and kill() cannot stop a running thread", "[dummy][process]") {
    dummy::Event release;
    SetOnExit guard{release};
    dummy::Process p([release]() mutable { release.wait(); });
    p.start();
    try {
        p.terminate();
        FAIL("terminate() on a running thread did not throw");
    } catch (const mp::ValueError& e) {
        CHECK(std::string(e.what()).find("cannot be stopped") != std::string::npos);
    }
    CHECK(throws_as<mp::ValueError>([&] { p.kill(); }));
    CHECK(p.is_alive());
    release.set();
    p.join();
    // On a finished one they do nothing, as on a process that has exited.
    p.terminate();
    p.kill();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("dummy::Process: close() refuses a running thread, and makes later use throw", "[dummy][process]") {
    dummy::Event release;
    SetOnExit guard{release};
    dummy::Process p([release]() mutable { release.wait(); });
    p.start();
    CHECK(throws_as<mp::ValueError>([&] { p.close(); }));
    release.set();
    // close() on a finished (not yet joined) thread reaps it.
    while (p.is_alive()) std::this_thread::sleep_for(1ms);
    p.close();
    p.close();  // again: nothing
    CHECK(throws_as<mp::ValueError>([&] { (void)p.is_alive(); }));
    CHECK(throws_as<mp::ValueError>([&] { (void)p.exitcode(); }));
    CHECK(throws_as<mp::ValueError>([&] { p.join(); }));
    CHECK(throws_as<mp::ValueError>([&] { p.start(); }));
    CHECK(throws_as<mp::ValueError>([&] { (void)p.sentinel(); }));
    CHECK(dummy_number(p.name()) > 0);  // the name stays readable, as mp::Process's
}

TEST_CASE("dummy::Process: sentinel() becomes readable when the thread finishes", "[dummy][process]") {
    dummy::Event release;
    SetOnExit guard{release};
    dummy::Process p([release]() mutable { release.wait(); });
    p.start();
    const int fd = p.sentinel();
    CHECK(fd >= 0);
    CHECK_FALSE(fd_readable(fd, 50));
    release.set();
    CHECK(fd_readable(fd, 20000));
    CHECK(p.exitcode() == 0);  // readable means finished
    p.join();
    CHECK(fd_readable(fd, 0));  // and it stays so

    // It works with mp::connection::wait, as a process's does.
    dummy::Process q([] {});
    q.start();
    auto ready = mp::connection::wait(std::vector<int>{q.sentinel()}, 20s);
    CHECK(ready.size() == 1);
    q.join();
}

namespace {

struct Worker : dummy::Process {
    explicit Worker(std::vector<std::string>& out) : out_(out) {}
    void run() override {
        out_.push_back(dummy::current_process().name());
        out_.push_back(dummy::current_process().daemon() ? "daemon" : "not daemon");
    }
    std::vector<std::string>& out_;
};

}  // namespace

TEST_CASE("dummy::Process: a subclass overriding run(), and current_process() inside it", "[dummy][process]") {
    std::vector<std::string> out;
    Worker w(out);
    w.set_name("the-worker");
    w.set_daemon(true);
    w.start();
    w.join();
    CHECK(out == std::vector<std::string>{"the-worker", "daemon"});
    CHECK(w.exitcode() == 0);
}

TEST_CASE("dummy::Process: a handle may be destroyed or moved while its thread runs", "[dummy][process]") {
    dummy::Queue<int> results;
    dummy::Event release;
    SetOnExit guard{release};
    {
        dummy::Process p([release, results](int n) mutable {
            release.wait();
            results.put(n * 2);
        }, 21);
        p.start();
    }  // the handle is gone; the thread goes on
    std::vector<dummy::Process> many;
    for (int i = 0; i < 8; ++i) {  // the vector reallocates: started handles move
        many.emplace_back([results](int n) mutable { results.put(n); }, 100 + i);
        many.back().start();
    }
    release.set();
    for (auto& p : many) p.join();
    std::multiset<int> got;
    for (int i = 0; i < 9; ++i) got.insert(results.get(20s));
    CHECK(got.count(42) == 1);
    for (int i = 0; i < 8; ++i) CHECK(got.count(100 + i) == 1);
}

TEST_CASE("dummy::current_process(): MainThread in the main thread, Thread-<tid> in a foreign thread",
          "[dummy][process]") {
    const auto me = dummy::current_process();
    CHECK(me.name() == "MainThread");
    CHECK(me.pid() == ::getpid());
    CHECK_FALSE(me.daemon());

    mp::ProcessInfo foreign;
    std::optional<bool> child_daemon;
    std::thread t([&] {
        foreign = dummy::current_process();
        dummy::Process inner([] {});
        child_daemon = inner.daemon();  // a foreign thread is a daemon, as in Python
    });
    t.join();
    CHECK(foreign.name().rfind("Thread-", 0) == 0);
    CHECK(foreign.name() != "Thread-" + std::to_string(::getpid()));
    CHECK(foreign.pid() == ::getpid());
    CHECK(foreign.daemon());
    CHECK(child_daemon == true);
}

TEST_CASE("dummy::active_children(): the live processes the calling thread started", "[dummy][process]") {
    settle_children();
    dummy::Event release;
    SetOnExit guard{release};
    dummy::Queue<std::vector<std::string>> inner_view;
    dummy::Process a([release]() mutable { release.wait(); });
    dummy::Process b([release, inner_view]() mutable {
        // b starts c: c is b's child, not the main thread's.
        dummy::Process c([release]() mutable { release.wait(); });
        c.set_name("grandchild");
        c.start();
        std::vector<std::string> names;
        for (const auto& info : dummy::active_children()) names.push_back(info.name());
        inner_view.put(names);
        c.join();
    });
    a.set_name("child-a");
    b.set_name("child-b");
    a.start();
    b.start();
    const auto view = inner_view.get(20s);
    CHECK(view == std::vector<std::string>{"grandchild"});

    std::set<std::string> names;
    for (const auto& info : dummy::active_children()) {
        names.insert(info.name());
        CHECK(info.pid() == ::getpid());
    }
    CHECK(names == std::set<std::string>{"child-a", "child-b"});

    release.set();
    a.join();
    REQUIRE(b.join(20s));
    CHECK(dummy::active_children().empty());

    // A finished child whose handle is gone is reaped by active_children().
    dummy::Event done;
    {
        dummy::Process d([&] { done.set(); });
        d.start();
    }
    done.wait();
    for (int i = 0; i < 2000 && !dummy::active_children().empty(); ++i) std::this_thread::sleep_for(1ms);
    CHECK(dummy::active_children().empty());
}

TEST_CASE("dummy: the exit hook joins non-daemon threads and leaves daemon ones", "[dummy][process]") {
    std::atomic<bool> finished{false};
    dummy::Event release_daemon;
    SetOnExit guard{release_daemon};
    {
        dummy::Process slow([&] {
            std::this_thread::sleep_for(100ms);
            finished = true;
        });
        slow.start();
        dummy::Process forever([release_daemon]() mutable { release_daemon.wait(); });
        forever.set_daemon(true);
        forever.start();
    }  // both handles dropped, as at the end of a script
    // What runs at exit (Python's threading._shutdown): must return although the daemon runs.
    auto outcome = mp_test::run_within(20000ms, [] { mp::detail::join_dummy_threads_at_exit(); });
    REQUIRE(outcome.has_value());
    CHECK(finished);
    release_daemon.set();
}

TEST_CASE("dummy: a forked child joins its non-daemon dummy threads at exit, not its daemon ones",
          "[dummy][process][fork]") {
#if defined(__SANITIZE_THREAD__)
    WARN("skipped under ThreadSanitizer: it does not support threads started after fork in a threaded program");
    return;
#endif
    mp_test::Pipe report;
    // The child's target returns at once; exit_child() must wait for the non-daemon thread,
    // which reports after 200 ms, and must not wait for the daemon one, blocked for ever.
    // fork: the child inherits the pipe (it is O_CLOEXEC, so a spawned child would not).
    mp::Process child = mp::get_context("fork").Process(
        [](int fd) {
            dummy::Process nondaemon([](int f) {
                std::this_thread::sleep_for(200ms);
                mp_test::put_int(f, 42);
            }, fd);
            nondaemon.start();
            dummy::Event never;
            dummy::Process daemon([never]() mutable { never.wait(); });
            daemon.set_daemon(true);
            daemon.start();
        },
        report.w);
    child.start();
    REQUIRE(child.join(20s));
    CHECK(child.exitcode() == 0);
    CHECK(mp_test::get_int(report.r, 1000ms) == 42);
}

namespace {

struct Blocked : dummy::Process {
    explicit Blocked(dummy::Event ev) : ev_(std::move(ev)) {}
    void run() override { ev_.wait(); }
    dummy::Event ev_;
};

}  // namespace

TEST_CASE("dummy::Process: destroying a derived object while its thread runs run() on it ends the program, "
          "saying why",
          "[dummy][process][fork]") {
#if defined(__SANITIZE_THREAD__)
    WARN("skipped under ThreadSanitizer: it does not support threads started after fork in a threaded program");
    return;
#endif
    StderrCapture capture;  // the forked child writes to the same file
    auto child = mp::get_context("fork").Process([] {
        dummy::Event never;
        {
            Blocked doomed(never);
            doomed.set_name("doomed");
            doomed.start();
        }  // as std::thread's destructor would, this calls std::terminate
        std::_Exit(3);
    });
    child.start();
    REQUIRE(child.join(20s));
    const std::string err = capture.stop();
    INFO("stderr: " << err);
    CHECK(child.exitcode() == -SIGABRT);
    CHECK(err.find("doomed") != std::string::npos);
    CHECK(err.find("join() it first") != std::string::npos);
}

// ---------------------------------------------------------------------------------
// Queues

TEST_CASE("dummy::Queue: FIFO, copies are handles to the same queue, qsize/empty/full", "[dummy][queue]") {
    dummy::Queue<std::string> q(3);
    auto copy = q;
    CHECK(q.empty());
    CHECK_FALSE(q.full());
    q.put("a");
    copy.put(std::string("b"));
    q.put_nowait("c");
    CHECK(q.qsize() == 3);
    CHECK(copy.full());
    CHECK(copy.get() == "a");
    CHECK(q.get_nowait() == "b");
    CHECK(q.get(true, 1s) == "c");
    CHECK(copy.empty());
}

TEST_CASE("dummy::Queue: std::unique_ptr items cross threads, moved and never copied", "[dummy][queue]") {
    dummy::Queue<std::unique_ptr<int>> q;
    dummy::Queue<std::unique_ptr<int>> back;
    dummy::Process doubler([q, back]() mutable {
        for (;;) {
            auto item = q.get();
            if (!item) return;
            *item *= 2;
            back.put(std::move(item));
        }
    });
    doubler.start();
    for (int i = 1; i <= 100; ++i) q.put(std::make_unique<int>(i));
    q.put(nullptr);
    long sum = 0;
    for (int i = 1; i <= 100; ++i) sum += *back.get(20s);
    doubler.join();
    CHECK(sum == 2 * 5050);

    // An rvalue refused with Full is still the caller's.
    dummy::Queue<std::unique_ptr<int>> one(1);
    one.put(std::make_unique<int>(1));
    auto keep = std::make_unique<int>(2);
    CHECK(throws_as<mp::Full>([&] { one.put_nowait(std::move(keep)); }));
    REQUIRE(keep);
    CHECK(*keep == 2);
}

TEST_CASE("dummy::Queue: Full and Empty, with and without timeouts", "[dummy][queue][timeout]") {
    dummy::Queue<int> q(1);
    CHECK(throws_as<mp::Empty>([&] { q.get_nowait(); }));
    CHECK(throws_as<mp::Empty>([&] { q.get(false); }));
    auto t0 = Clock::now();
    CHECK(throws_as<mp::Empty>([&] { q.get(0.2s); }));
    double waited = seconds_since(t0);
    CHECK(waited >= 0.15);
    CHECK(waited < slack);

    q.put(1);
    CHECK(throws_as<mp::Full>([&] { q.put_nowait(2); }));
    CHECK(throws_as<mp::Full>([&] { q.put(2, false); }));
    t0 = Clock::now();
    CHECK(throws_as<mp::Full>([&] { q.put(2, 0.2s); }));
    waited = seconds_since(t0);
    CHECK(waited >= 0.15);
    CHECK(waited < slack);
    // Python's put(obj, False, timeout) ignores the timeout.
    t0 = Clock::now();
    CHECK(throws_as<mp::Full>([&] { q.put(2, false, 3s); }));
    CHECK(seconds_since(t0) < quick);
    t0 = Clock::now();
    CHECK(q.get(false, 3s) == 1);
    CHECK(throws_as<mp::Empty>([&] { q.get(false, 3s); }));
    CHECK(seconds_since(t0) < quick);
    CHECK(q.qsize() == 0);
}

TEST_CASE("dummy::Queue: a blocked put() and a blocked get() are woken by the other side", "[dummy][queue]") {
    dummy::Queue<int> q(1);
    q.put(0);
    std::atomic<bool> put_done{false};
    dummy::Process producer([&, q]() mutable {
        q.put(1);  // blocks until the main thread gets the 0
        put_done = true;
    });
    producer.start();
    std::this_thread::sleep_for(50ms);
    CHECK(q.get(20s) == 0);
    CHECK(q.get(20s) == 1);
    producer.join();
    CHECK(put_done);

    dummy::Queue<int> empty_q;
    dummy::Process late([empty_q]() mutable {
        std::this_thread::sleep_for(50ms);
        empty_q.put(7);
    });
    late.start();
    CHECK(empty_q.get(20s) == 7);
    late.join();
}

TEST_CASE("dummy::Queue: 4 producers and 3 consumers lose and duplicate nothing", "[dummy][queue]") {
    dummy::Queue<int> q(16);
    dummy::Queue<long> sums;
    constexpr int producers = 4, per_producer = 2000, consumers = 3;
    std::vector<dummy::Process> threads;
    for (int p = 0; p < producers; ++p)
        threads.emplace_back([q, p]() mutable {
            for (int i = 0; i < per_producer; ++i) q.put(p * per_producer + i + 1);
        });
    for (int c = 0; c < consumers; ++c)
        threads.emplace_back([q, sums]() mutable {
            long sum = 0;
            for (int v; (v = q.get()) != 0;) sum += v;
            sums.put(sum);
        });
    for (auto& t : threads) t.start();
    for (int p = 0; p < producers; ++p) threads[static_cast<std::size_t>(p)].join();
    for (int c = 0; c < consumers; ++c) q.put(0);
    long total = 0;
    for (int c = 0; c < consumers; ++c) total += sums.get(20s);
    for (auto& t : threads) t.join();
    const long n = producers * per_producer;
    CHECK(total == n * (n + 1) / 2);
}

TEST_CASE("dummy::Queue: close() closes that handle only, join_thread() wants close() first", "[dummy][queue]") {
    dummy::Queue<int> q;
    auto other = q;
    q.put(1);
    q.put(2);
    CHECK(throws_as<mp::ValueError>([&] { q.join_thread(); }));
    q.close();
    q.join_thread();
    q.cancel_join_thread();
    CHECK(throws_as<mp::ValueError>([&] { q.put(3); }));
    CHECK(throws_as<mp::ValueError>([&] { q.get(); }));
    auto copy_of_closed = q;
    CHECK(throws_as<mp::ValueError>([&] { copy_of_closed.put(3); }));
    CHECK(other.get() == 1);  // another handle still drains it
    other.put(3);
    CHECK(other.get() == 2);
    CHECK(other.get() == 3);
}

TEST_CASE("dummy::JoinableQueue: join() waits for task_done() of every item, and task_done too often throws",
          "[dummy][queue]") {
    dummy::JoinableQueue<std::string> jq;
    std::atomic<int> processed{0};
    for (int i = 0; i < 20; ++i) jq.put("job " + std::to_string(i));
    CHECK_FALSE(jq.join(0.05s));  // unfinished items
    std::vector<dummy::Process> workers;
    for (int w = 0; w < 3; ++w)
        workers.emplace_back([jq, &processed]() mutable {
            for (;;) {
                auto job = jq.get();
                if (job.empty()) {
                    jq.task_done();
                    return;
                }
                std::this_thread::sleep_for(1ms);
                ++processed;
                jq.task_done();
            }
        });
    for (auto& w : workers) w.start();
    jq.join();
    CHECK(processed == 20);
    CHECK(jq.join(0s));
    for (int w = 0; w < 3; ++w) jq.put("");
    for (auto& w : workers) w.join();
    jq.join();
    CHECK(throws_as<mp::ValueError>([&] { jq.task_done(); }));
}

TEST_CASE("dummy::SimpleQueue: put, get, get(timeout), empty, close", "[dummy][queue]") {
    dummy::SimpleQueue<std::unique_ptr<std::string>> sq;
    CHECK(sq.empty());
    dummy::Process p([sq]() mutable { sq.put(std::make_unique<std::string>("from a thread")); });
    p.start();
    auto s = sq.get();
    REQUIRE(s);
    CHECK(*s == "from a thread");
    p.join();
    CHECK(sq.empty());
    CHECK(throws_as<mp::Empty>([&] { sq.get(0.05s); }));
    sq.close();
    CHECK(throws_as<mp::ValueError>([&] { sq.put(nullptr); }));
}

// ---------------------------------------------------------------------------------
// Pipe

TEST_CASE("dummy::Pipe: a duplex pipe sends both ways between threads", "[dummy][pipe]") {
    auto [a, b] = dummy::Pipe<std::string>();
    CHECK(a.readable());
    CHECK(a.writable());
    dummy::Process echo([b]() mutable {
        for (;;) {
            auto m = b.recv();
            if (m == "stop") return;
            b.send(m + "!");
        }
    });
    echo.start();
    for (int i = 0; i < 50; ++i) {
        a.send("m" + std::to_string(i));
        CHECK(a.recv(20s) == "m" + std::to_string(i) + "!");
    }
    a.send("stop");
    echo.join();
}

TEST_CASE("dummy::Pipe: a one-way pipe refuses the wrong direction with ValueError", "[dummy][pipe]") {
    auto [r, w] = dummy::Pipe<int>(false);
    CHECK(r.readable());
    CHECK_FALSE(r.writable());
    CHECK(w.writable());
    CHECK_FALSE(w.readable());
    CHECK(throws_as<mp::ValueError>([&] { r.send(1); }));
    CHECK(throws_as<mp::ValueError>([&] { w.recv(); }));
    CHECK(throws_as<mp::ValueError>([&] { w.poll(); }));
    w.send(5);
    CHECK(r.recv() == 5);
}

TEST_CASE("dummy::Pipe: poll, poll(timeout) and recv(timeout)", "[dummy][pipe][timeout]") {
    auto [a, b] = dummy::Pipe<int>();
    CHECK_FALSE(a.poll());
    auto t0 = Clock::now();
    CHECK_FALSE(a.poll(0.2s));
    double waited = seconds_since(t0);
    CHECK(waited >= 0.15);
    CHECK(waited < slack);
    t0 = Clock::now();
    CHECK(throws_as<mp::TimeoutError>([&] { a.recv(0.2s); }));
    CHECK(seconds_since(t0) >= 0.15);
    b.send(3);
    CHECK(a.poll());
    CHECK(a.poll());  // poll does not consume
    CHECK(a.recv() == 3);

    dummy::Process late([b]() mutable {
        std::this_thread::sleep_for(50ms);
        b.send(4);
    });
    late.start();
    CHECK(a.poll(20s));
    CHECK(a.recv() == 4);
    late.join();
}

TEST_CASE("dummy::Pipe: EOFError once the other end is closed and every message has been read",
          "[dummy][pipe]") {
    auto [a, b] = dummy::Pipe<std::unique_ptr<int>>();
    b.send(std::make_unique<int>(1));
    b.send(std::make_unique<int>(2));
    b.close();
    CHECK(b.closed());
    CHECK_FALSE(a.closed());
    CHECK(a.poll());
    CHECK(*a.recv() == 1);
    CHECK(*a.recv() == 2);
    CHECK(a.poll());  // EOF counts as ready, as for a socket
    CHECK(throws_as<mp::EOFError>([&] { a.recv(); }));
    CHECK(throws_as<mp::EOFError>([&] { a.recv(1s); }));
    // Sending to a closed end is EPIPE, as the process version's.
    try {
        a.send(std::make_unique<int>(3));
        FAIL("send to a closed end did not throw");
    } catch (const std::system_error& e) {
        CHECK(e.code().value() == EPIPE);
    }
    // This end's own use after close() is ValueError.
    CHECK(throws_as<mp::ValueError>([&] { b.send(nullptr); }));
    CHECK(throws_as<mp::ValueError>([&] { b.recv(); }));
    CHECK(throws_as<mp::ValueError>([&] { b.poll(); }));
}

TEST_CASE("dummy::Pipe: a blocked recv() gets EOFError when the last copy of the other end goes",
          "[dummy][pipe]") {
    auto [r, w] = dummy::Pipe<int>(false);
    std::atomic<int> outcome{0};  // 1: got 9 then EOFError
    dummy::Process reader([r, &outcome]() mutable {
        try {
            if (r.recv() != 9) return;
            r.recv();
        } catch (const mp::EOFError&) {
            outcome = 1;
        }
    });
    reader.start();
    std::this_thread::sleep_for(30ms);
    {
        auto sender = std::move(w);  // the only copy, destroyed at the end of this scope
        sender.send(9);
    }
    REQUIRE(reader.join(20s));
    CHECK(outcome == 1);
}

// ---------------------------------------------------------------------------------
// Synchronization: the process-shared primitives, between threads

TEST_CASE("dummy::RLock: reentrant for its owner thread, ValueError for a non-owner's release",
          "[dummy][lock]") {
    dummy::RLock lock;
    lock.acquire();
    lock.acquire();  // again, from the owner
    CHECK(lock.acquire(false));

    std::atomic<int> release_error{0};   // 1: ValueError
    std::atomic<int> try_while_held{-1};
    dummy::Process other([&, lock]() mutable {
        try {
            lock.release();
        } catch (const mp::ValueError&) {
            release_error = 1;
        }
        try_while_held = lock.acquire(false) ? 1 : 0;
    });
    other.start();
    other.join();
    CHECK(release_error == 1);
    CHECK(try_while_held == 0);

    lock.release();
    lock.release();
    std::atomic<int> try_still_held{-1};
    dummy::Process again([&, lock]() mutable { try_still_held = lock.acquire(false) ? 1 : 0; });
    again.start();
    again.join();
    CHECK(try_still_held == 0);  // held once more
    lock.release();
    CHECK(throws_as<mp::ValueError>([&] { lock.release(); }));

    std::atomic<int> try_free{-1};
    dummy::Process free_now([&, lock]() mutable {
        try_free = lock.acquire(false) ? 1 : 0;
        if (try_free == 1) lock.release();
    });
    free_now.start();
    free_now.join();
    CHECK(try_free == 1);
}

TEST_CASE("dummy::Lock: threads exclude each other, another thread may release", "[dummy][lock]") {
    dummy::Lock lock;
    long counter = 0;  // guarded by lock: a race would show under TSan, and in the total
    std::vector<dummy::Process> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, lock]() mutable {
            for (int i = 0; i < 2000; ++i) {
                std::lock_guard g(lock);
                ++counter;
            }
        });
    for (auto& t : threads) t.start();
    for (auto& t : threads) t.join();
    CHECK(counter == 8000);

    lock.acquire();
    std::atomic<bool> released{false};
    dummy::Process releaser([&, lock]() mutable {
        lock.release();  // Python's Lock allows it too
        released = true;
    });
    releaser.start();
    releaser.join();
    CHECK(released);
    CHECK(lock.acquire(false));
    lock.release();
}

TEST_CASE("dummy::Event and dummy::Condition across threads", "[dummy][event][condition]") {
    dummy::Event ev;
    dummy::Process setter([ev]() mutable {
        std::this_thread::sleep_for(30ms);
        ev.set();
    });
    setter.start();
    CHECK(ev.wait(20s));
    CHECK(ev.is_set());
    setter.join();
    ev.clear();
    CHECK_FALSE(ev.wait(0.05s));

    dummy::Condition cond;
    int stage = 0;  // guarded by cond
    dummy::Process worker([&, cond]() mutable {
        std::lock_guard g(cond);
        stage = 1;
        cond.notify_all();
        cond.wait_for([&] { return stage == 2; });
        stage = 3;
        cond.notify_all();
    });
    worker.start();
    {
        std::unique_lock g(cond);
        CHECK(cond.wait_for([&] { return stage == 1; }, 20s));
        stage = 2;
        cond.notify_all();
        CHECK(cond.wait_for([&] { return stage == 3; }, 20s));
    }
    worker.join();
    CHECK(throws_as<mp::ValueError>([&] { cond.notify(); }));  // without the lock
}

TEST_CASE("dummy::Barrier: three threads pass together, the action runs once", "[dummy][barrier]") {
    std::atomic<int> actions{0};
    dummy::Barrier barrier(3, [&] { ++actions; });
    dummy::Queue<int> indices;
    std::vector<dummy::Process> threads;
    for (int t = 0; t < 3; ++t)
        threads.emplace_back([barrier, indices]() mutable {
            for (int round = 0; round < 3; ++round) indices.put(barrier.wait());
        });
    for (auto& t : threads) t.start();
    for (auto& t : threads) REQUIRE(t.join(20s));
    CHECK(actions == 3);
    std::multiset<int> got;
    while (!indices.empty()) got.insert(indices.get());
    CHECK(got == std::multiset<int>{0, 0, 0, 1, 1, 1, 2, 2, 2});

    dummy::Barrier alone(2);
    CHECK(throws_as<mp::BrokenBarrierError>([&] { alone.wait(0.05s); }));
    CHECK(alone.broken());
}

TEST_CASE("dummy::Semaphore and BoundedSemaphore between threads", "[dummy][semaphore]") {
    dummy::Semaphore sem(2);
    std::atomic<int> inside{0}, most{0};
    std::vector<dummy::Process> threads;
    for (int t = 0; t < 5; ++t)
        threads.emplace_back([&, sem]() mutable {
            for (int i = 0; i < 20; ++i) {
                std::lock_guard g(sem);
                const int now = ++inside;
                int seen = most.load();
                while (now > seen && !most.compare_exchange_weak(seen, now)) {
                }
                std::this_thread::sleep_for(std::chrono::microseconds(100));
                --inside;
            }
        });
    for (auto& t : threads) t.start();
    for (auto& t : threads) t.join();
    CHECK(most <= 2);
    CHECK(most >= 1);

    dummy::BoundedSemaphore bounded(1);
    CHECK(throws_as<mp::ValueError>([&] { bounded.release(); }));
}

// ---------------------------------------------------------------------------------
// Value and Array

TEST_CASE("dummy::Value<std::string>: copies are the same object, get_lock() guards updates",
          "[dummy][sharedctypes]") {
    dummy::Value<std::string> v("abc");
    auto copy = v;
    copy.value() += "def";
    CHECK(v.value() == "abcdef");
    dummy::Process p([v]() { v.value() = "set by a thread"; });
    p.start();
    p.join();
    CHECK(copy.value() == "set by a thread");

    dummy::Value<std::string> defaulted;
    CHECK(defaulted.value().empty());

    dummy::Value<int> counter(0);
    std::vector<dummy::Process> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([counter]() mutable {
            for (int i = 0; i < 1000; ++i) {
                std::lock_guard g(counter.get_lock());
                counter.value() += 1;
            }
        });
    for (auto& t : threads) t.start();
    for (auto& t : threads) t.join();
    CHECK(counter.value() == 4000);

    // get_lock() is an RLock (Python's default), and `with v:` is std::lock_guard g(v).
    {
        std::lock_guard outer(counter);
        std::lock_guard inner(counter.get_lock());
        CHECK(counter.value() == 4000);
    }
    // A given lock is the one get_lock() returns.
    dummy::Lock mine;
    dummy::Value<double, dummy::Lock> with_lock(1.5, mine);
    mine.acquire();
    CHECK_FALSE(with_lock.get_lock().acquire(false));
    mine.release();
    CHECK(with_lock.value() == 1.5);
}

TEST_CASE("dummy::Array<std::string>: initializer list, size, iteration, span, at() and sharing",
          "[dummy][sharedctypes]") {
    dummy::Array<std::string> a{"x", "y", "z"};
    REQUIRE(a.size() == 3);
    CHECK(a[0] == "x");
    auto copy = a;
    dummy::Process p([copy]() {
        for (auto& s : copy) s += "!";
    });
    p.start();
    p.join();
    CHECK(std::vector<std::string>(a.begin(), a.end()) == std::vector<std::string>{"x!", "y!", "z!"});
    std::span<std::string> s = a.span();
    CHECK(s.size() == 3);
    s[1] = "changed";
    CHECK(copy[1] == "changed");
    CHECK(throws_as<mp::IndexError>([&] { (void)a.at(3); }));

    dummy::Array<int> zeros(5);
    CHECK(std::accumulate(zeros.begin(), zeros.end(), 0) == 0);
    CHECK(zeros.size() == 5);
    dummy::Array<int> from_vector(std::vector<int>{1, 2, 3});
    CHECK(std::accumulate(from_vector.begin(), from_vector.end(), 0) == 6);
    dummy::Array<bool> flags(4);  // a real array, not std::vector<bool>
    flags[2] = true;
    CHECK(flags.span()[2]);
    dummy::Array<std::string> empty_strings(2);
    CHECK(empty_strings[1].empty());
    {
        std::lock_guard g(a);
        a[0] = "locked";
    }
    CHECK(copy[0] == "locked");
}
