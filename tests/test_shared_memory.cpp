// SharedMemory, ShareableList and the resource tracker: a port of the behaviours CPython
// checks in _TestSharedMemory (Lib/test/_test_multiprocessing.py), written for the C++
// API, plus the tracker's own promises (one per tree, no leak after a SIGKILL).
//
// Children report through their exit code (a target that throws exits with 1) or a pipe
// created before start(); no Catch2 macro ever runs in a child. Every name these tests
// choose starts with "mpt_<pid>_", and every name the library makes up is remembered, so
// that each test can check that it left nothing in /dev/shm without being confused by
// other programs using shared memory at the same time.
#include <catch2/catch.hpp>

#include <multiprocessing.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <numeric>
#include <optional>
#include <ranges>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support.hpp"

namespace mp = multiprocessing;
using mp::shared_memory::ShareableList;
using mp::shared_memory::SharedMemory;
using namespace std::chrono_literals;
using mp_test::get_int;
using mp_test::Pipe;
using mp_test::put_bytes;
using mp_test::put_int;

extern char** environ;

namespace {

// ---------------------------------------------------------------------------------
// Names and /dev/shm

std::string our_prefix() { return "mpt_" + std::to_string(::getpid()) + "_"; }

std::string unique_name(const std::string& tag) {
    static int counter = 0;
    return our_prefix() + tag + "_" + std::to_string(++counter);
}

// Names the library made up (psm_...) in this test program or its helpers.
std::set<std::string>& remembered() {
    static std::set<std::string> names;
    return names;
}
const std::string& remember(const std::string& name) {
    remembered().insert(name);
    return name;
}

bool shm_exists(const std::string& name) { return ::access(("/dev/shm/" + name).c_str(), F_OK) == 0; }

std::set<std::string> shm_entries() {
    std::set<std::string> names;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) names.insert(e.path().filename());
    return names;
}

// /dev/shm before a test; leftovers() afterwards: what is new and was made by us.
class ShmSnapshot {
public:
    std::vector<std::string> leftovers() const {
        std::vector<std::string> ours;
        for (const auto& name : shm_entries())
            if (!before_.count(name) && (name.rfind(our_prefix(), 0) == 0 || remembered().count(name)))
                ours.push_back(name);
        return ours;
    }

private:
    std::set<std::string> before_ = shm_entries();
};

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (condition()) return true;
        std::this_thread::sleep_for(10ms);
    }
    return condition();
}

std::string text(std::span<const std::byte> bytes, std::size_t n) {
    return std::string(reinterpret_cast<const char*>(bytes.data()), std::min(n, bytes.size()));
}

void write_text(std::span<std::byte> bytes, std::size_t offset, std::string_view s) {
    std::memcpy(bytes.data() + offset, s.data(), s.size());
}

// ---------------------------------------------------------------------------------
// Reporting from a child through a pipe (plain POSIX: safe in a child).

void put_str(int fd, const std::string& s) {
    put_int(fd, static_cast<std::int64_t>(s.size()));
    put_bytes(fd, s.data(), s.size());
}

std::optional<std::string> get_str(int fd) {
    auto n = get_int(fd);
    if (!n || *n < 0 || *n > 4096) return std::nullopt;
    std::string s(static_cast<std::size_t>(*n), '\0');
    std::size_t got = 0;
    while (got < s.size()) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 5000) <= 0) return std::nullopt;
        ssize_t k = ::read(fd, s.data() + got, s.size() - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return std::nullopt;
        got += static_cast<std::size_t>(k);
    }
    return s;
}

void check_in_child(bool ok, const char* what) {
    if (!ok) throw std::runtime_error(what);
}

// ---------------------------------------------------------------------------------
// Child targets

void child_attach_by_name_and_write(std::string name) {
    SharedMemory shm(name);
    check_in_child(text(shm.buf(), 6) == "parent", "the child did not see the parent's bytes");
    write_text(shm.buf(), 100, "howdy");
    shm.close();
}

void child_write_through_handle(SharedMemory shm) {
    check_in_child(text(shm.buf(), 6) == "parent", "the child did not see the parent's bytes");
    write_text(shm.buf(), 100, "HELLO");
    shm.close();  // this process's mapping only
}

void child_create_untracked(int report_fd) {
    SharedMemory shm(std::nullopt, /*create=*/true, 64, /*track=*/false);
    write_text(shm.buf(), 0, "persist");
    put_str(report_fd, shm.name());
}

void child_create_tracked(int report_fd) {
    SharedMemory shm(std::nullopt, /*create=*/true, 64);
    write_text(shm.buf(), 0, "belongs");
    put_str(report_fd, shm.name());
    put_int(report_fd, mp::detail::resource_tracker().pid().value_or(-1));
}

void child_update_list(ShareableList<int> sl) {
    check_in_child(sl[0] == 1, "the child did not see the parent's item");
    sl[0] = 100;
    sl.at(-1) = sl.at(-1) + 1000;
}

void child_update_list_by_name(std::string name) {
    ShareableList<std::string> sl(name);
    check_in_child(sl[1] == "from parent", "the child did not see the parent's string");
    sl[0] = "from child";
}

// ---------------------------------------------------------------------------------
// The helper program (tests/helpers/shm_orphan.cpp), a process tree of its own.
//
// While one runs, this process is a child subreaper: the helper's tracker and child,
// orphaned by its SIGKILL, become our children, so that we can see how the tracker ends
// and leave no zombie behind (not every container's init reaps them).

struct Report {
    std::string name;
    pid_t tracker = 0;
    pid_t child = 0;
};

// The status of our child `pid`, or nullopt if it has not ended within 10 s.
std::optional<int> wait_for_exit(pid_t pid) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    for (;;) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) return std::nullopt;
        if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
        std::this_thread::sleep_for(10ms);
    }
}

class Helper {
public:
    explicit Helper(const char* mode) {
        REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
        int in[2], out[2], err[2];
        REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
        posix_spawn_file_actions_t actions;
        ::posix_spawn_file_actions_init(&actions);
        ::posix_spawn_file_actions_adddup2(&actions, in[0], 0);
        ::posix_spawn_file_actions_adddup2(&actions, out[1], 1);
        ::posix_spawn_file_actions_adddup2(&actions, err[1], 2);
        char* argv[] = {const_cast<char*>(MP_TEST_SHM_ORPHAN), const_cast<char*>(mode), nullptr};
        const int rc = ::posix_spawn(&pid_, MP_TEST_SHM_ORPHAN, &actions, nullptr, argv, environ);
        ::posix_spawn_file_actions_destroy(&actions);
        ::close(in[0]);
        ::close(out[1]);
        ::close(err[1]);
        stdin_ = in[1];
        stdout_ = out[0];
        stderr_ = err[0];
        if (rc != 0) pid_ = -1;
        REQUIRE(rc == 0);
    }
    Helper(const Helper&) = delete;
    Helper& operator=(const Helper&) = delete;
    ~Helper() {
        close_stdin();
        if (stdout_ >= 0) ::close(stdout_);
        if (stderr_ >= 0) ::close(stderr_);
        // Whatever a failed test left running of that tree.
        for (pid_t* pid : {&pid_, &report_.child, &report_.tracker}) {
            if (*pid <= 0) continue;
            ::kill(*pid, SIGKILL);
            ::waitpid(*pid, nullptr, 0);
        }
        ::prctl(PR_SET_CHILD_SUBREAPER, 0);
    }

    // What the helper printed; an empty name if nothing came within 10 s.
    const Report& read_report() {
        std::string line;
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        char c;
        while (std::chrono::steady_clock::now() < deadline) {
            pollfd p{stdout_, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            ssize_t k = ::read(stdout_, &c, 1);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0 || c == '\n') break;
            line += c;
        }
        std::istringstream in(line);
        int tracker = 0, child = 0;
        in >> report_.name >> tracker >> child;
        report_.tracker = tracker;
        report_.child = child;
        return report_;
    }

    // The helper's own end: its wait status.
    std::optional<int> wait() { return reap(pid_); }
    // How the tracker ended (it is our child now); nullopt if it still runs after 10 s.
    std::optional<int> wait_tracker() { return reap(report_.tracker); }
    std::optional<int> wait_child() { return reap(report_.child); }

    void close_stdin() {
        if (stdin_ >= 0) ::close(stdin_);
        stdin_ = -1;
    }

    // Everything written to its stdout/stderr until every process holding it (the
    // helper, its child, its tracker) is gone; nullopt if that does not happen in 10 s.
    std::optional<std::string> rest_of_stdout() { return read_to_eof(stdout_); }
    std::optional<std::string> all_of_stderr() { return read_to_eof(stderr_); }

private:
    static std::optional<int> reap(pid_t& pid) {
        if (pid <= 0) return std::nullopt;
        auto status = wait_for_exit(pid);
        if (status) pid = 0;
        return status;
    }

    static std::optional<std::string> read_to_eof(int fd) {
        std::string all;
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        char buf[512];
        while (std::chrono::steady_clock::now() < deadline) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            ssize_t k = ::read(fd, buf, sizeof buf);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) return all;
            all.append(buf, static_cast<std::size_t>(k));
        }
        return std::nullopt;
    }

    pid_t pid_ = -1;
    Report report_;
    int stdin_ = -1, stdout_ = -1, stderr_ = -1;
};

bool exited_cleanly(std::optional<int> status) { return status && WIFEXITED(*status) && WEXITSTATUS(*status) == 0; }
// Dead, and every thread of it too. A zombie leader may still have a thread exiting (a
// sanitizer runtime gives the tracker a background thread), whose exit is what finally
// closes the process's fds.
bool fully_dead(pid_t pid) {
    if (!mp_test::pid_gone(pid)) return false;
    std::error_code ec;
    std::size_t threads = 0;
    for ([[maybe_unused]] const auto& e :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec))
        ++threads;
    return threads <= 1;
}

bool killed_by_sigkill(std::optional<int> status) {
    return status && WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL;
}

struct Point {
    double x, y;
    friend bool operator==(const Point&, const Point&) = default;
};

}  // namespace

static_assert(mp::detail::process_shared_handle<SharedMemory>);
static_assert(mp::detail::process_shared_handle<ShareableList<int>>);
static_assert(std::random_access_iterator<ShareableList<int>::iterator>);
static_assert(std::ranges::random_access_range<ShareableList<std::string>>);

// =================================================================================
// SharedMemory

TEST_CASE("SharedMemory: create, write, and attach by name in the same process") {
    ShmSnapshot snapshot;
    const std::string name = unique_name("basics");
    SharedMemory sms(name, /*create=*/true, 512);
    CHECK(sms.name() == name);
    CHECK(sms.size() == 512);
    CHECK(sms.buf().size() == 512);
    CHECK(shm_exists(name));
    CHECK(std::all_of(sms.buf().begin(), sms.buf().end(), [](std::byte b) { return b == std::byte{0}; }));

    sms.buf()[0] = std::byte{42};
    SharedMemory also(name);
    CHECK(also.buf()[0] == std::byte{42});
    write_text(also.buf(), 1, "both ways");
    CHECK(text(sms.buf().subspan(1), 9) == "both ways");
    also.close();

    // Attaching takes the segment's own size, whatever size is asked for.
    SharedMemory same(name, /*create=*/false, 20 * 512);
    CHECK(same.size() == 512);
    same.close();

    sms.close();
    sms.unlink();
    CHECK_FALSE(shm_exists(name));
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("SharedMemory: a child attaching by name and the parent see each other's bytes") {
    ShmSnapshot snapshot;
    SharedMemory sms(std::nullopt, /*create=*/true, 512);
    remember(sms.name());
    write_text(sms.buf(), 0, "parent");

    mp::Process p(child_attach_by_name_and_write, sms.name());
    p.start();
    p.join();
    CHECK(p.exitcode() == 0);
    CHECK(text(sms.buf().subspan(100), 5) == "howdy");

    sms.unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("SharedMemory: passed as a Process argument, it is the same segment in the child") {
    ShmSnapshot snapshot;
    SharedMemory sms(std::nullopt, /*create=*/true, 512);
    remember(sms.name());
    write_text(sms.buf(), 0, "parent");

    mp::Process p(child_write_through_handle, sms);
    p.start();
    p.join();
    CHECK(p.exitcode() == 0);
    // The child's close() unmapped its own copy, not ours.
    CHECK(text(sms.buf().subspan(100), 5) == "HELLO");

    sms.unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("SharedMemory: creating a name that exists throws EEXIST naming the segment") {
    ShmSnapshot snapshot;
    const std::string name = unique_name("collide");
    SharedMemory first(name, /*create=*/true, 64);
    write_text(first.buf(), 0, "first");
    try {
        SharedMemory second(name, /*create=*/true, 128);
        FAIL("creating an existing name must throw");
    } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::file_exists);
        CHECK_THAT(e.what(), Catch::Contains(name));
    }
    // The failed attempt did not touch the existing segment.
    REQUIRE(shm_exists(name));
    CHECK(text(SharedMemory(name).buf(), 5) == "first");
    first.unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("SharedMemory: attaching to a missing name throws ENOENT naming it") {
    const std::string name = unique_name("notthere");
    try {
        SharedMemory missing(name);
        FAIL("attaching to a missing name must throw");
    } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::no_such_file_or_directory);
        CHECK_THAT(e.what(), Catch::Contains(name));
    }
    CHECK_FALSE(shm_exists(name));
}

TEST_CASE("SharedMemory: invalid arguments are ValueError") {
    ShmSnapshot snapshot;
    CHECK_THROWS_AS(SharedMemory(std::nullopt, /*create=*/true, 0), mp::ValueError);
    CHECK_THROWS_WITH(SharedMemory(std::nullopt, /*create=*/true), Catch::Contains("'size' must be a positive number"));
    CHECK_THROWS_AS(SharedMemory(unique_name("zero"), /*create=*/true, 0), mp::ValueError);
    // No name is only for create=true (Python's "'name' can only be None if create=True").
    CHECK_THROWS_AS(SharedMemory(), mp::ValueError);
    CHECK_THROWS_AS(SharedMemory(std::string("bad\0name", 8), /*create=*/true, 8), mp::ValueError);
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("SharedMemory: unlink removes the name, mappings stay usable, a second unlink is ENOENT") {
    ShmSnapshot snapshot;
    const std::string name = unique_name("dblunlink");
    SharedMemory uno(name, /*create=*/true, 5000);
    SharedMemory duo(name);
    duo.unlink();
    CHECK_FALSE(shm_exists(name));
    CHECK_THROWS_AS(SharedMemory(name), std::system_error);

    // Memory already mapped outlives the name.
    write_text(uno.buf(), 0, "still here");
    CHECK(text(duo.buf(), 10) == "still here");

    try {
        uno.unlink();
        FAIL("a second unlink must throw");
    } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::no_such_file_or_directory);
        CHECK_THAT(e.what(), Catch::Contains(name));
    }
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("SharedMemory: close() unmaps for every copy in this process, buf() then throws ValueError") {
    ShmSnapshot snapshot;
    SharedMemory sms(std::nullopt, /*create=*/true, 100);
    remember(sms.name());
    SharedMemory copy = sms;
    sms.close();
    CHECK_THROWS_AS(sms.buf(), mp::ValueError);
    CHECK_THROWS_AS(copy.buf(), mp::ValueError);
    CHECK_THROWS_WITH(copy.buf(), Catch::Contains(sms.name()));
    // What is not the memory stays: the name, the size, and unlink().
    CHECK(copy.size() == 100);
    CHECK(copy.name() == sms.name());
    sms.close();  // twice is harmless
    // The segment itself lives on: attach again.
    SharedMemory again(sms.name());
    CHECK(again.size() == 100);
    copy.unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("SharedMemory: copies share one mapping, and a moved-from handle stays usable") {
    ShmSnapshot snapshot;
    SharedMemory sms(std::nullopt, /*create=*/true, 64);
    remember(sms.name());
    SharedMemory copy = sms;
    CHECK(copy.buf().data() == sms.buf().data());
    SharedMemory moved = std::move(copy);
    CHECK(moved.buf().data() == sms.buf().data());
    CHECK(copy.buf().data() == sms.buf().data());
    // A separate attach is a separate mapping of the same bytes.
    SharedMemory attached(sms.name());
    CHECK(attached.buf().data() != sms.buf().data());
    sms.buf()[3] = std::byte{7};
    CHECK(attached.buf()[3] == std::byte{7});
    sms.unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("SharedMemory: names made up for create have Python's form and differ") {
    ShmSnapshot snapshot;
    std::vector<SharedMemory> segments;
    std::set<std::string> names;
    for (int i = 0; i < 8; ++i) {
        segments.emplace_back(std::nullopt, /*create=*/true, 1);
        const std::string& name = remember(segments.back().name());
        CHECK(name.rfind("psm_", 0) == 0);
        CHECK(name.size() <= 14);  // Python's _SHM_SAFE_NAME_LENGTH
        names.insert(name);
    }
    CHECK(names.size() == 8);
    for (auto& s : segments) s.unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("SharedMemory: track=false keeps a segment after the child that created it exits") {
    ShmSnapshot snapshot;
    Pipe pipe;
    mp::Process p(child_create_untracked, pipe.w);
    p.start();
    auto name = get_str(pipe.r);
    p.join();
    REQUIRE(name);
    remember(*name);
    CHECK(p.exitcode() == 0);
    REQUIRE(shm_exists(*name));
    SharedMemory attached(*name);
    CHECK(text(attached.buf(), 7) == "persist");
    attached.unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("SharedMemory: a tracked segment created by a child is the tree's: same tracker, outlives the child") {
    ShmSnapshot snapshot;
    // This process's tracker runs before the child is forked, so the child inherits it.
    SharedMemory mine(std::nullopt, /*create=*/true, 8);
    remember(mine.name());
    const auto tracker = mp::detail::resource_tracker().pid();
    REQUIRE(tracker);

    Pipe pipe;
    mp::Process p(child_create_tracked, pipe.w);
    p.start();
    auto name = get_str(pipe.r);
    auto child_tracker = get_int(pipe.r);
    p.join();
    REQUIRE(name);
    remember(*name);
    CHECK(p.exitcode() == 0);
    CHECK(child_tracker == *tracker);
    // The child exited without unlink(): the segment stays while the tree lives (the
    // parent may be its user), and unlinking it here tells the same tracker to forget it.
    REQUIRE(shm_exists(*name));
    SharedMemory attached(*name);
    CHECK(text(attached.buf(), 7) == "belongs");
    attached.unlink();
    mine.unlink();
    CHECK(mp::detail::resource_tracker().pid() == tracker);
    CHECK(snapshot.leftovers().empty());
}

// =================================================================================
// The resource tracker

TEST_CASE("Resource tracker: not a listed child, holds only its socket and stderr, ignores SIGINT/SIGTERM/SIGHUP") {
    ShmSnapshot snapshot;
    SharedMemory sms(std::nullopt, /*create=*/true, 8);
    remember(sms.name());
    const auto tracker = mp::detail::resource_tracker().pid();
    REQUIRE(tracker);

    for (const auto& child : mp::active_children()) CHECK(child.pid() != *tracker);

    // A tracker just forked may not have closed what it inherited yet: give it a moment.
    std::set<std::string> fds;
    for (const auto until = std::chrono::steady_clock::now() + 5s;;) {
        fds.clear();
        std::error_code ec;
        for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(*tracker) + "/fd", ec))
            fds.insert(e.path().filename());
        REQUIRE_FALSE(ec);
        if (fds == std::set<std::string>{"2", "3"} || std::chrono::steady_clock::now() > until) break;
        std::this_thread::sleep_for(10ms);
    }
    CHECK(fds.count("3") == 1);
    fds.erase("2");
    fds.erase("3");
    CHECK(fds.empty());

    for (int sig : {SIGINT, SIGTERM, SIGHUP}) REQUIRE(::kill(*tracker, sig) == 0);
    // A signal whose default action kills would do so at once; give it time to (not) happen.
    std::this_thread::sleep_for(200ms);
    CHECK_FALSE(mp_test::pid_gone(*tracker));

    SharedMemory another(std::nullopt, /*create=*/true, 8);
    remember(another.name());
    CHECK(mp::detail::resource_tracker().pid() == tracker);
    another.unlink();
    sms.unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("Resource tracker: a killed tracker is reaped and replaced at the next tracked create") {
    ShmSnapshot snapshot;
    mp::detail::resource_tracker().ensure_running();
    const auto old_tracker = mp::detail::resource_tracker().pid();
    REQUIRE(old_tracker);
    REQUIRE(::kill(*old_tracker, SIGKILL) == 0);
    REQUIRE(wait_until([&] { return fully_dead(*old_tracker); }, 10000ms));

    // (This prints the tracker's "relaunching" warning on stderr, as Python does.)
    SharedMemory sms(std::nullopt, /*create=*/true, 8);
    remember(sms.name());
    const auto new_tracker = mp::detail::resource_tracker().pid();
    REQUIRE(new_tracker);
    CHECK(*new_tracker != *old_tracker);
    CHECK_FALSE(mp_test::pid_gone(*new_tracker));
    // Reaped: not even a zombie is left.
    CHECK((::kill(*old_tracker, 0) == -1 && errno == ESRCH));
    sms.unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("Leak: a SIGKILLed creator's segment is unlinked by its tracker, which warns and exits") {
    ShmSnapshot snapshot;
    Helper helper("solo");
    helper.close_stdin();
    const Report& report = helper.read_report();
    const std::string name = report.name;
    REQUIRE_FALSE(name.empty());
    REQUIRE(report.tracker > 0);
    remember(name);
    CHECK(killed_by_sigkill(helper.wait()));

    CHECK(wait_until([&] { return !shm_exists(name); }, 10000ms));
    CHECK(exited_cleanly(helper.wait_tracker()));
    // One warning naming the segment; and the tracker never held stdout.
    auto err = helper.all_of_stderr();
    REQUIRE(err);
    CHECK_THAT(*err, Catch::Contains("leaked shared_memory segment '" + name + "'"));
    CHECK(helper.rest_of_stdout() == std::string());
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("Leak: a segment lives while any process of its tree does, and goes with the last") {
    ShmSnapshot snapshot;
    Helper helper("tree");
    const Report& report = helper.read_report();
    const std::string name = report.name;
    REQUIRE_FALSE(name.empty());
    REQUIRE(report.tracker > 0);
    REQUIRE(report.child > 0);
    remember(name);
    CHECK(killed_by_sigkill(helper.wait()));

    // The creator is dead, but its child still holds the tracker's socket: nothing is
    // unlinked yet, however long we wait.
    std::this_thread::sleep_for(300ms);
    REQUIRE(shm_exists(name));
    {
        SharedMemory attached(name);  // untracked by us: attaching never registers
        CHECK(text(attached.buf(), 6) == "orphan");
    }

    helper.close_stdin();  // the child's cue to SIGKILL itself
    CHECK(killed_by_sigkill(helper.wait_child()));
    CHECK(wait_until([&] { return !shm_exists(name); }, 10000ms));
    CHECK(exited_cleanly(helper.wait_tracker()));
    auto err = helper.all_of_stderr();
    REQUIRE(err);
    CHECK_THAT(*err, Catch::Contains(name));
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("Leak: a track=false segment outlives its creator's whole tree") {
    ShmSnapshot snapshot;
    Helper helper("untracked");
    helper.close_stdin();
    const Report& report = helper.read_report();
    const std::string name = report.name;
    REQUIRE_FALSE(name.empty());
    CHECK(report.tracker == 0);  // track=false starts no tracker
    remember(name);
    CHECK(killed_by_sigkill(helper.wait()));
    // Everything of that tree is gone once nobody holds its stderr any more.
    auto err = helper.all_of_stderr();
    REQUIRE(err);
    CHECK(err->empty());

    REQUIRE(shm_exists(name));
    SharedMemory attached(name);
    CHECK(text(attached.buf(), 6) == "orphan");
    attached.unlink();
    CHECK(snapshot.leftovers().empty());
}

// =================================================================================
// ShareableList

TEST_CASE("ShareableList<int>: items, indexing, iteration, count and index") {
    ShmSnapshot snapshot;
    ShareableList<int> sl{1, 2, 3, 42, 42};
    remember(sl.shm().name());
    CHECK(sl.size() == 5);
    CHECK(sl[0] == 1);
    CHECK(sl.at(-1) == 42);
    CHECK(sl.at(-5) == 1);
    CHECK_THROWS_AS(sl.at(5), mp::IndexError);
    CHECK_THROWS_AS(sl.at(-6), mp::IndexError);
    CHECK_THROWS_AS(sl.at(7) = 2, mp::IndexError);

    sl[3] = 7;
    CHECK(sl[3] == 7);
    sl[2] = sl[0];  // assigns the value
    CHECK(sl[2] == 1);
    int read = sl[1];
    CHECK(read == 2);

    std::vector<int> all(sl.begin(), sl.end());
    CHECK(all == std::vector<int>{1, 2, 1, 7, 42});
    CHECK(std::ranges::count(sl, 1) == 2);

    CHECK(sl.count(1) == 2);
    CHECK(sl.count(42) == 1);
    CHECK(sl.count(1000) == 0);
    CHECK(sl.index(7) == 3);
    CHECK(sl.index(1) == 0);
    CHECK_THROWS_AS(sl.index(1000), mp::ValueError);

    // Attached by name: the same items, both ways.
    ShareableList<int> tethered(sl.shm().name());
    CHECK(tethered.size() == 5);
    tethered.at(-1) = 880;
    CHECK(sl.at(-1) == 880);
    sl[0] = -1;
    CHECK(tethered[0] == -1);

    // A copy of the handle is the same list.
    ShareableList<int> copy = sl;
    copy[1] = 22;
    CHECK(sl[1] == 22);

    sl.shm().unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("ShareableList: doubles and a plain struct, from a range and with a chosen name") {
    ShmSnapshot snapshot;
    const std::string name = unique_name("doubles");
    std::vector<double> values{-273.154, 0.5, 1e300};
    ShareableList<double> d(values, name);
    CHECK(d.shm().name() == name);
    CHECK(std::vector<double>(d.begin(), d.end()) == values);
    d[1] = 2.25;
    CHECK(ShareableList<double>(name)[1] == 2.25);

    ShareableList<int> from_view(std::views::iota(0, 10));
    remember(from_view.shm().name());
    CHECK(from_view.size() == 10);
    CHECK(from_view.at(-1) == 9);

    ShareableList<Point> points{{1.875, -6.25}, {-5.75, 2.0}};
    remember(points.shm().name());
    Point p = points[1];
    CHECK(p == Point{-5.75, 2.0});
    points[0] = Point{3, 4};
    CHECK(points.index(Point{3, 4}) == 0);
    CHECK(ShareableList<Point>(points.shm().name())[0] == Point{3, 4});

    d.shm().unlink();
    from_view.shm().unlink();
    points.shm().unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("ShareableList<std::string>: fixed capacity per item, longer strings are ValueError") {
    ShmSnapshot snapshot;
    ShareableList<std::string> sl{"howdy", "", "encod\xc3\xa9s", std::string("nul\0in", 6)};
    remember(sl.shm().name());
    CHECK(sl.size() == 4);
    CHECK(sl[0] == "howdy");
    CHECK(sl[1] == "");
    CHECK(sl[2] == "encod\xc3\xa9s");
    CHECK(sl[3].get() == std::string("nul\0in", 6));

    // Capacity is Python's: 8 * (len / 8 + 1), so "howdy" has 8 bytes and "" has 8.
    sl[0] = "encod\xc3\xa9s";  // exactly 8 bytes
    CHECK(sl[0] == "encod\xc3\xa9s");
    CHECK_THROWS_AS(sl[0] = "encod\xc3\xa9" "es", mp::ValueError);
    CHECK_THROWS_WITH(sl[1] = "far too many", Catch::Contains("exceeds available storage"));
    CHECK(sl[0] == "encod\xc3\xa9s");  // a failed assignment changes nothing
    CHECK(sl[1] == "");
    sl[1] = "some";
    CHECK(sl[1] == "some");
    sl[0] = "a";  // shorter is fine, and is read back at its own length
    CHECK(sl[0] == "a");

    CHECK(sl.count("some") == 1);
    CHECK(sl.index("encod\xc3\xa9s") == 2);
    CHECK_THROWS_AS(sl.index("100"), mp::ValueError);

    ShareableList<std::string> tethered(sl.shm().name());
    CHECK(std::vector<std::string>(tethered.begin(), tethered.end()) ==
          std::vector<std::string>{"a", "some", "encod\xc3\xa9s", std::string("nul\0in", 6)});

    sl.shm().unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("ShareableList: changes made by a child are seen by the parent") {
    ShmSnapshot snapshot;
    ShareableList<int> numbers{1, 2, 3};
    remember(numbers.shm().name());
    mp::Process p(child_update_list, numbers);
    p.start();
    p.join();
    CHECK(p.exitcode() == 0);
    CHECK(std::vector<int>(numbers.begin(), numbers.end()) == std::vector<int>{100, 2, 1003});

    ShareableList<std::string> words{"from parent", "from parent"};
    remember(words.shm().name());
    mp::Process q(child_update_list_by_name, words.shm().name());
    q.start();
    q.join();
    CHECK(q.exitcode() == 0);
    CHECK(words[0] == "from child");

    numbers.shm().unlink();
    words.shm().unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("ShareableList: attaching as the wrong type, or to something else, is ValueError") {
    ShmSnapshot snapshot;
    ShareableList<int> ints{1, 2, 3};
    const std::string name = remember(ints.shm().name());
    CHECK_THROWS_AS(ShareableList<double>(name), mp::ValueError);  // another size
    CHECK_THROWS_AS(ShareableList<float>(name), mp::ValueError);   // same size, another type
    CHECK_THROWS_WITH(ShareableList<std::string>(name), Catch::Contains("another item type"));

    SharedMemory plain(std::nullopt, /*create=*/true, 64);
    remember(plain.name());
    write_text(plain.buf(), 0, "not a list at all");
    CHECK_THROWS_WITH(ShareableList<int>(plain.name()), Catch::Contains("does not hold a ShareableList"));
    SharedMemory tiny(std::nullopt, /*create=*/true, 4);
    remember(tiny.name());
    CHECK_THROWS_AS(ShareableList<int>(tiny.name()), mp::ValueError);
    CHECK_THROWS_AS(ShareableList<int>(unique_name("nolist")), std::system_error);

    ints.shm().unlink();
    plain.unlink();
    tiny.unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("ShareableList: an empty list, and a closed one") {
    ShmSnapshot snapshot;
    ShareableList<int> empty_list;
    remember(empty_list.shm().name());
    CHECK(empty_list.size() == 0);
    CHECK(empty_list.empty());
    CHECK(empty_list.count(0) == 0);
    CHECK_THROWS_AS(empty_list.index(0), mp::ValueError);
    CHECK(empty_list.begin() == empty_list.end());
    CHECK(ShareableList<int>(empty_list.shm().name()).size() == 0);

    empty_list.shm().close();
    CHECK_THROWS_AS(empty_list.size(), mp::ValueError);
    empty_list.shm().unlink();
    CHECK(snapshot.leftovers().empty());
}

TEST_CASE("No segment made by these tests is left in /dev/shm") {
    std::vector<std::string> left;
    for (const auto& name : shm_entries())
        if (name.rfind(our_prefix(), 0) == 0 || remembered().count(name)) left.push_back(name);
    CHECK(left.empty());
}
