// The spawn start method: the child is a fresh posix_spawn of the running executable
// (/proc/self/exe), which takes over in mp::freeze_support() and runs one entry point.
//
// What the child is to do travels in a "bootstrap" memfd, its fd 3: the entry point (a
// code_address, valid under ASLR), who its parent is, its name, and the entry's own
// payload. Other fds the entry needs (a pool's shared segment) are its fds 4, 5, ...;
// every other fd of the parent is closed in the child, as Python's spawn does. A memfd
// rather than a pipe: the parent writes it whole before the child exists, so it never
// blocks on a child that is slow to start and never gets SIGPIPE from one that died.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string_view>
#include <string>
#include <vector>

#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <spawn.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "callable.hpp"
#include "codec.hpp"
#include "popen_fork.hpp"
#include "process_state.hpp"
#include "remote_exception.hpp"
#include "shm.hpp"

extern char** environ;

namespace multiprocessing::detail {

// Set in a spawned child's environment (and removed once it has taken over).
inline constexpr const char* spawned_env = "MULTIPROCESSING_SPAWNED";
// (bootstrap_fd and first_passed_fd: reduction.hpp.)

enum class StartMethod { fork, spawn, forkserver };

inline StartMethod parse_start_method(const std::string& name) {
    if (name == "fork") return StartMethod::fork;
    if (name == "spawn") return StartMethod::spawn;
    if (name == "forkserver") return StartMethod::forkserver;
    throw ValueError("cannot find context for '" + name + "'; available: fork, spawn, forkserver");
}

inline std::string start_method_name(StartMethod m) {
    switch (m) {
        case StartMethod::fork: return "fork";
        case StartMethod::spawn: return "spawn";
        case StartMethod::forkserver: return "forkserver";
    }
    return "?";
}

// What a spawned child runs once it has taken over: reads its payload from `in`; the
// fds it was given are first_passed_fd, first_passed_fd + 1, ...; returns the exit code.
using SpawnEntry = int(ByteReader& in);

// True in a process that was spawned by this library and has not yet taken over in
// freeze_support(): main() is running without having called it first.
// (take_over_if_spawned() removes the variable.)
inline bool spawned_without_takeover() noexcept { return std::getenv(spawned_env) != nullptr; }

inline void require_takeover(const char* what) {
    if (spawned_without_takeover())
        throw ProcessError(std::string(what) +
                           ": this process was started by the spawn or forkserver start method, but main() did "
                           "not call mp::freeze_support() before anything else; add it as main's first line");
}

// ---- a program that never calls freeze_support(), caught before main() ----------------

// Defined by the linker when the program has the section freeze_support<>() writes to
// (context.hpp), that is, when it calls freeze_support() anywhere; null otherwise.
extern "C" {
[[gnu::weak]] extern const char __start_multiprocessing_freeze_support_calls[];
}

// Whether `code` is in the main executable: a shared library that includes this header
// has a section table of its own, where the call in main() does not show.
inline bool in_main_executable(const void* code) noexcept {
    Dl_info info;
    link_map* module = nullptr;
    if (::dladdr1(code, &info, reinterpret_cast<void**>(&module), RTLD_DL_LINKMAP) == 0 || !module) return false;
    void* self = ::dlopen(nullptr, RTLD_LAZY | RTLD_NOLOAD);
    link_map* main_program = nullptr;
    const bool found = self && ::dlinfo(self, RTLD_DI_LINKMAP, &main_program) == 0;
    if (self) ::dlclose(self);
    return found && main_program == module;
}

// In a spawned child of a program that never calls freeze_support(), main() would run a
// second time and do whatever the program does (start its own pool, say), so the child
// stops here, in static initialization, and says why. Where the answer is not known (the
// header is only in a shared library), the first Pool or Process still refuses.
inline void check_freeze_support_before_main() noexcept {
    if (!spawned_without_takeover()) return;
    if (__start_multiprocessing_freeze_support_calls != nullptr) return;
    if (!in_main_executable(reinterpret_cast<const void*>(&check_freeze_support_before_main))) return;
    std::fprintf(stderr,
                 "multiprocessing: this process was started by the spawn or forkserver start method, but the "
                 "program never calls mp::freeze_support(), so it cannot become the child it was started as and "
                 "would run main() a second time; add mp::freeze_support(); as the first line of main()\n");
    ::_exit(1);
}
inline const bool freeze_support_checked_before_main = (check_freeze_support_before_main(), true);

// The argv[0] the parent was started with, so a spawned child reads the same in `ps`.
inline std::string own_argv0() {
    std::FILE* f = std::fopen("/proc/self/cmdline", "re");
    std::string arg;
    if (f) {
        for (int c; (c = std::fgetc(f)) != EOF && c != '\0';) arg.push_back(static_cast<char>(c));
        std::fclose(f);
    }
    return arg.empty() ? std::string("multiprocessing-spawned") : arg;
}

// The bootstrap of a child that is to run `entry` with `payload`: a memfd holding both,
// and who the child is, read back by run_bootstrap().
inline UniqueFd write_bootstrap(const ForkOptions& options, code_address entry, std::span<const std::byte> payload) {
    const auto& self = process_state().current;
    const auto header = encode_with([&](ByteWriter& w) {
        put(w, entry);
        put(w, self.name());
        put(w, static_cast<std::int32_t>(::getpid()));
        put(w, options.name);
        put(w, options.daemon);
        put(w, options.identity);
        put(w, options.die_with_parent);
        put(w, process_state().authkey);  // private: only the child can read its fd 3
    });
    UniqueFd boot(::memfd_create("multiprocessing-bootstrap", MFD_CLOEXEC));
    if (boot.get() < 0) throw_errno("memfd_create(bootstrap)");
    for (auto part : {std::span<const std::byte>(header), payload}) {
        for (std::size_t done = 0; done < part.size();) {
            const ssize_t n = ::write(boot.get(), part.data() + done, part.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) throw_errno("write(bootstrap)");
            done += static_cast<std::size_t>(n);
        }
    }
    return boot;
}

// Which file a bootstrap is: "<st_dev>:<st_ino>" of its memfd. The parent puts it in
// the child's MULTIPROCESSING_SPAWNED, and the child believes its fd 3 only if that fd
// is this very file: an fd 3 that is something else (a file an unrelated parent left
// open, a pipe from whoever started the program with the variable set) is not read.
inline std::string bootstrap_identity(int fd) {
    struct stat st;
    if (::fstat(fd, &st) != 0) throw_errno("fstat(bootstrap)");
    return std::to_string(static_cast<unsigned long long>(st.st_dev)) + ":" +
           std::to_string(static_cast<unsigned long long>(st.st_ino));
}

// Why this process must not take over as a spawned child, or nothing if it may.
//   secure_execution: getauxval(AT_SECURE), set by the kernel when the program runs with
//     more privilege than whoever started it (setuid, setgid, file capabilities). Such a
//     program's environment and open fds are chosen by a less privileged user, so
//     MULTIPROCESSING_SPAWNED and fd 3 prove nothing, and fd 3 names the code to run.
//     The spawn and forkserver start methods are unavailable in such a program (its
//     children would be refused too); fork works.
//   the variable's value must be bootstrap_identity() of `fd` (see above).
inline std::optional<std::string> takeover_refusal(std::string_view env_value, bool secure_execution, int fd) {
    if (secure_execution)
        return std::string("the program runs setuid, setgid or with file capabilities (AT_SECURE), so its "
                           "environment is not trusted to name a bootstrap; the spawn and forkserver start "
                           "methods are not available in such a program (use fork)");
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return std::string("fd 3 is not the bootstrap its parent passed (no such fd, or not a memfd)");
    std::string identity;
    try {
        identity = bootstrap_identity(fd);
    } catch (...) {
        return std::string("fd 3 cannot be examined");
    }
    if (env_value != identity)
        return std::string("fd 3 is not the bootstrap its parent passed (MULTIPROCESSING_SPAWNED names another "
                           "file; was the variable set by hand, or inherited from an unrelated process?)");
    return std::nullopt;
}

// Starts a fresh copy of this program that runs `entry` with `payload` and the given
// fds; returns its pid.
inline pid_t spawn_child(const ForkOptions& options, code_address entry, std::span<const std::byte> payload,
                         std::span<const int> fds = {}) {
    UniqueFd boot = write_bootstrap(options, entry, payload);

    // dup2 file actions run in order, so a source numbered like an earlier target would
    // be overwritten: every source first moves above all targets.
    const int lowest_free = first_passed_fd + static_cast<int>(fds.size()) + 1;
    std::vector<UniqueFd> sources;
    sources.reserve(fds.size() + 1);
    for (int fd : [&] {
             std::vector<int> all{boot.get()};
             all.insert(all.end(), fds.begin(), fds.end());
             return all;
         }()) {
        const int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, lowest_free);
        if (moved < 0) throw_errno("fcntl(F_DUPFD_CLOEXEC)");
        sources.emplace_back(moved);
    }
    posix_spawn_file_actions_t actions;
    ::posix_spawn_file_actions_init(&actions);
    struct ActionsGuard {
        posix_spawn_file_actions_t* a;
        ~ActionsGuard() { ::posix_spawn_file_actions_destroy(a); }
    } guard{&actions};
    ::posix_spawn_file_actions_adddup2(&actions, sources[0].get(), bootstrap_fd);
    for (std::size_t i = 1; i < sources.size(); ++i)
        ::posix_spawn_file_actions_adddup2(&actions, sources[i].get(), first_passed_fd + static_cast<int>(i) - 1);
    ::posix_spawn_file_actions_addclosefrom_np(&actions, first_passed_fd + static_cast<int>(fds.size()));

    // The child starts with default signal dispositions and an empty mask, whatever the
    // spawning thread had (a pool's result thread blocks nothing, a user's thread might).
    posix_spawnattr_t attr;
    ::posix_spawnattr_init(&attr);
    struct AttrGuard {
        posix_spawnattr_t* a;
        ~AttrGuard() { ::posix_spawnattr_destroy(a); }
    } attr_guard{&attr};
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    ::posix_spawnattr_setsigmask(&attr, &none);
    ::posix_spawnattr_setsigdefault(&attr, &all);
    ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    const std::string prefix = std::string(spawned_env) + "=";
    std::string marker = prefix + bootstrap_identity(boot.get());
    std::vector<char*> env;
    for (char** e = environ; e && *e; ++e)
        if (!std::string_view(*e).starts_with(prefix)) env.push_back(*e);
    env.push_back(marker.data());
    env.push_back(nullptr);
    std::string argv0 = own_argv0();
    char* argv[] = {argv0.data(), nullptr};

    flush_standard_streams();
    pid_t pid = 0;
    const int rc = ::posix_spawn(&pid, "/proc/self/exe", &actions, &attr, argv, env.data());
    if (rc != 0) {
        errno = rc;
        throw_errno("posix_spawn(/proc/self/exe)");
    }
    return pid;
}

// In a child made by spawn_child() or by the fork server, with its bootstrap at fd 3:
// becomes the child it describes, runs its entry and exits. `real_parent` is the process
// that actually made this one, when it is not the one that asked for it (the fork
// server's children).
[[noreturn]] inline void run_bootstrap(std::optional<pid_t> real_parent = std::nullopt) {
    struct stat st;
    if (::fstat(bootstrap_fd, &st) != 0) {
        std::fprintf(stderr, "multiprocessing: a spawned child has no bootstrap fd; exiting\n");
        ::_exit(1);
    }
    std::vector<std::byte> boot(static_cast<std::size_t>(st.st_size));
    for (std::size_t done = 0; done < boot.size();) {
        const ssize_t n = ::pread(bootstrap_fd, boot.data() + done, boot.size() - done, static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) ::_exit(1);
        done += static_cast<std::size_t>(n);
    }
    ::close(bootstrap_fd);
    int code = 1;
    try {
        ByteReader in(boot);
        const auto entry = get<code_address>(in);
        auto parent_name = get<std::string>(in);
        const auto parent_pid = get<std::int32_t>(in);
        auto name = get<std::string>(in);
        const bool daemon = get<bool>(in);
        auto identity = get<std::vector<int>>(in);
        const bool die_with_parent = get<bool>(in);
        process_state().authkey = get<std::string>(in);
        if (die_with_parent) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != real_parent.value_or(parent_pid)) ::_exit(1);  // the parent died before the line above
        }
        become_child(std::move(name), daemon, std::move(identity));
        {
            auto& state = process_state();
            std::lock_guard lock(state.mutex);
            state.parent = ProcessInfo(std::move(parent_name), parent_pid, false);
        }
        code = code_at<SpawnEntry>(entry)(in);
    } catch (...) {
        const auto info = describe_current_exception();
        std::fprintf(stderr, "multiprocessing: a spawned child could not start: %s: %s\n", info.type.c_str(),
                     info.what.c_str());
        code = 1;
    }
    exit_child(code);
}

// In a child made by spawn_child(), from freeze_support(). Returns at once in any other
// process.
inline void take_over_if_spawned() {
    const char* value = std::getenv(spawned_env);
    if (!value) return;
    const std::string claimed(value);
    ::unsetenv(spawned_env);  // this process's own children are not spawned children
    if (const auto why = takeover_refusal(claimed, ::getauxval(AT_SECURE) != 0, bootstrap_fd)) {
        // Neither become the child (the bootstrap is not believed) nor run main() as if
        // nothing happened (a real spawned child would run the parent's program twice).
        std::fprintf(stderr, "multiprocessing: MULTIPROCESSING_SPAWNED is set but this process will not take "
                     "over as a spawned child: %s; exiting\n", why->c_str());
        ::_exit(1);
    }
    run_bootstrap();
}

}  // namespace multiprocessing::detail
