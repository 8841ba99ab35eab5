// libFuzzer target: a manager server's side of a connection, fed hostile bytes.
//
// An input is one mode byte and then the byte stream a client would send after the
// handshake: frames (u64 little-endian length, payload), each payload one request. The
// stream goes through a socketpair into the server's own FrameChannel (the frame parser,
// with a size limit: see max_request_bytes() below), and each frame to
// ServerCore::handle() (parse_request, then the argument decoding of what is registered
// below), as serve_connection() does, minus the sending of the replies. The replies are
// checked instead, and at the end that the connection's objects were all released.
//
//   mode bit 0   0: a fresh connection (the first request must be hello);
//                1: the connection has already said hello, so the first frame already
//                   reaches create/call and the argument decoders.
//   mode bit 1   1: a BaseManager's server (serve_builtins = false).
//
// Every input gets a fresh ServerCore (objects ids start at 1 each time, so a seed's
// "call object 1" reaches the object its "create" made) and one ConnectionState.
//
// Built and run by .ci/fuzz (clang++ -fsanitize=fuzzer,address,undefined). Also:
//   fuzz_manager_protocol --write-corpus=DIR   writes the seeds into DIR: valid request
//                                              streams, and what the fuzzer found
//                                              (seed-regress-*), so every run goes
//                                              through the fixes
//   fuzz_manager_protocol --write-dict=FILE    writes a libFuzzer dictionary of the
//                                              names the server knows
// tests/fuzz/corpus/ is what --write-corpus wrote (with clang++-14: signatures hash the
// compiler's spelling of the argument types, so another compiler writes other bytes).
// Environment:
//   FUZZ_MANAGER_VERBOSE=1       each request and its reply on stderr
//   FUZZ_MANAGER_REAL_LIMIT=1    the server's own frame size limit (1 GiB), see below
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <bitset>
#include <complex>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <forward_list>
#include <fstream>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <valarray>
#include <variant>
#include <vector>

#include <multiprocessing/managers.hpp>

#include "fuzz_support.hpp"

namespace {

namespace mp = multiprocessing;
namespace mm = multiprocessing::managers;
namespace md = multiprocessing::managers::detail;  // sees detail:: and detail::manager:: too

// ---- what the server serves -------------------------------------------------------------

// A trivially copyable argument: travels as raw bytes.
struct Point {
    double x = 0, y = 0;
};

// A recursive user type, as an argument.
struct Tree {
    std::vector<Tree> kids;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(kids);
    }
};

// A user type with cereal serialization, as an argument.
struct Order {
    std::string item;
    std::uint32_t quantity = 0;
    std::vector<std::string> tags;
    std::optional<double> price;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(item, quantity, tags, price);
    }
};

// A user type served with exposed methods (Python's register(..., exposed=...)).
struct Account {
    std::string owner;
    std::int64_t balance = 0;
    bool frozen = false;
    std::vector<std::string> history;

    void deposit(std::int64_t n) {
        if (frozen) throw mp::ValueError("frozen");
        // Wraps (in unsigned arithmetic) instead of overflowing: the fuzzer deposits anything.
        balance = static_cast<std::int64_t>(static_cast<std::uint64_t>(balance) + static_cast<std::uint64_t>(n));
        history.push_back("deposit");
    }
    std::int64_t get_balance() const { return balance; }
    void rename(std::string name) { owner = std::move(name); }
    void set_frozen(bool yes) { frozen = yes; }
    std::size_t place(Order o) {
        if (o.quantity == 0 && o.item.empty()) throw mp::IndexError("empty order");
        history.push_back(o.item);
        return history.size();
    }
    std::vector<std::string> get_history() const { return history; }
};

// Registers what BaseManager::register_ would (its core_ is private): a function, a
// factory of a built-in type and a user type with exposed methods, plus one function
// per argument type so that every cereal loader below is reachable by name.
template <class R, class... A, class F>
void add_function(md::ServerCore& core, std::string name, F fn) {
    core.add(std::move(name), md::function_registration<R, A...>(std::move(fn)));
}

template <class S, class... A, class F>
void add_object(md::ServerCore& core, std::string name, F factory,
                std::shared_ptr<const md::method_list<S>> methods, bool thread_safe) {
    core.add(std::move(name), md::object_registration<S, A...>(std::move(factory), std::move(methods), thread_safe));
}

std::shared_ptr<const md::method_list<Account>> account_methods() {
    static const auto methods = std::make_shared<const md::method_list<Account>>(
        mm::exposed<Account>(mm::method("deposit", &Account::deposit), mm::method("balance", &Account::get_balance),
                             mm::method("rename", &Account::rename), mm::method("set_frozen", &Account::set_frozen),
                             mm::method("place", &Account::place), mm::method("history", &Account::get_history),
                             mm::method("describe",
                                        [](Account& a, std::pair<std::string, std::int32_t> p) {
                                            return a.owner + p.first + std::to_string(p.second);
                                        }))
            .methods());
    return methods;
}

template <class T>
std::uint64_t count_of(const T& v) {
    return static_cast<std::uint64_t>(std::distance(std::begin(v), std::end(v)));
}

void register_all(md::ServerCore& core) {
    // The brief's three: a function of (int, std::string), a list factory, a user type.
    add_function<std::string, int, std::string>(core, "greet", [](int n, std::string s) {
        return s.substr(0, 16) + std::to_string(n);
    });
    add_object<std::vector<std::string>>(
        core, "strings", [] { return std::make_shared<std::vector<std::string>>(); },
        md::builtin_methods<std::vector<std::string>>(), mm::served<std::vector<std::string>>::thread_safe);
    add_object<Account, std::string>(
        core, "account", [](std::string owner) { return std::make_shared<Account>(Account{std::move(owner)}); },
        account_methods(), false);

    // One decoder each: the name picks the argument type.
    add_function<std::uint64_t, std::map<std::string, std::int64_t>>(core, "f_map", [](auto m) { return count_of(m); });
    add_function<std::uint64_t, std::unordered_map<std::int32_t, std::string>>(core, "f_umap",
                                                                              [](auto m) { return count_of(m); });
    add_function<std::uint64_t, std::set<std::string>>(core, "f_set", [](auto s) { return count_of(s); });
    add_function<std::uint64_t, std::unordered_set<std::int64_t>>(core, "f_uset", [](auto s) { return count_of(s); });
    add_function<std::uint64_t, std::deque<std::string>>(core, "f_deque", [](auto d) { return count_of(d); });
    add_function<std::uint64_t, std::list<std::int16_t>>(core, "f_list", [](auto l) { return count_of(l); });
    add_function<std::uint64_t, std::forward_list<std::string>>(core, "f_flist", [](auto l) { return count_of(l); });
    add_function<std::uint64_t, std::vector<bool>>(core, "f_bools", [](auto v) { return count_of(v); });
    add_function<std::uint64_t, std::vector<std::vector<std::string>>>(core, "f_nested",
                                                                      [](auto v) { return count_of(v); });
    add_function<bool, bool>(core, "f_bool", [](bool b) { return !b; });
    add_function<std::int32_t, std::variant<std::int32_t, std::string, Point>>(
        core, "f_variant", [](auto v) { return static_cast<std::int32_t>(v.index()); });
    add_function<bool, std::optional<std::string>>(core, "f_optional", [](auto o) { return o.has_value(); });
    add_function<std::string, std::tuple<std::int8_t, std::string, double>>(
        core, "f_tuple", [](auto t) { return std::get<1>(t); });
    add_function<std::int32_t, std::array<std::int32_t, 4>>(core, "f_array", [](auto a) { return a[3]; });
    add_function<std::string, std::bitset<70>>(core, "f_bitset", [](auto b) { return b.to_string(); });
    add_function<double, Point>(core, "f_point", [](Point p) { return p.x; });
    add_function<std::uint32_t, Order>(core, "f_order", [](Order o) { return o.quantity; });
    add_function<std::size_t, std::shared_ptr<std::string>>(core, "f_shared",
                                                           [](auto p) { return p ? p->size() : std::size_t(0); });
    add_function<std::size_t, std::valarray<std::int32_t>>(core, "f_valarray", [](auto v) { return v.size(); });
    add_function<std::string, std::vector<std::pair<std::string, std::complex<double>>>>(
        core, "f_pairs", [](auto v) { return v.empty() ? std::string() : v[0].first; });
    // Trivially copyable, so sent as raw bytes at the top level: not every byte pattern
    // is one of their values (an optional's flag, a variant's index, a bool).
    // (A raw std::optional's flag is checked since issue 14: see codec.hpp,
    // check_raw_value; before, UBSan's "load of value 2 ... for type 'bool'".)
    add_function<double, std::optional<double>>(core, "f_opt_double", [](auto o) { return o ? *o : -1.0; });
    // A recursive type: nesting is limited to 256 levels (codec.hpp, InArchive::max_depth).
    add_function<std::size_t, Tree>(core, "f_tree", [](const Tree& t) { return t.kids.size(); });
    add_function<double, std::variant<std::int32_t, double>>(core, "f_variant_raw", [](auto v) {
        return std::visit([](auto x) { return static_cast<double>(x); }, v);
    });
    add_function<int, std::array<bool, 3>>(core, "f_bool_array", [](auto a) {
        int n = 0;
        for (bool b : a) n += b ? 1 : 0;
        return n;
    });
    add_function<void>(core, "f_void", [] {});
}

// SyncManager's built-in types, instantiated as SyncManager::create_builtin does (static
// registrations in BuiltinTypes). Only types whose methods do not block: a Queue's get,
// a Lock taken twice or a Barrier's wait would hang the fuzzer by design, not by a bug.
using Dict = md::InsertionOrderedMap<std::string, std::int32_t>;
[[maybe_unused]] const bool builtins_registered =
    md::Builtin<std::vector<std::int32_t>, std::vector<std::int32_t>>::registered &&
    md::Builtin<std::vector<std::string>, std::vector<std::string>>::registered &&
    md::Builtin<Dict, std::vector<std::pair<std::string, std::int32_t>>>::registered &&
    md::Builtin<md::NamespaceState>::registered && md::Builtin<md::ValueBox<double>, double>::registered &&
    md::Builtin<md::ValueBox<std::string>, std::string>::registered &&
    md::Builtin<md::FixedArray<std::int64_t>, std::vector<std::int64_t>>::registered;

// ---- driving a connection ---------------------------------------------------------------

constexpr std::uint64_t hello_session = 0x5e5510;

// The limit on one request's size. The real server allows md::max_request_bytes (1 GiB),
// but FrameChannel::fill allocates (and zero-fills) the buffer for a whole frame as soon
// as its header arrives, so with that limit an 8-byte header costs up to 1 GiB, which
// -malloc_limit_mb=1024 reports at once and every time (reported to the maintainers;
// FUZZ_MANAGER_REAL_LIMIT=1 fuzzes with the server's limit to see it). By default the
// fuzzer uses 1 MiB, more than any input it makes (-max_len is 4096 unless raised), so
// every frame the server would take is still taken.
std::size_t max_request_bytes() {
    static const std::size_t limit =
        std::getenv("FUZZ_MANAGER_REAL_LIMIT") ? md::max_request_bytes : std::size_t(1) << 20;
    return limit;
}

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "fuzz_manager_protocol: invariant broken: %s\n", what);
    std::abort();
}

void check_body(md::Status status, std::span<const std::byte> body, md::ByteReader& r, bool close);

// What a reply must look like, whatever the request was.
void check_reply(const std::vector<std::byte>& out, bool close) {
    const std::size_t header = md::wire::frame_header_size;
    if (out.size() < header + 1) fail("a reply without a status byte");
    const auto status = static_cast<md::Status>(out[header]);
    const std::span<const std::byte> body(out.data() + header + 1, out.size() - header - 1);
    md::ByteReader r(body);
    try {
        check_body(status, body, r, close);
    } catch (...) {
        fail("a reply's body does not decode");
    }
    // And what the client makes of it.
    try {
        (void)md::open_reply(std::span<const std::byte>(out).subspan(header), "fuzz");
    } catch (...) {
    }
}

void check_body(md::Status status, std::span<const std::byte> body, md::ByteReader& r, bool close) {
    switch (status) {
        case md::Status::ok:
            if (close) fail("an ok reply that closes the connection");
            break;
        case md::Status::raised: {
            if (close) fail("a raised reply that closes the connection");
            (void)md::get<md::ExceptionInfo>(r);
            if (r.remaining() != 0) fail("bytes after a raised reply's ExceptionInfo");
            break;
        }
        case md::Status::protocol_error:
            if (!close) fail("a protocol error that keeps the connection");
            if (!body.empty()) {  // empty only when encoding the error failed (out of memory)
                (void)md::get<std::string>(r);
                if (r.remaining() != 0) fail("bytes after a protocol error's text");
            }
            break;
        default:
            fail("a reply with an unknown status");
    }
}

// FUZZ_MANAGER_VERBOSE=1: each request and its reply's status on stderr (for checking
// that the seeds get through, or reading what a crashing input does).
const bool verbose = std::getenv("FUZZ_MANAGER_VERBOSE") != nullptr;

void trace(std::span<const std::byte> request, const std::vector<std::byte>& out) {
    std::string what = "?";
    try {
        const auto v = md::parse_request(request);
        what = "op " + std::to_string(static_cast<int>(v.op)) + " object " + std::to_string(v.object) + " '" +
               std::string(v.name.substr(0, 60)) + "' (" + std::to_string(v.arguments.size()) + " argument bytes)";
    } catch (...) {
    }
    std::string result = "ok";
    try {
        (void)md::open_reply(std::span<const std::byte>(out).subspan(md::wire::frame_header_size), "it");
    } catch (const std::exception& e) {
        result = e.what();
    }
    std::fprintf(stderr, "  %s -> %s\n", what.c_str(), result.substr(0, 200).c_str());
}

void run_connection(std::span<const std::byte> stream, bool said_hello, bool serve_builtins) {
    md::ServerCore core(serve_builtins);
    register_all(core);
    md::ConnectionState state;
    std::vector<std::byte> out;
    bool close = false;
    if (said_hello) {
        std::vector<std::byte> hello;
        md::encode_request(hello, 0, md::Op::hello, hello_session, {});
        core.handle(hello, state, out, md::wire::frame_header_size, close);
        if (close || !state.said_hello) fail("hello refused");
    }

    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) fail("socketpair");
    // The whole stream, then EOF. A stream larger than the socket buffer is cut where the
    // buffer is full (inputs are far smaller: libFuzzer's -max_len is 4096 by default).
    std::size_t sent = 0;
    while (sent < stream.size()) {
        const ssize_t n = ::send(fds[0], stream.data() + sent, stream.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0) break;
        sent += static_cast<std::size_t>(n);
    }
    ::close(fds[0]);

    md::FrameChannel channel{md::net::Socket(fds[1])};
    try {
        for (;;) {
            auto frame = channel.receive(max_request_bytes(), md::Deadline{}, std::chrono::nanoseconds(0),
                                         "fuzz server");
            // A copy of exactly the frame's size, so that ASan sees any read past its end.
            const std::vector<std::byte> request(frame.begin(), frame.end());
            try {
                const md::RequestView v = md::parse_request(request);
                const auto* begin = request.data();
                const auto* end = begin + request.size();
                if (reinterpret_cast<const std::byte*>(v.name.data()) < begin ||
                    reinterpret_cast<const std::byte*>(v.name.data() + v.name.size()) > end ||
                    v.arguments.data() < begin || v.arguments.data() + v.arguments.size() != end)
                    fail("parse_request: a view outside the request");
            } catch (const md::ProtocolError&) {
            }
            auto& reply = channel.out();
            core.handle(request, state, reply, md::wire::frame_header_size, close);
            check_reply(reply, close);
            if (verbose) trace(request, reply);
            if (state.shutdown_requested || close) break;
        }
    } catch (const mp::EOFError&) {
        // The stream ended between frames.
    } catch (const mp::ProcessError&) {
        // A truncated or oversized frame: the server drops the connection.
    }
    core.connection_closed(state);
    // The session was this connection's only one: everything it made is released.
    if (core.object_count() != 0) fail("objects outlive the only session that held them");
}

// ---- seeds ------------------------------------------------------------------------------

class Stream {
public:
    template <class... A>
    Stream& request(md::Op op, std::uint64_t object, std::string_view name, const A&... args) {
        std::vector<std::byte> frame;
        md::encode_request(frame, md::wire::frame_header_size, op, object, name, args...);
        md::wire::encode_frame_header(frame.data(), frame.size() - md::wire::frame_header_size);
        bytes_.insert(bytes_.end(), frame.begin(), frame.end());
        return *this;
    }
    // A request whose argument bytes are given as they are (the signature is A...'s):
    // what a broken or hostile client sends.
    template <class... A>
    Stream& raw(md::Op op, std::uint64_t object, std::string_view name, std::vector<std::byte> arguments) {
        std::vector<std::byte> frame(md::wire::frame_header_size + md::request_header_size(name.size()));
        md::write_request_header(frame.data() + md::wire::frame_header_size, op, object, name,
                                 md::signature_of<A...>());
        frame.insert(frame.end(), arguments.begin(), arguments.end());
        md::wire::encode_frame_header(frame.data(), frame.size() - md::wire::frame_header_size);
        bytes_.insert(bytes_.end(), frame.begin(), frame.end());
        return *this;
    }
    Stream& hello() { return request(md::Op::hello, hello_session, {}); }
    std::vector<std::byte> input(std::uint8_t mode) const {
        std::vector<std::byte> in{std::byte{mode}};
        in.insert(in.end(), bytes_.begin(), bytes_.end());
        return in;
    }

private:
    std::vector<std::byte> bytes_;
};

// Bytes for Stream::raw: values as put() writes them, then anything else.
class Bytes {
public:
    template <class T>
    Bytes& value(const T& v) {
        std::vector<std::byte> b(md::encoded_size(v));
        md::ByteWriter w(b.data());
        md::put(w, v);
        bytes_.insert(bytes_.end(), b.begin(), b.end());
        return *this;
    }
    Bytes& fill(std::size_t n, unsigned char byte) {
        bytes_.insert(bytes_.end(), n, std::byte{byte});
        return *this;
    }
    operator std::vector<std::byte>() const { return bytes_; }

private:
    std::vector<std::byte> bytes_;
};

template <class S, class... A>
std::string builtin() {
    return md::Builtin<S, A...>::key();
}

std::vector<std::pair<std::string, std::vector<std::byte>>> seeds() {
    using md::Op;
    using I = std::int64_t;
    std::vector<std::pair<std::string, std::vector<std::byte>>> s;
    auto add = [&](std::string name, std::uint8_t mode, const Stream& st) { s.emplace_back(std::move(name), st.input(mode)); };

    add("hello", 0, Stream().hello().request(Op::ping, 0, {}));
    add("list-int", 0,
        Stream()
            .hello()
            .request(Op::create, 0, builtin<std::vector<std::int32_t>, std::vector<std::int32_t>>(),
                     std::vector<std::int32_t>{1, 2, 3})
            .request(Op::call, 1, "append", std::int32_t(4))
            .request(Op::call, 1, "insert", I(-1), std::int32_t(5))
            .request(Op::call, 1, "getitem", I(0))
            .request(Op::call, 1, "pop", I(-1))
            .request(Op::call, 1, "sort")
            .request(Op::call, 1, "copy")
            .request(Op::incref, 1, {})
            .request(Op::decref, 1, {}));
    add("list-strings", 1,
        Stream()
            .request(Op::create, 0, "strings")
            .request(Op::call, 1, "append", std::string("x"))
            .request(Op::call, 1, "extend", std::vector<std::string>{"y", "z"})
            .request(Op::call, 1, "index", std::string("y"))
            .request(Op::call, 1, "len"));
    add("builtin-list-strings", 1,
        Stream()
            .request(Op::create, 0, builtin<std::vector<std::string>, std::vector<std::string>>(),
                     std::vector<std::string>{"a"})
            .request(Op::call, 1, "setitem", I(0), std::string("b"))
            .request(Op::call, 1, "contains", std::string("b")));
    add("greet", 0, Stream().hello().request(Op::call_function, 0, "greet", 7, std::string("hi")));
    add("account", 1,
        Stream()
            .request(Op::create, 0, "account", std::string("alice"))
            .request(Op::call, 1, "deposit", I(10))
            .request(Op::call, 1, "rename", std::string("bob"))
            .request(Op::call, 1, "set_frozen", true)
            .request(Op::call, 1, "place", Order{"tea", 2, {"hot"}, 1.5})
            .request(Op::call, 1, "describe", std::pair<std::string, std::int32_t>("n", 3))
            .request(Op::call, 1, "balance")
            .request(Op::call, 1, "history"));
    add("dict", 1,
        Stream()
            .request(Op::create, 0, builtin<Dict, std::vector<std::pair<std::string, std::int32_t>>>(),
                     std::vector<std::pair<std::string, std::int32_t>>{{"a", 1}})
            .request(Op::call, 1, "setitem", std::string("b"), std::int32_t(2))
            .request(Op::call, 1, "get", std::string("a"))
            .request(Op::call, 1, "update", std::vector<std::pair<std::string, std::int32_t>>{{"c", 3}})
            .request(Op::call, 1, "pop", std::string("a"))
            .request(Op::call, 1, "items"));
    add("namespace", 1,
        Stream()
            .request(Op::create, 0, builtin<md::NamespaceState>())
            .request(Op::call, 1, "setattr", std::string("x"), std::uint64_t(42), std::string("int"),
                     std::vector<std::byte>{std::byte{1}, std::byte{0}, std::byte{0}, std::byte{0}})
            .request(Op::call, 1, "getattr", std::string("x"), std::uint64_t(42), std::string("int"))
            .request(Op::call, 1, "names"));
    add("value-array", 1,
        Stream()
            .request(Op::create, 0, builtin<md::ValueBox<double>, double>(), 1.5)
            .request(Op::call, 1, "set", 2.5)
            .request(Op::create, 0, builtin<md::ValueBox<std::string>, std::string>(), std::string("v"))
            .request(Op::call, 2, "get")
            .request(Op::create, 0, builtin<md::FixedArray<std::int64_t>, std::vector<std::int64_t>>(),
                     std::vector<std::int64_t>{1, 2})
            .request(Op::call, 3, "setitem", I(-1), I(9))
            .request(Op::call, 3, "copy"));
    add("functions", 1,
        Stream()
            .request(Op::call_function, 0, "f_map", std::map<std::string, I>{{"k", 1}})
            .request(Op::call_function, 0, "f_umap", std::unordered_map<std::int32_t, std::string>{{1, "v"}})
            .request(Op::call_function, 0, "f_set", std::set<std::string>{"a", "b"})
            .request(Op::call_function, 0, "f_uset", std::unordered_set<I>{1, 2})
            .request(Op::call_function, 0, "f_deque", std::deque<std::string>{"d"})
            .request(Op::call_function, 0, "f_list", std::list<std::int16_t>{1, 2})
            .request(Op::call_function, 0, "f_flist", std::forward_list<std::string>{"f"})
            .request(Op::call_function, 0, "f_bools", std::vector<bool>{true, false})
            .request(Op::call_function, 0, "f_nested", std::vector<std::vector<std::string>>{{"a"}, {}})
            .request(Op::call_function, 0, "f_bool", true)
            .request(Op::call_function, 0, "f_variant", std::variant<std::int32_t, std::string, Point>(std::string("s")))
            .request(Op::call_function, 0, "f_optional", std::optional<std::string>("o"))
            .request(Op::call_function, 0, "f_tuple", std::tuple<std::int8_t, std::string, double>(1, "t", 2.0))
            .request(Op::call_function, 0, "f_array", std::array<std::int32_t, 4>{1, 2, 3, 4})
            .request(Op::call_function, 0, "f_bitset", std::bitset<70>(0x5a5a))
            .request(Op::call_function, 0, "f_point", Point{1, 2})
            .request(Op::call_function, 0, "f_order", Order{"o", 1, {}, std::nullopt})
            .request(Op::call_function, 0, "f_shared", std::make_shared<std::string>("p"))
            .request(Op::call_function, 0, "f_valarray", std::valarray<std::int32_t>{1, 2, 3})
            .request(Op::call_function, 0, "f_pairs",
                     std::vector<std::pair<std::string, std::complex<double>>>{{"c", {1, 2}}})
            .request(Op::call_function, 0, "f_opt_double", std::optional<double>(2.5))
            .request(Op::call_function, 0, "f_variant_raw", std::variant<std::int32_t, double>(1.5))
            .request(Op::call_function, 0, "f_bool_array", std::array<bool, 3>{true, false, true})
            .request(Op::call_function, 0, "f_void"));
    add("errors", 1,
        Stream()
            .request(Op::call, 99, "append", std::int32_t(1))         // no such object
            .request(Op::call_function, 0, "greet", std::string("x"))  // wrong signature
            .request(Op::call_function, 0, "nothing")                  // not registered
            .request(Op::shutdown, 0, {}));
    add("base-manager", 2, Stream().hello().request(Op::create, 0, builtin<md::NamespaceState>()));

    // What the fuzzer found, kept as seeds so that every run goes through the fixes
    // (each must come back as an error reply, not a crash; see codec.hpp).
    using U = std::uint64_t;
    using Nested = std::vector<std::vector<std::string>>;
    using RawVariant = std::variant<std::int32_t, double>;
    add("regress-string-size", 1,  // a std::string claiming 2^51 + 1 bytes: was allocated before reading
        Stream().raw<std::string>(Op::create, 0, "account", Bytes().value(U(1) << 51 | 1).fill(3, 'x')));
    add("regress-container-sizes", 1,
        Stream()
            .raw<Nested>(Op::call_function, 0, "f_nested", Bytes().value(U(1) << 60))
            .raw<std::unordered_map<std::int32_t, std::string>>(Op::call_function, 0, "f_umap",
                                                                Bytes().value(U(1) << 40).fill(8, 0))
            .raw<std::valarray<std::int32_t>>(Op::call_function, 0, "f_valarray", Bytes().value(U(1) << 62)));
    add("regress-bools", 1,  // bools that are neither 0 nor 1: undefined behaviour once read
        Stream()
            .raw<Order>(Op::call_function, 0, "f_order",  // std::optional's flag, as cereal writes it
                        Bytes().value(std::string("o")).value(std::uint32_t(1)).value(U(0)).fill(1, 0xb7))
            .raw<bool>(Op::call_function, 0, "f_bool", Bytes().fill(1, 2))
            .raw<std::vector<bool>>(Op::call_function, 0, "f_bools", Bytes().value(U(1)).fill(1, 5))
            .raw<std::array<bool, 3>>(Op::call_function, 0, "f_bool_array", Bytes().fill(1, 1).fill(1, 9).fill(1, 0)));
    add("regress-variant-index", 1,  // raw variants whose index names no alternative (7, and 255: npos)
        Stream()
            .raw<RawVariant>(Op::call_function, 0, "f_variant_raw", Bytes().fill(sizeof(RawVariant), 7))
            .raw<RawVariant>(Op::call_function, 0, "f_variant_raw", Bytes().fill(sizeof(RawVariant), 0xff)));
    // Issue 14. An optional<double> (every blocking method's timeout) whose flag is 2.
    add("regress-optional-flag", 1,
        Stream().raw<std::optional<double>>(Op::call_function, 0, "f_opt_double",
                                            Bytes().value(2.5).fill(1, 2).fill(sizeof(std::optional<double>) - 9, 0)));
    // A tree 1,000 levels deep (8 bytes a level): was unbounded recursion, and 1.6 MB of
    // it overflowed the server's stack.
    {
        Bytes deep;
        for (int i = 0; i < 1000; ++i) deep.value(U(1));
        add("regress-deep-nesting", 1, Stream().raw<Tree>(Op::call_function, 0, "f_tree", deep));
    }
    // A count of strings as large as the bytes left (passed the old check), each then
    // missing: was count x sizeof(std::string) reserved first (~33x the request).
    add("regress-count-memory", 1,
        Stream().raw<Nested>(Op::call_function, 0, "f_nested", Bytes().value(U(4096)).fill(4096, 0xff)));
    return s;
}

std::vector<std::string> dictionary_words() {
    std::vector<std::string> words = {
        "greet",  "strings", "account", "append",   "extend",  "insert", "pop",     "getitem",    "setitem",
        "delitem", "len",    "copy",    "clear",    "reverse", "remove", "index",   "count",      "contains",
        "sort",   "get",     "set",     "update",   "items",   "keys",   "values",  "setdefault", "setattr",
        "getattr", "hasattr", "delattr", "names",   "deposit", "balance", "rename", "set_frozen", "place",
        "history", "describe", "builtin:"};
    for (const char* f : {"f_map", "f_umap", "f_set", "f_uset", "f_deque", "f_list", "f_flist", "f_bools", "f_nested",
                          "f_bool", "f_variant", "f_optional", "f_tuple", "f_array", "f_bitset", "f_point", "f_order",
                          "f_shared", "f_valarray", "f_pairs", "f_opt_double", "f_variant_raw", "f_bool_array",
                          "f_void", "f_tree"})
        words.emplace_back(f);
    for (auto key : {builtin<std::vector<std::int32_t>, std::vector<std::int32_t>>(),
                     builtin<std::vector<std::string>, std::vector<std::string>>(),
                     builtin<Dict, std::vector<std::pair<std::string, std::int32_t>>>(), builtin<md::NamespaceState>(),
                     builtin<md::ValueBox<double>, double>(), builtin<md::ValueBox<std::string>, std::string>(),
                     builtin<md::FixedArray<std::int64_t>, std::vector<std::int64_t>>()})
        words.push_back(key);
    return words;
}

int write_dict(const std::string& file) {
    std::ofstream f(file, std::ios::trunc);
    for (const auto& w : dictionary_words()) {
        f << '"';
        for (unsigned char c : w) {
            if (c == '"' || c == '\\' || c < 0x20 || c >= 0x7f) {
                char hex[5];
                std::snprintf(hex, sizeof hex, "\\x%02X", c);
                f << hex;
            } else {
                f << c;
            }
        }
        f << "\"\n";
    }
    return f ? 0 : 1;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
    // Before libFuzzer reads its flags: our own modes, which exit.
    fuzz_support::write_corpus_if_asked(*argc, *argv, seeds);
    for (int i = 1; i < *argc; ++i) {
        const std::string_view arg = (*argv)[i];
        if (arg.starts_with("--write-dict=")) std::exit(write_dict(std::string(arg.substr(13))));
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::uint8_t mode = data[0];
    const std::span<const std::byte> stream(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
    run_connection(stream, (mode & 1) != 0, (mode & 2) == 0);
    return 0;
}
