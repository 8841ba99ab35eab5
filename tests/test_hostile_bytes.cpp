// What a peer that sends arbitrary bytes can make this process do (issue 14, items 4-9):
// a lying frame header, a lying container count, a deeply nested value, an invalid
// optional flag, a forged spawn bootstrap, a ShareableList whose layout another process
// overwrote. Each must end in a clear exception (or a refusal to start), costing memory
// in proportion to the bytes that actually arrived, never a crash or an out-of-bounds
// access. docs/security.md ("Hostile bytes") lists the limits these tests hold.
#include <atomic>
#include <catch2/catch.hpp>

#include <multiprocessing.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <forward_list>
#include <fstream>
#include <list>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <variant>
#include <vector>

namespace mp = multiprocessing;
namespace detail = multiprocessing::detail;

namespace {

// Peak resident memory of this process, in KiB (VmHWM), after reset_peak() forgets the
// peak so far ("5" to clear_refs: Linux 4.0+).
long peak_kib() {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}
bool reset_peak() {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
    clear.flush();
    return static_cast<bool>(clear);
}

void put_u64(std::vector<std::byte>& out, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
}

// False if a write failed. No Catch2 assertion inside: a peer thread calls it, and Catch2's
// assertions are for the test's own thread only.
bool write_all(int fd, const void* data, std::size_t n) {
    const auto* p = static_cast<const char*>(data);
    while (n > 0) {
        const ssize_t k = ::write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k;
        n -= static_cast<std::size_t>(k);
    }
    return true;
}

// A recursive user type: the shape of a message that nests without end.
struct Node {
    std::vector<Node> kids;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(kids);
    }
};

}  // namespace

// ---- item 4: a frame header is only a claim ---------------------------------------------

TEST_CASE("Connection.recv: a header claiming 1 GiB, then nothing, costs far less than 1 GiB") {
    auto [reader, writer] = mp::Pipe<std::vector<int>>();
    // A raw peer: the 8-byte header of a 1 GiB message (within the default limit), four
    // bytes of it, and then it hangs up.
    std::vector<std::byte> frame;
    put_u64(frame, std::uint64_t(1) << 30);
    frame.resize(frame.size() + 4);
    REQUIRE(write_all(writer.fileno(), frame.data(), frame.size()));
    writer.close();

    REQUIRE(reset_peak());
    const long before = peak_kib();
    REQUIRE_THROWS_AS(reader.recv(), mp::EOFError);
    const long grew = peak_kib() - before;
    INFO("peak RSS grew by " << grew << " KiB");
    CHECK(grew < 64 * 1024);  // old main: ~1 GiB (zero-filled before the payload came)
}

TEST_CASE("Connection.recv_bytes: a lying header costs what arrived, and the receive fails cleanly") {
    auto [reader, writer] = mp::Pipe<int>();
    std::vector<std::byte> frame;
    put_u64(frame, std::uint64_t(1) << 30);
    frame.resize(frame.size() + 3 * 1024 * 1024);  // 3 MiB of a claimed 1 GiB
    std::atomic<bool> written{false};
    std::thread peer([&, fd = writer.fileno()] { written = write_all(fd, frame.data(), frame.size()); });
    // The writer's end closes once the peer is done; its copy in this process is the
    // only one, so recv then sees the end of the stream inside the message.
    REQUIRE(reset_peak());
    const long before = peak_kib();
    std::thread closer([&] {
        peer.join();
        writer.close();
    });
    CHECK_THROWS_AS(reader.recv_bytes(), mp::EOFError);
    closer.join();
    CHECK(written.load());
    const long grew = peak_kib() - before;
    INFO("peak RSS grew by " << grew << " KiB");
    CHECK(grew < 64 * 1024);
}

TEST_CASE("Connection: a message over max_message_size() is refused with EMSGSIZE before it is read") {
    auto [a, b] = mp::Pipe<std::vector<char>>();
    CHECK(a.max_message_size() == std::size_t(1) << 30);
    a.set_max_message_size(1024);
    b.send(std::vector<char>(100, 'x'));
    CHECK(a.recv().size() == 100);
    b.send(std::vector<char>(4096, 'y'));
    try {
        (void)a.recv();
        FAIL("an oversized message was accepted");
    } catch (const std::system_error& e) {
        CHECK(e.code().value() == EMSGSIZE);
        CHECK_THAT(e.what(), Catch::Contains("max_message_size"));
    }
    // Its bytes were never read, so the next message cannot be found: the end stops.
    CHECK_FALSE(a.readable());
    CHECK_THROWS_AS(a.recv(), mp::ValueError);
}

TEST_CASE("Connection: honest large messages still arrive whole through the growing buffer") {
    auto [a, b] = mp::Pipe<std::vector<int>>();
    std::vector<int> big(3 * 1024 * 1024 + 17);
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<int>(i * 7);
    auto w = b;
    std::thread sender([&] { w.send(big); });
    const auto got = a.recv();
    sender.join();
    CHECK(got == big);
}

// ---- item 5: a count is only a claim ----------------------------------------------------

TEST_CASE("codec: an 8 MiB message claiming millions of strings costs a small multiple of 8 MiB") {
    std::vector<std::byte> message;
    const std::size_t size = 8 * 1024 * 1024;
    put_u64(message, size - 8);  // a count as large as the bytes left: passed the old check
    message.resize(size, std::byte{0xff});  // and each "string" then claims 2^64-1 bytes
    REQUIRE(reset_peak());
    const long before = peak_kib();
    {
        detail::ByteReader in(message);
        CHECK_THROWS_AS(detail::get<std::vector<std::string>>(in), mp::ProcessError);
    }
    {
        detail::ByteReader in(message);
        CHECK_THROWS_AS(detail::get<std::vector<std::vector<double>>>(in), mp::ProcessError);
    }
    {
        detail::ByteReader in(message);
        CHECK_THROWS_AS(detail::get<std::vector<double>>(in), mp::ProcessError);
    }
    const long grew = peak_kib() - before;
    INFO("peak RSS grew by " << grew << " KiB for an 8 MiB message");
    CHECK(grew < 4 * 8 * 1024);  // old main: 256 MiB (count x sizeof(std::string))
}

TEST_CASE("codec: containers decoded element by element still round-trip") {
    std::vector<std::string> strings{"a", "", std::string(70000, 'z')};
    std::deque<int> dq{1, 2, 3};
    std::list<std::string> ls{"x", "y"};
    std::forward_list<int> fl{7, 8, 9};
    std::unordered_set<int> us{4, 5};
    std::u32string wide = U"wide";
    std::vector<Node> nodes(3);
    const auto bytes = detail::encode_values(strings, dq, ls, fl, us, wide, nodes);
    detail::ByteReader in(bytes);
    CHECK(detail::get<std::vector<std::string>>(in) == strings);
    CHECK(detail::get<std::deque<int>>(in) == dq);
    CHECK(detail::get<std::list<std::string>>(in) == ls);
    CHECK(detail::get<std::forward_list<int>>(in) == fl);
    CHECK(detail::get<std::unordered_set<int>>(in) == us);
    CHECK(detail::get<std::u32string>(in) == wide);
    CHECK(detail::get<std::vector<Node>>(in).size() == 3);
    CHECK(in.remaining() == 0);
}

// ---- item 6: nesting has a limit --------------------------------------------------------

TEST_CASE("codec: a 1.6 MB message nesting 200,000 levels is refused, not a stack overflow") {
    // Node{kids: [Node{kids: [...]}]}: each level is one count of 1, 8 bytes.
    std::vector<std::byte> message;
    for (int i = 0; i < 200'000; ++i) put_u64(message, 1);
    detail::ByteReader in(message);
    try {
        (void)detail::get<Node>(in);
        FAIL("a 200,000-level message was accepted");
    } catch (const mp::ProcessError& e) {
        CHECK_THAT(e.what(), Catch::Contains("deeper than 256"));
    }
}

TEST_CASE("codec: honest nesting (100 levels) still round-trips") {
    Node root;
    Node* at = &root;
    for (int i = 0; i < 100; ++i) {
        at->kids.resize(1);
        at = &at->kids[0];
    }
    const auto bytes = detail::encode_values(root);
    detail::ByteReader in(bytes);
    Node back = detail::get<Node>(in);
    int depth = 0;
    for (const Node* n = &back; !n->kids.empty(); n = &n->kids[0]) ++depth;
    CHECK(depth == 100);
}

// ---- item 7: every flag byte is checked -------------------------------------------------

TEST_CASE("codec: a std::optional whose flag byte is 2 is refused (the manager timeout path)") {
    using Timeout = std::optional<double>;
    const auto offset = detail::optional_flag_offset<Timeout>();
    REQUIRE(offset >= 0);
    for (const Timeout value : {Timeout(1.5), Timeout()}) {
        auto bytes = detail::encode_values(value);
        detail::ByteReader ok(bytes);
        CHECK(detail::get<Timeout>(ok) == value);
        bytes[static_cast<std::size_t>(offset)] = std::byte{2};
        detail::ByteReader bad(bytes);
        CHECK_THROWS_AS(detail::get<Timeout>(bad), mp::ProcessError);
    }
    // Nested in a variant and an array, and through cereal (bool, optional in a struct's
    // serialize): the same refusal.
    using Nested = std::variant<int, std::array<std::optional<int>, 2>>;
    auto nested = detail::encode_values(Nested(std::array<std::optional<int>, 2>{3, std::nullopt}));
    const auto inner = detail::optional_flag_offset<std::optional<int>>();
    REQUIRE(inner >= 0);
    // Find the second optional's flag: it is at sizeof(optional<int>) + inner within the
    // variant's storage, which libstdc++ puts at offset 0.
    nested[sizeof(std::optional<int>) + static_cast<std::size_t>(inner)] = std::byte{2};
    detail::ByteReader in(nested);
    CHECK_THROWS_AS(detail::get<Nested>(in), mp::ProcessError);

    std::vector<std::optional<std::string>> through_cereal{std::string("x")};
    auto c = detail::encode_values(through_cereal);
    c[8] = std::byte{2};  // after the count: the first optional's flag
    detail::ByteReader cin(c);
    CHECK_THROWS_AS(detail::get<decltype(through_cereal)>(cin), mp::ProcessError);
}

TEST_CASE("Connection.recv: a frame whose optional flag is 2 is refused with ProcessError") {
    auto [a, b] = mp::Pipe<std::optional<double>>();
    auto payload = detail::encode_values(std::optional<double>(2.0));
    payload[static_cast<std::size_t>(detail::optional_flag_offset<std::optional<double>>())] = std::byte{2};
    b.send_bytes(payload);
    CHECK_THROWS_AS(a.recv(), mp::ProcessError);
}

// ---- item 8: the spawn bootstrap is believed only from our own parent -------------------

TEST_CASE("spawn: takeover is refused under AT_SECURE and for an fd 3 that is not the named memfd") {
    char path[] = "/tmp/mp-hostile-XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::unlink(path);
    const std::string identity = detail::bootstrap_identity(fd);
    CHECK_FALSE(detail::takeover_refusal(identity, false, fd).has_value());
    const auto secure = detail::takeover_refusal(identity, true, fd);
    REQUIRE(secure.has_value());
    CHECK_THAT(*secure, Catch::Contains("AT_SECURE"));
    CHECK(detail::takeover_refusal("1", false, fd).has_value());  // the old marker: no file named
    CHECK(detail::takeover_refusal(identity, false, 987654).has_value());  // no such fd
    int p[2];
    REQUIRE(::pipe(p) == 0);
    CHECK(detail::takeover_refusal(detail::bootstrap_identity(p[0]), false, p[0]).has_value());  // not a file
    ::close(p[0]);
    ::close(p[1]);
    ::close(fd);
}

TEST_CASE("spawn: a setuid copy of this program, started by nobody with a forged bootstrap, refuses") {
    if (::geteuid() != 0 || ::access("/usr/bin/setpriv", X_OK) != 0) {
        WARN("skipped: needs root (to make a setuid copy) and setpriv (to run it as nobody)");
        return;
    }
    char dir[] = "/tmp/mp-setuid-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    ::chmod(dir, 0755);
    const std::string copy = std::string(dir) + "/victim";
    const std::string log = std::string(dir) + "/stderr";
    REQUIRE(std::system(("cp /proc/" + std::to_string(::getpid()) + "/exe " + copy + " && chmod 4755 " + copy).c_str()) ==
            0);
    // fd 3 is a regular file whose identity the variable names exactly, so only
    // AT_SECURE can be the reason to refuse. (A filesystem mounted nosuid gives no
    // AT_SECURE: then the takeover would go ahead and fail on the file's bytes instead.)
    const int boot = ::open("/etc/hostname", O_RDONLY);
    const int boot_any = boot >= 0 ? boot : ::open("/etc/passwd", O_RDONLY);
    REQUIRE(boot_any >= 0);
    const std::string identity = detail::bootstrap_identity(boot_any);
    ::close(boot_any);
    const std::string file = boot >= 0 ? "/etc/hostname" : "/etc/passwd";
    const std::string cmd = "MULTIPROCESSING_SPAWNED=" + identity +
                            " timeout 20 setpriv --reuid=65534 --regid=65534 --clear-groups " + copy + " 3<" + file +
                            " 2>" + log;
    const int status = std::system(cmd.c_str());
    std::ifstream in(log);
    std::stringstream err;
    err << in.rdbuf();
    std::system(("rm -rf " + std::string(dir)).c_str());
    INFO("stderr: " << err.str());
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 1);
    CHECK_THAT(err.str(), Catch::Contains("AT_SECURE"));
}

// ---- item 9: ShareableList trusts no offset it reads ------------------------------------

TEST_CASE("ShareableList: a layout corrupted after attach gives ValueError, never an out-of-bounds access") {
    mp::shared_memory::ShareableList<std::string> list{"alpha", "beta", "gamma"};
    mp::shared_memory::ShareableList<std::string> attached(list.shm().name());
    // The layout: a 4-word header (magic, count, item size, type hash), count + 1
    // offsets, count lengths, the data. Another process can write any of it.
    mp::shared_memory::SharedMemory raw(list.shm().name());
    auto* words = reinterpret_cast<std::uint64_t*>(raw.buf().data());
    const std::uint64_t saved_offset = words[4 + 2];
    words[4 + 2] = std::uint64_t(1) << 40;  // item 2 starts a terabyte in
    CHECK_THROWS_AS(attached[2].get(), mp::ValueError);
    CHECK_THROWS_AS(attached[1] = std::string("x"), mp::ValueError);  // item 1 now ends there
    CHECK(attached[0].get() == "alpha");                                 // the rest still works
    words[4 + 2] = saved_offset;
    words[4 + 4 + 0] = 1000;  // item 0's length far past its capacity
    CHECK_THROWS_AS(attached.at(0).get(), mp::ValueError);
    words[4 + 4 + 0] = 5;
    CHECK(attached.at(0).get() == "alpha");
    // A count rewritten after attach changes nothing: the list's length was read once.
    words[1] = std::uint64_t(1) << 50;
    CHECK(attached.size() == 3);
    CHECK_THROWS_AS(attached.at(3), mp::IndexError);
    // And a new attach refuses the corrupt count.
    CHECK_THROWS_AS(mp::shared_memory::ShareableList<std::string>(list.shm().name()), mp::ValueError);
    words[1] = 3;
    raw.close();
    list.shm().unlink();
}

TEST_CASE("ShareableList<int>: a count rewritten after attach does not move the bounds") {
    mp::shared_memory::ShareableList<std::int64_t> list{1, 2, 3};
    mp::shared_memory::ShareableList<std::int64_t> attached(list.shm().name());
    mp::shared_memory::SharedMemory raw(list.shm().name());
    auto* words = reinterpret_cast<std::uint64_t*>(raw.buf().data());
    words[1] = std::uint64_t(1) << 40;
    CHECK(attached.size() == 3);
    std::int64_t sum = 0;
    for (std::int64_t v : attached) sum += v;
    CHECK(sum == 6);
    CHECK_THROWS_AS(mp::shared_memory::ShareableList<std::int64_t>(list.shm().name()), mp::ValueError);
    raw.close();
    list.shm().unlink();
}
