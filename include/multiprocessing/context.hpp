// Python's multiprocessing.context: start methods, contexts, and the functions that
// describe this process.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <sched.h>

#include "detail/popen_spawn.hpp"
#include "detail/process_state.hpp"
#include "errors.hpp"

namespace multiprocessing {

// Seconds, as Python's timeouts are; any std::chrono duration converts to it.
using Timeout = std::chrono::duration<double>;

namespace detail {

// The CPU limit a cgroup quota sets (v2: cpu.max, v1: cpu.cfs_quota_us/period), if any.
inline std::optional<double> cgroup_cpu_limit() {
    auto read_first_line = [](const std::string& path) -> std::optional<std::string> {
        std::ifstream f(path);
        std::string line;
        if (f && std::getline(f, line)) return line;
        return std::nullopt;
    };
    // Which cgroup are we in? ("0::/path" for v2; "N:cpu,cpuacct:/path" for v1)
    std::string v2_path, v1_path;
    {
        std::ifstream f("/proc/self/cgroup");
        std::string line;
        while (std::getline(f, line)) {
            if (line.rfind("0::", 0) == 0) v2_path = line.substr(3);
            auto c1 = line.find(':'), c2 = line.find(':', c1 + 1);
            if (c1 != std::string::npos && c2 != std::string::npos) {
                std::string ctrls = "," + line.substr(c1 + 1, c2 - c1 - 1) + ",";
                if (ctrls.find(",cpu,") != std::string::npos) v1_path = line.substr(c2 + 1);
            }
        }
    }
    std::optional<double> limit;
    auto consider = [&](double quota, double period) {
        if (quota > 0 && period > 0) limit = std::min(limit.value_or(1e300), quota / period);
    };
    // Walk from our cgroup up to the root: a parent's quota limits us too.
    for (std::string p = v2_path; !v2_path.empty();) {
        if (auto line = read_first_line("/sys/fs/cgroup" + p + (p == "/" ? "" : "/") + "cpu.max")) {
            std::istringstream in(*line);
            std::string quota;
            double period = 0;
            in >> quota >> period;
            if (quota != "max") consider(std::stod(quota), period);
        }
        if (p == "/" || p.empty()) break;
        auto slash = p.find_last_of('/');
        p = slash == 0 ? "/" : p.substr(0, slash);
    }
    if (!v1_path.empty()) {
        for (const char* root : {"/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"}) {
            auto q = read_first_line(std::string(root) + v1_path + "/cpu.cfs_quota_us");
            auto per = read_first_line(std::string(root) + v1_path + "/cpu.cfs_period_us");
            if (!q) {
                q = read_first_line(std::string(root) + "/cpu.cfs_quota_us");
                per = read_first_line(std::string(root) + "/cpu.cfs_period_us");
            }
            if (q && per) {
                consider(std::stod(*q), std::stod(*per));
                break;
            }
        }
    }
    return limit;
}

inline std::string& start_method_slot() {
    static std::string method;  // empty until set or first used
    return method;
}
inline std::mutex& start_method_mutex() {
    static std::mutex m;
    return m;
}

}  // namespace detail

// The number of CPUs this process may use: the CPUs in its affinity mask, further
// limited by a cgroup (v1 or v2) CPU quota, rounded up; at least 1. This is Python 3.13's
// os.process_cpu_count() with the quota applied, which is what a pool should size to.
// Computed at each call, since both can change while the program runs.
inline std::size_t cpu_count() {
    std::size_t n = 0;
    cpu_set_t set;
    if (::sched_getaffinity(0, sizeof set, &set) == 0) n = static_cast<std::size_t>(CPU_COUNT(&set));
    if (n == 0) n = static_cast<std::size_t>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
    if (auto limit = detail::cgroup_cpu_limit())
        n = std::min(n, static_cast<std::size_t>(std::max(1.0, std::ceil(*limit))));
    return std::max<std::size_t>(1, n);
}

inline const ProcessInfo& current_process() { return detail::process_state().current; }

inline std::optional<ProcessInfo> parent_process() {
    auto& st = detail::process_state();
    std::lock_guard lock(st.mutex);
    return st.parent;
}

// The live children this process started with Process, reaping the finished ones.
inline std::vector<ProcessInfo> active_children() {
    auto& st = detail::process_state();
    std::vector<std::shared_ptr<detail::ChildRecord>> children;
    {
        std::lock_guard lock(st.mutex);
        children = st.children;
    }
    std::vector<ProcessInfo> alive;
    std::vector<const detail::ChildRecord*> finished;
    for (auto& c : children) {
        if (c->poll_exitcode())
            finished.push_back(c.get());
        else
            alive.push_back(c->info());
    }
    std::lock_guard lock(st.mutex);
    std::erase_if(st.children, [&](const auto& c) {
        return std::find(finished.begin(), finished.end(), c.get()) != finished.end();
    });
    return alive;
}

// The default first, as Python lists them.
inline std::vector<std::string> get_all_start_methods() { return {"fork", "spawn", "forkserver"}; }

namespace detail {
inline std::string available_start_methods() {
    std::string all;
    for (const auto& m : get_all_start_methods()) all += (all.empty() ? "" : ", ") + m;
    return all;
}
}  // namespace detail

inline std::string get_start_method(bool allow_none = false) {
    std::lock_guard lock(detail::start_method_mutex());
    auto& m = detail::start_method_slot();
    if (m.empty() && !allow_none) m = "fork";
    return m;
}

inline void set_start_method(const std::string& method, bool force = false) {
    auto all = get_all_start_methods();
    if (std::find(all.begin(), all.end(), method) == all.end())
        throw ValueError("set_start_method: cannot find context for '" + method + "'; available: " + detail::available_start_methods());
    std::lock_guard lock(detail::start_method_mutex());
    auto& m = detail::start_method_slot();
    if (!m.empty() && !force)
        throw ProcessError("set_start_method: the context has already been set (to '" + m +
                           "'); pass force = true to change it");
    m = method;
}

// A start method and the factories bound to it (the factories come with the headers
// that define Pool, Process, Queue).
class Context {
public:
    explicit Context(std::string method = "fork") : method_(std::move(method)) {}
    const std::string& get_start_method() const noexcept { return method_; }

    // As mp::Pool's constructors, with this context (defined in pool.hpp).
    template <class... A>
    auto Pool(A&&... args) const;
    // As mp::Process's constructor (defined in process.hpp).
    template <class F, class... A>
    auto Process(F&& target, A&&... args) const;
    // As Python's context, the shared objects too, each taking what its constructor
    // takes (defined with the types: queues.hpp, synchronize.hpp, sharedctypes.hpp,
    // connection.hpp). They do not depend on the start method.
    template <class T, class... A>
    auto Queue(A&&... args) const;
    template <class T, class... A>
    auto JoinableQueue(A&&... args) const;
    template <class T, class... A>
    auto SimpleQueue(A&&... args) const;
    template <class T>
    auto Pipe(bool duplex = true) const;
    template <class... A>
    auto Lock(A&&... args) const;
    template <class... A>
    auto RLock(A&&... args) const;
    template <class... A>
    auto Semaphore(A&&... args) const;
    template <class... A>
    auto BoundedSemaphore(A&&... args) const;
    template <class... A>
    auto Condition(A&&... args) const;
    template <class... A>
    auto Event(A&&... args) const;
    template <class... A>
    auto Barrier(A&&... args) const;
    template <class T, class... A>
    auto Value(A&&... args) const;
    template <class T, class... A>
    auto Array(A&&... args) const;
    // As mp::Manager(), its server started by this context's method (managers.hpp).
    template <class... A>
    auto Manager(A&&... args) const;

private:
    std::string method_;
};

inline Context get_context(std::optional<std::string> method = std::nullopt) {
    std::string m = method ? *method : get_start_method();
    auto all = get_all_start_methods();
    if (std::find(all.begin(), all.end(), m) == all.end())
        throw ValueError("get_context: cannot find context for '" + m + "'; available: " + detail::available_start_methods());
    return Context(m);
}

// Call first in main(), before anything else. In the main program it does nothing; in
// a child started by the spawn start method (a fresh run of this program) it becomes
// that child, a pool worker or a Process, and exits without returning, so main()'s own
// code never runs there.
//
// A program that never calls it is caught before main() runs a second time: each call
// leaves a byte in a section of its own, and a spawned child of a program without that
// section says so on stderr and exits 1 during static initialization
// (detail::check_freeze_support_before_main). A template only so that the byte exists
// where the call is, not wherever this header is included. A spawned child whose main()
// calls it too late fails its first Pool or Process with an error that says so.
template <class = void>
inline void freeze_support() {
    asm volatile(".pushsection multiprocessing_freeze_support_calls,\"a\",@progbits\n.byte 1\n.popsection");
    detail::take_over_if_spawned();
}

}  // namespace multiprocessing
