// Manager benchmarks: the workloads of bench/python/bench_managers.py, on mp::Manager(),
// mp::SyncManager and mp::BaseManager. Each measures one proxy call, a round trip to
// the manager's server process, one call in flight. Output and flags as bench_pool.cpp's
// (JSON lines; --quick, --filter SUBSTRING).

#include <multiprocessing.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "bench_support.hpp"

namespace mp = multiprocessing;

namespace {

using namespace bench;

constexpr int kWarmup = 1000;  // calls before timing: connections made, caches and spin paths warm

// Times `ops` calls of `call(i)` per rep, after kWarmup untimed calls; kcalls/s.
template <class Call, class Reset>
std::vector<double> time_calls(int n, int ops, Call&& call, Reset&& reset) {
    for (int i = 0; i < kWarmup; ++i) call(i);
    reset();
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        for (int i = 0; i < ops; ++i) call(i);
        runs.push_back(ops / seconds_since(t0) / 1e3);
        reset();
    }
    return runs;
}

// ---- 1. Manager().list().append, on the default (unix socket) manager --------------------

void bench_list_append(mp::SyncManager& m, const char* workload, int n, int ops) {
    auto l = m.list<int>();
    auto runs = time_calls(n, ops, [&](int) { l.append(1); }, [&] {
        check(l.size() > 0, "list size");
        l.clear();  // untimed: keeps the server's list small
    });
    emit(workload, "kcalls/s", runs, {{"ops_per_run", num(ops)}});
}

void bench_list_append_local(int n, int ops) {
    auto m = mp::Manager();
    bench_list_append(m, "manager_list_append_local", n, ops);
    m.shutdown();
}

// ---- 2. the same through a SyncManager on TCP 127.0.0.1 --------------------------------

void bench_list_append_tcp(int n, int ops) {
    mp::SyncManager m({.address = {"127.0.0.1", 0}, .authkey = "k"});
    m.start();
    bench_list_append(m, "manager_list_append_tcp", n, ops);
    m.shutdown();
}

// ---- 3. d[i] = i on Manager().dict() ------------------------------------------------------

void bench_dict_set_local(int n, int ops) {
    auto m = mp::Manager();
    auto d = m.dict<int, int>();
    auto runs = time_calls(n, ops, [&](int i) { d.set(i, i); }, [&] {
        check(d.size() > 0, "dict size");
        d.clear();
    });
    emit("manager_dict_set_local", "kcalls/s", runs, {{"ops_per_run", num(ops)}});
    m.shutdown();
}

// ---- 4. a function registered on a BaseManager, called from a connected client ---------

void bench_call_function_tcp(int n, int ops) {
    mp::BaseManager server({.address = {"127.0.0.1", 0}, .authkey = "k"});
    server.register_("get_double", [](int x) { return x * 2; });
    server.start();

    mp::BaseManager c({.address = server.address(), .authkey = "k"});
    c.register_<int(int)>("get_double");
    c.connect();
    check(c.call<int(int)>("get_double", 2) == 4, "get_double(2)");
    int sum = 0;
    auto runs = time_calls(n, ops, [&](int) { sum += c.call<int(int)>("get_double", 2); }, [] {});
    check(sum > 0, "get_double results");
    emit("manager_call_function_tcp", "kcalls/s", runs, {{"ops_per_run", num(ops)}});
    c.shutdown();  // only disconnects: c did not start the server
    server.shutdown();
}

}  // namespace

int main(int argc, char** argv) {
    mp::freeze_support();
    parse_args(argc, argv);
    mp::set_start_method("fork");  // the default; explicit, as the Python side is
    guarded("manager_list_append_local", "kcalls/s", [] { bench_list_append_local(reps(7), 20'000); });
    guarded("manager_list_append_tcp", "kcalls/s", [] { bench_list_append_tcp(reps(7), 20'000); });
    guarded("manager_dict_set_local", "kcalls/s", [] { bench_dict_set_local(reps(7), 20'000); });
    guarded("manager_call_function_tcp", "kcalls/s", [] { bench_call_function_tcp(reps(7), 20'000); });
    return 0;
}
