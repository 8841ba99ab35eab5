// What a manager's client and server say to each other, and how a served object's
// methods are found and called. No I/O here: a request is bytes in, a reply is bytes
// out, which is what the server's connections, the fuzz target and the tests drive.
//
// A request (one frame, see wire.hpp):
//   u8 op | u64 object id | u16 name length | name | u64 signature | arguments (codec)
// A reply:
//   u8 status | body: the result (codec) when ok; ExceptionInfo when the call threw.
//
// `signature` is a hash of the argument types the client encoded, so a server that
// expects other types says so instead of decoding garbage.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "codec.hpp"
#include "remote_exception.hpp"

namespace multiprocessing::detail::manager {

// ---- names and fingerprints of types ---------------------------------------------------

// The compiler's own spelling of T, read out of __PRETTY_FUNCTION__ (GCC: "[with T = int;
// ...]", Clang: "[T = int]"). Used to check that client and server agree on a type.
template <class T>
constexpr std::string_view type_name() {
    std::string_view s = __PRETTY_FUNCTION__;
    const auto start = s.find("T = ");
    if (start == std::string_view::npos) return s;
    s.remove_prefix(start + 4);
    int depth = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        if (c == '<' || c == '(' || c == '[') ++depth;
        if (c == '>' || c == ')') --depth;
        if ((c == ';' && depth == 0) || (c == ']' && depth == 0)) return s.substr(0, i);
        if (c == ']') --depth;
    }
    return s;
}

constexpr std::uint64_t fingerprint(std::string_view text) noexcept {
    std::uint64_t h = 14695981039346656037ull;  // FNV-1a
    for (char c : text) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ull;
    }
    return h;
}

// What a method call's arguments are, as the client encodes them and the server decodes them.
template <class... A>
using argument_tuple = std::tuple<std::decay_t<A>...>;

template <class... A>
constexpr std::uint64_t signature_of() noexcept {
    return fingerprint(type_name<argument_tuple<A...>>());
}

// ---- the wire format ------------------------------------------------------------------

enum class Op : std::uint8_t {
    hello = 1,          // the connection belongs to session `object` (a per-process token)
    create = 2,         // name: a registered typeid or callable; returns a new object's id
    call = 3,           // a method of object `object`
    call_function = 4,  // a registered function, by name
    incref = 5,         // this session holds one more reference to `object`
    decref = 6,         // ... one fewer
    shutdown = 7,       // stop the server
    ping = 8,           // nothing: is the server there
};

enum class Status : std::uint8_t { ok = 0, raised = 1, protocol_error = 2 };

inline constexpr std::size_t max_name_length = 1024;

struct RequestView {
    Op op{};
    std::uint64_t object = 0;
    std::string_view name;
    std::uint64_t signature = 0;
    std::span<const std::byte> arguments;
};

// A request that is not one: the connection that sent it gets an error and is closed.
class ProtocolError : public ProcessError {
public:
    using ProcessError::ProcessError;
};

inline constexpr std::size_t request_header_size(std::size_t name_length) {
    return 1 + 8 + 2 + name_length + 8;
}

inline void write_request_header(std::byte* out, Op op, std::uint64_t object, std::string_view name,
                                 std::uint64_t signature) noexcept {
    out[0] = static_cast<std::byte>(op);
    std::memcpy(out + 1, &object, 8);
    const auto length = static_cast<std::uint16_t>(name.size());
    std::memcpy(out + 9, &length, 2);
    if (!name.empty()) std::memcpy(out + 11, name.data(), name.size());
    std::memcpy(out + 11 + name.size(), &signature, 8);
}

// Parses without trusting anything: every length is checked against what arrived.
inline RequestView parse_request(std::span<const std::byte> in) {
    if (in.size() < request_header_size(0))
        throw ProtocolError("manager: a request is shorter than its header (" + std::to_string(in.size()) +
                            " bytes)");
    RequestView r;
    const auto op = static_cast<std::uint8_t>(in[0]);
    if (op < static_cast<std::uint8_t>(Op::hello) || op > static_cast<std::uint8_t>(Op::ping))
        throw ProtocolError("manager: unknown request kind " + std::to_string(op));
    r.op = static_cast<Op>(op);
    std::memcpy(&r.object, in.data() + 1, 8);
    std::uint16_t length = 0;
    std::memcpy(&length, in.data() + 9, 2);
    if (length > max_name_length || in.size() < request_header_size(length))
        throw ProtocolError("manager: a request's name length (" + std::to_string(length) +
                            ") does not fit the request");
    r.name = std::string_view(reinterpret_cast<const char*>(in.data() + 11), length);
    std::memcpy(&r.signature, in.data() + 11 + length, 8);
    r.arguments = in.subspan(request_header_size(length));
    return r;
}

// Encodes a whole request into `out` (reused between calls), leaving `frame_header`
// bytes of room in front for the frame's length. The one encoder of requests (the client
// and the fuzz target's seeds both use it): the arguments go one by one, each with its own
// put(), because that is how the server reads them (get<A>() each, in make_method and
// decode_and_apply). Through cereal's tuple, a trivially copyable std::optional argument
// would come out in cereal's form instead (found by tests/fuzz when this had a twin).
template <class... A>
void encode_request(std::vector<std::byte>& out, std::size_t frame_header, Op op, std::uint64_t object,
                    std::string_view name, const A&... arguments) {
    if (name.size() > max_name_length)
        throw ValueError("manager: the name '" + std::string(name.substr(0, 64)) + "...' is longer than " +
                         std::to_string(max_name_length) + " bytes");
    const std::size_t head = request_header_size(name.size());
    const std::size_t body = (std::size_t(0) + ... + encoded_size(arguments));
    out.resize(frame_header + head + body);
    write_request_header(out.data() + frame_header, op, object, name, signature_of<A...>());
    ByteWriter w(out.data() + frame_header + head);
    (put(w, arguments), ...);
}

// ---- replies --------------------------------------------------------------------------

// A reply being built by the server: the status byte, then the body.
class Reply {
public:
    explicit Reply(std::vector<std::byte>& buffer, std::size_t frame_header)
        : buffer_(buffer), start_(frame_header) {
        buffer_.resize(start_ + 1);
        buffer_[start_] = static_cast<std::byte>(Status::ok);
    }

    template <class T>
    void value(const T& v) {
        const std::size_t at = buffer_.size();
        buffer_.resize(at + encoded_size(v));
        ByteWriter w(buffer_.data() + at);
        put(w, v);
    }

    // Replaces whatever was written with the exception in flight.
    void raised() {
        buffer_.resize(start_ + 1);
        buffer_[start_] = static_cast<std::byte>(Status::raised);
        value(describe_current_exception());
    }

    void protocol_error(const std::string& why) {
        buffer_.resize(start_ + 1);
        buffer_[start_] = static_cast<std::byte>(Status::protocol_error);
        value(why);
    }

    Status status() const noexcept { return static_cast<Status>(buffer_[start_]); }

private:
    std::vector<std::byte>& buffer_;
    std::size_t start_;
};

// On the client: turns a reply's status into the exception the server's call threw.
inline ByteReader open_reply(std::span<const std::byte> reply, std::string_view what) {
    if (reply.empty()) throw ProcessError("manager: an empty reply to " + std::string(what));
    ByteReader r(reply.subspan(1));
    switch (static_cast<Status>(reply[0])) {
        case Status::ok:
            return r;
        case Status::raised:
            std::rethrow_exception(ExceptionRegistry::instance().rebuild(get<ExceptionInfo>(r)));
        case Status::protocol_error:
            throw ProcessError("manager: the server refused " + std::string(what) + ": " + get<std::string>(r));
    }
    throw ProcessError("manager: a reply with an unknown status to " + std::string(what));
}

// ---- methods of served objects --------------------------------------------------------

// How a server calls one method of an S: decode the arguments, call, encode the result.
template <class S>
struct Method {
    std::string name;
    std::uint64_t signature = 0;
    std::string_view signature_text;
    std::function<void(S&, ByteReader&, Reply&)> invoke;
};

template <class F>
struct callable_traits : callable_traits<decltype(&F::operator())> {};
template <class R, class... A>
struct callable_traits<R (*)(A...)> {
    using result = R;
    using arguments = std::tuple<A...>;
};
template <class R, class C, class... A>
struct callable_traits<R (C::*)(A...) const> : callable_traits<R (*)(A...)> {};
template <class R, class C, class... A>
struct callable_traits<R (C::*)(A...)> : callable_traits<R (*)(A...)> {};
template <class R, class C, class... A>
struct callable_traits<R (C::*)(A...) const noexcept> : callable_traits<R (*)(A...)> {};
template <class R, class C, class... A>
struct callable_traits<R (C::*)(A...) noexcept> : callable_traits<R (*)(A...)> {};

template <class S, class R, class Fn, class... A>
Method<S> make_method(std::string name, Fn fn, std::tuple<A...>*) {
    Method<S> m;
    m.name = std::move(name);
    m.signature = signature_of<A...>();
    m.signature_text = type_name<argument_tuple<A...>>();
    m.invoke = [fn](S& self, ByteReader& in, Reply& out) {
        // One value per argument, in order (braced initialization evaluates left to
        // right), as the client writes them.
        argument_tuple<A...> args{get<std::decay_t<A>>(in)...};
        if constexpr (std::is_void_v<R>) {
            std::apply([&](auto&... a) { std::invoke(fn, self, std::move(a)...); }, args);
        } else {
            out.value(std::apply([&](auto&... a) -> R { return std::invoke(fn, self, std::move(a)...); }, args));
        }
    };
    return m;
}

// A method from a member function pointer (`&Counter::add`) or from a callable whose
// first parameter is the object (`[](Counter& c, int n) { ... }`).
template <class S, class F>
Method<S> method_of(std::string name, F fn) {
    if constexpr (std::is_member_function_pointer_v<F>) {
        using traits = callable_traits<F>;
        return make_method<S, typename traits::result>(std::move(name), fn,
                                                       static_cast<typename traits::arguments*>(nullptr));
    } else {
        using traits = callable_traits<std::decay_t<F>>;
        using all = typename traits::arguments;
        static_assert(std::tuple_size_v<all> >= 1, "manager method: the first parameter must be the object (S&)");
        return [&]<class First, class... Rest>(std::tuple<First, Rest...>*) {
            static_assert(std::is_same_v<std::remove_cvref_t<First>, S>,
                          "manager method: the first parameter must be the served object (S&)");
            return make_method<S, typename traits::result>(std::move(name), fn,
                                                           static_cast<std::tuple<Rest...>*>(nullptr));
        }(static_cast<all*>(nullptr));
    }
}

// ---- served objects -------------------------------------------------------------------

class ServedObject {
public:
    virtual ~ServedObject() = default;
    virtual void call(const RequestView& request, ByteReader& arguments, Reply& reply) = 0;
    // What proxy a client must use for it (checked when a client asks for the object).
    virtual std::string_view proxy_kind() const noexcept = 0;
};

// An S served with the given methods. Calls are serialized by a per-object mutex unless
// S is itself safe to use from several threads (a Queue, a Lock: their methods block,
// and must be able to wait while another connection's call runs).
template <class S>
class ServedWith final : public ServedObject {
public:
    ServedWith(std::shared_ptr<S> object, std::shared_ptr<const std::vector<Method<S>>> methods,
               std::string_view proxy_kind, bool serialize_calls)
        : object_(std::move(object)),
          methods_(std::move(methods)),
          proxy_kind_(proxy_kind),
          serialize_calls_(serialize_calls) {}

    void call(const RequestView& request, ByteReader& arguments, Reply& reply) override {
        const Method<S>* m = find(request.name);
        if (!m)
            throw ValueError("manager: " + std::string(proxy_kind_) + " has no exposed method '" +
                                     std::string(request.name) + "'");
        if (m->signature != request.signature)
            throw ValueError("manager: method '" + m->name + "' of " + std::string(proxy_kind_) +
                             " takes arguments " + std::string(m->signature_text) +
                             "; the caller sent other types (convert the arguments to exactly these types)");
        if (serialize_calls_) {
            std::lock_guard lock(mutex_);
            m->invoke(*object_, arguments, reply);
        } else {
            m->invoke(*object_, arguments, reply);
        }
        if (arguments.remaining() != 0)
            throw ProtocolError("manager: a call to '" + m->name + "' carried " +
                                std::to_string(arguments.remaining()) + " bytes more than its arguments");
    }

    std::string_view proxy_kind() const noexcept override { return proxy_kind_; }

private:
    const Method<S>* find(std::string_view name) const noexcept {
        for (const auto& m : *methods_)
            if (m.name == name) return &m;
        return nullptr;
    }

    std::shared_ptr<S> object_;
    std::shared_ptr<const std::vector<Method<S>>> methods_;
    std::string_view proxy_kind_;
    bool serialize_calls_;
    std::mutex mutex_;
};

}  // namespace multiprocessing::detail::manager
