// What every benchmark program here shares: repetition limits, medians, and the JSON
// lines that bench/run.py pairs with the Python side's.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;

inline bool g_quick = false;
inline const char* g_filter = nullptr;  // --filter SUBSTRING: run only the matching workloads

inline int reps(int n) { return g_quick ? std::max(1, n / 2) : n; }

inline double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Keeps the whole run near ~30 s even when a workload is far slower than its target:
// after kMinReps repetitions, a workload stops repeating once it has used its budget.
constexpr int kMinReps = 3;
constexpr double kBudgetSeconds = 4.0;

struct RepLimiter {
    int max_reps;
    Clock::time_point start = Clock::now();
    int done = 0;
    explicit RepLimiter(int n) : max_reps(n) {}
    bool next() {
        if (done >= max_reps) return false;
        if (done >= std::min(kMinReps, max_reps) && seconds_since(start) > kBudgetSeconds)
            return false;
        ++done;
        return true;
    }
};

// ---- JSON-lines output -------------------------------------------------------------

inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    if (n == 0) return 0.0;
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

inline std::string num(double x) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6g", x);
    return buf;
}

inline std::string json_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char b[8];
                    std::snprintf(b, sizeof b, "\\u%04x", c);
                    out += b;
                } else {
                    out += c;
                }
        }
    }
    return out;
}

// extra: already-formatted `"key": value` pairs appended to the object.
inline void emit(const char* workload, const char* unit, const std::vector<double>& runs,
          const std::vector<std::pair<std::string, std::string>>& extra = {}) {
    std::string line = "{\"workload\": \"";
    line += workload;
    line += "\", \"unit\": \"";
    line += unit;
    line += "\", \"median\": " + num(median(runs)) + ", \"runs\": [";
    for (std::size_t i = 0; i < runs.size(); ++i) {
        if (i) line += ", ";
        line += num(runs[i]);
    }
    line += "]";
    for (const auto& [k, v] : extra) line += ", \"" + k + "\": " + v;
    line += "}";
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
}

inline void emit_error(const char* workload, const char* unit, const std::string& what) {
    std::printf("{\"workload\": \"%s\", \"unit\": \"%s\", \"error\": \"%s\"}\n", workload, unit,
                json_escape(what).c_str());
    std::fflush(stdout);
}

// Runs one workload; a failure is reported on its line and the others still run.
inline void guarded(const char* workload, const char* unit, const std::function<void()>& body) {
    if (g_filter && !std::strstr(workload, g_filter)) return;
    try {
        body();
    } catch (const std::exception& e) {
        emit_error(workload, unit, std::string("exception: ") + e.what());
    } catch (...) {
        emit_error(workload, unit, "unknown exception");
    }
}

inline void check(bool ok, const char* what) {
    if (!ok) throw std::runtime_error(std::string("wrong result: ") + what);
}

// apply_async(task).get() on `pool`, one call in flight: `ops` calls per run, 200
// untimed first; the figure is microseconds per call.
template <class Pool>
void bench_apply_roundtrip(Pool& pool, void (*task)(), const std::string& name, int n, int ops) {
    for (int i = 0; i < 200; ++i) pool.apply_async(task).get();
    std::vector<double> runs;
    for (RepLimiter reps_left(n); reps_left.next();) {
        const auto t0 = Clock::now();
        for (int i = 0; i < ops; ++i) pool.apply_async(task).get();
        runs.push_back(seconds_since(t0) / ops * 1e6);
    }
    emit(name.c_str(), "us", runs, {{"ops_per_run", std::to_string(ops)}});
}

// Reads --quick and --filter SUBSTRING.
inline void parse_args(int argc, char** argv) {
    for (int i = 1; i < argc; ++i)
        if (std::strcmp(argv[i], "--quick") == 0)
            g_quick = true;
        else if (std::strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
            g_filter = argv[++i];
}

}  // namespace bench
