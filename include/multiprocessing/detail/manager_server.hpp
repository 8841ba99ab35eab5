// A manager's server: the objects it serves, who holds references to them, and the
// connections that call their methods (one thread per connection, as Python's server
// has, so a call that blocks, such as a queue get, holds up only its own caller).
//
// References are counted per session: a session is one client process (a random token
// it sends when it connects), and its references go away when its last connection
// closes. A client process that crashes or is killed therefore frees what it held,
// which Python's server does not do.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "../errors.hpp"
#include "deadline.hpp"
#include "manager_channel.hpp"
#include "manager_local.hpp"
#include "manager_protocol.hpp"
#include "socket.hpp"
#include "wire.hpp"

namespace multiprocessing::detail::manager {

using namespace std::chrono_literals;

// Requests larger than this close the connection that sent them.
inline constexpr std::size_t max_request_bytes = std::size_t(1) << 30;
// A client must authenticate within this time, or its connection is dropped.
inline constexpr std::chrono::seconds handshake_timeout{10};

// What a server admits before and after authentication (ManagerOptions sets them).
struct ServerLimits {
    // Connections open at once, authenticated or not. Each costs a thread and an fd.
    std::size_t max_connections = 1024;
    // Connections that have not finished the handshake yet. A stranger needs no key to
    // fill these, so there are few, and the oldest is dropped to make room for a new one:
    // a real client finishes in well under a millisecond, an idle one only ages.
    std::size_t max_handshaking = 64;
    std::chrono::milliseconds handshake_timeout = manager::handshake_timeout;
    // AF_UNIX: drop a peer of another uid before the handshake (SO_PEERCRED). An abstract
    // socket has no file permissions, so without this any user could connect to it.
    bool same_user_only = true;
};
// How long a server thread polls for the next request before it sleeps.
inline constexpr std::chrono::microseconds server_spin{50};

// ---- the caller of the call being served ----------------------------------------------

// A served call that blocks (a queue get, a lock acquire) waits in slices and, between
// them, looks whether its caller is still there: the server thread of a client that died
// must not go on to take an item or a lock that nobody will receive.
inline constexpr std::chrono::milliseconds caller_check_interval{100};

struct CallerContext {
    int fd = -1;
    // What to do when the reply cannot be delivered (the caller vanished right after the
    // call succeeded): give back what the call took, e.g. put the item back.
    std::function<void()> undo;
    // Whether this caller proved it is a process of the program that started the server
    // (see ServerCore::set_code_secret): only then may a call run code it names.
    bool may_run_code = false;
};

inline CallerContext& current_caller() noexcept {
    thread_local CallerContext caller;
    return caller;
}

inline bool caller_gone() noexcept {
    const int fd = current_caller().fd;
    if (fd < 0) return false;
    pollfd p{fd, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

// The caller went away while its call waited: nobody will read the answer.
class CallerGone : public ProcessError {
public:
    CallerGone() : ProcessError("manager: the caller closed its connection while its call waited") {}
};

// Runs `attempt(slice)` (which returns true once it got what it waited for) in slices
// until it succeeds, the deadline passes (returns false) or the caller is gone (throws).
template <class Attempt>
bool wait_in_slices(std::optional<double> timeout, Attempt attempt) {
    const Deadline deadline = Deadline::after(timeout ? std::optional<Timeout>(Timeout(*timeout)) : std::nullopt);
    for (;;) {
        std::chrono::duration<double> slice = caller_check_interval;
        if (const auto left = deadline.remaining()) slice = std::min<std::chrono::duration<double>>(slice, *left);
        if (slice.count() < 0) slice = slice.zero();
        if (attempt(Timeout(slice))) return true;
        if (deadline.expired()) return false;
        if (caller_gone()) throw CallerGone();
    }
}

// What a name registered with a manager makes: a served object or a function result.
struct Registration {
    std::string proxy_kind;  // empty for a function
    std::uint64_t signature = 0;
    std::string signature_text;
    std::function<std::shared_ptr<ServedObject>(ByteReader&)> create;
    std::function<void(ByteReader&, Reply&)> call;
};

// The types a SyncManager serves, by key (the served type and its constructor's
// arguments). Filled before main() by static registrations in every program that asks
// a manager for such an object, so a server started from the same program knows them.
class BuiltinTypes {
public:
    static BuiltinTypes& instance() {
        static BuiltinTypes* types = new BuiltinTypes;  // leaked: used until the very end
        return *types;
    }
    bool add(std::string key, Registration r) {
        std::lock_guard lock(mutex_);
        types_.emplace(std::move(key), std::move(r));
        return true;
    }
    const Registration* find(std::string_view key) const {
        std::lock_guard lock(mutex_);
        auto it = types_.find(std::string(key));
        return it == types_.end() ? nullptr : &it->second;
    }

private:
    mutable std::mutex mutex_;
    std::map<std::string, Registration> types_;  // node-based: pointers stay valid
};

inline constexpr std::string_view builtin_prefix = "builtin:";

// One connection's view of the server.
struct ConnectionState {
    std::uint64_t session = 0;
    bool said_hello = false;
    bool shutdown_requested = false;
    // AF_UNIX and the peer's uid is ours (SO_PEERCRED): set by the loop before any request.
    bool same_user = false;
    bool may_run_code = false;
};

class ServerCore : public ServerHeldReferences {
public:
    explicit ServerCore(bool serve_builtins) : serve_builtins_(serve_builtins) {}

    // The references the server holds itself, for proxies stored in what it serves
    // (manager_local.hpp): counted under a session no connection can name.
    void hold(std::uint64_t id) override {
        std::lock_guard lock(mutex_);
        take_reference(server_session, id);
    }
    void let_go(std::uint64_t id) noexcept override {
        std::vector<std::shared_ptr<ServedObject>> dying;  // destroyed outside the lock
        std::lock_guard lock(mutex_);
        give_back(server_session, id, dying);
    }

    // The secret that marks this program's own processes: the manager that starts the
    // server draws it, the server and that manager's process (and its children, by fork
    // or through a spawned child's bootstrap pipe) hold it, and it never goes into an
    // address or an authkey. A connection that shows it in its hello, over AF_UNIX from
    // our own uid, may run calls that name code (the served Pool's "run"); no other
    // connection can, whatever key it holds. Empty: nobody may.
    void set_code_secret(std::string secret) {
        std::lock_guard lock(mutex_);
        code_secret_ = std::move(secret);
    }

    void add(std::string name, Registration r) {
        std::lock_guard lock(mutex_);
        registrations_[std::move(name)] = std::make_shared<const Registration>(std::move(r));
    }

    // Answers one request. Never throws: a bad request becomes an error reply, and
    // `close_connection` says whether the connection should be dropped after it.
    void handle(std::span<const std::byte> request, ConnectionState& connection, std::vector<std::byte>& out,
                std::size_t frame_header, bool& close_connection) noexcept {
        close_connection = false;
        try {
            Reply reply(out, frame_header);
            const DecodingPeersRequest decoding;
            try {
                dispatch(parse_request(request), connection, reply);
            } catch (const ProtocolError& e) {
                reply.protocol_error(e.what());
                close_connection = true;
            } catch (...) {
                reply.raised();
            }
        } catch (...) {
            // Encoding the error itself failed (out of memory): say nothing, drop the line.
            out.resize(frame_header + 1);
            out[frame_header] = static_cast<std::byte>(Status::protocol_error);
            close_connection = true;
        }
    }

    // A connection ended: its session loses its references if it was the last one.
    void connection_closed(const ConnectionState& connection) noexcept {
        if (!connection.said_hello) return;
        std::vector<std::shared_ptr<ServedObject>> dying;  // destroyed outside the lock
        {
            std::lock_guard lock(mutex_);
            auto it = sessions_.find(connection.session);
            if (it == sessions_.end() || --it->second.connections > 0) return;
            for (auto [id, count] : it->second.references) drop_references(id, count, dying);
            sessions_.erase(it);
        }
    }

    std::size_t object_count() const {
        std::lock_guard lock(mutex_);
        return objects_.size();
    }

private:
    struct ObjectRecord {
        std::shared_ptr<ServedObject> object;
        std::uint64_t references = 0;
    };
    struct Session {
        int connections = 0;
        std::unordered_map<std::uint64_t, std::uint64_t> references;
    };

    void dispatch(const RequestView& request, ConnectionState& connection, Reply& reply) {
        if (!connection.said_hello) {
            if (request.op != Op::hello)
                throw ProtocolError("the first request on a connection must say which client it is from");
            if (request.object == server_session) throw ProtocolError("session 0 is the server's own");
            std::lock_guard lock(mutex_);
            if (!request.arguments.empty() && connection.same_user && !code_secret_.empty()) {
                ByteReader hello(request.arguments);
                const auto shown = get<std::string>(hello);
                connection.may_run_code = shown.size() == code_secret_.size() &&
                                          CRYPTO_memcmp(shown.data(), code_secret_.data(), shown.size()) == 0;
            }
            ++sessions_[request.object].connections;
            connection.session = request.object;
            connection.said_hello = true;
            return;
        }
        ByteReader arguments(request.arguments);
        switch (request.op) {
            case Op::hello:
                throw ProtocolError("a connection said hello twice");
            case Op::ping:
                return;
            case Op::shutdown:
                connection.shutdown_requested = true;
                return;
            case Op::call: {
                std::shared_ptr<ServedObject> object = find_object(request.object);
                object->call(request, arguments, reply);
                return;
            }
            case Op::call_function: {
                auto r = find_registration(request.name);
                if (r->proxy_kind.size())
                    throw ValueError("manager: '" + std::string(request.name) +
                                     "' is registered as an object, not a function; get it with get<T>()");
                check_signature(*r, request);
                r->call(arguments, reply);
                return;
            }
            case Op::create: {
                auto r = find_registration(request.name);
                if (r->proxy_kind.empty())
                    throw ValueError("manager: '" + std::string(request.name) +
                                     "' is registered as a function, not an object; call it with call<R(Args...)>()");
                check_signature(*r, request);
                std::shared_ptr<ServedObject> object = r->create(arguments);
                std::uint64_t id;
                {
                    std::lock_guard lock(mutex_);
                    id = next_id_++;
                    objects_.emplace(id, ObjectRecord{std::move(object), 1});
                    ++sessions_[connection.session].references[id];
                }
                reply.value(id);
                reply.value(std::string(r->proxy_kind));
                return;
            }
            case Op::incref: {
                std::lock_guard lock(mutex_);
                take_reference(connection.session, request.object);
                return;
            }
            case Op::decref: {
                std::vector<std::shared_ptr<ServedObject>> dying;  // destroyed outside the lock
                std::lock_guard lock(mutex_);
                give_back(connection.session, request.object, dying);
                return;
            }
        }
        throw ProtocolError("unknown request kind");
    }

    void check_signature(const Registration& r, const RequestView& request) const {
        if (r.signature != request.signature)
            throw ValueError("manager: '" + std::string(request.name) + "' takes arguments " + r.signature_text +
                             "; the caller sent other types (declare it with the same types on both sides)");
    }

    std::shared_ptr<const Registration> find_registration(std::string_view name) {
        {
            std::lock_guard lock(mutex_);
            auto it = registrations_.find(std::string(name));
            if (it != registrations_.end()) return it->second;
        }
        if (name.starts_with(builtin_prefix)) {
            if (!serve_builtins_)
                throw ValueError("manager: this server is a BaseManager and serves only what was registered with "
                                 "it; list(), dict(), Queue() and the other built-in types need a SyncManager");
            if (const Registration* r = BuiltinTypes::instance().find(name))
                return std::shared_ptr<const Registration>(std::shared_ptr<void>(), r);  // static: not owned
            throw ValueError("manager: the server program does not serve '" +
                             std::string(name.substr(builtin_prefix.size())) +
                             "': a remote server knows the built-in types its own program uses; ask for "
                             "it once in the server program too");
        }
        throw ValueError("manager: nothing is registered under the name '" + std::string(name) +
                         "' on the server");
    }

    std::shared_ptr<ServedObject> find_object(std::uint64_t id) {
        std::lock_guard lock(mutex_);
        auto it = objects_.find(id);
        if (it == objects_.end()) throw_no_object(id);
        return it->second.object;
    }

    [[noreturn]] static void throw_no_object(std::uint64_t id) {
        throw KeyError("manager: the server has no object with id " + std::to_string(id) +
                       " (every proxy to it was released, or the server was restarted)");
    }

    // Called with mutex_ held.
    void take_reference(std::uint64_t session, std::uint64_t id) {
        auto it = objects_.find(id);
        if (it == objects_.end()) throw_no_object(id);
        ++it->second.references;
        ++sessions_[session].references[id];
    }

    // Called with mutex_ held; objects that die are moved to `dying`.
    void give_back(std::uint64_t session, std::uint64_t id, std::vector<std::shared_ptr<ServedObject>>& dying) {
        auto& held = sessions_[session].references;
        auto it = held.find(id);
        if (it == held.end()) return;  // not this session's: nothing to give back
        if (--it->second == 0) held.erase(it);
        drop_references(id, 1, dying);
    }

    // Called with mutex_ held; objects that die are moved to `dying`.
    void drop_references(std::uint64_t id, std::uint64_t count,
                         std::vector<std::shared_ptr<ServedObject>>& dying) {
        auto it = objects_.find(id);
        if (it == objects_.end()) return;
        it->second.references -= std::min(count, it->second.references);
        if (it->second.references == 0) {
            dying.push_back(std::move(it->second.object));
            objects_.erase(it);
        }
    }

    // Clients' session tokens are never 0 (ClientCore::session_token), and a hello that
    // names 0 is refused.
    static constexpr std::uint64_t server_session = 0;

    const bool serve_builtins_;
    mutable std::mutex mutex_;
    std::string code_secret_;
    std::unordered_map<std::string, std::shared_ptr<const Registration>> registrations_;
    std::unordered_map<std::uint64_t, ObjectRecord> objects_;
    std::unordered_map<std::uint64_t, Session> sessions_;
    std::uint64_t next_id_ = 1;
};

// Serves a ServerCore on a listening socket: accepts, authenticates, and runs one thread
// per connection until stop() or a shutdown request.
//
// Nothing a peer does before it authenticates can stop the server or hold up another
// client: the accepting thread only accepts, checks the peer's uid and hands the
// connection to a thread of its own (the handshake runs there, under a deadline); there
// are at most `max_handshaking` such connections and `max_connections` in all, so the
// threads and fds strangers can make the server spend are bounded; and running out of
// fds anyway (a low ulimit) sheds the oldest unauthenticated connection instead of
// ending the server.
class ServerLoop {
public:
    ServerLoop(std::shared_ptr<ServerCore> core, net::ListeningSocket listener, std::string authkey,
               ServerLimits limits = {})
        : shared_(std::make_shared<Shared>(std::move(core), std::move(authkey), limits)),
          listener_(std::move(listener)) {}

    connection::Address address() const { return listener_.address(); }

    // Stops serve_forever(), from any thread (or a signal handler: it only writes an eventfd).
    void stop() noexcept { shared_->request_stop(); }

    // Returns after stop() or a client's shutdown request, or when `watch_fd` (if >= 0,
    // e.g. the owner's pidfd) becomes readable.
    void serve_forever(int watch_fd = -1) {
        // Kept for the moment accept() fails with EMFILE while no stranger's connection
        // can be dropped: closing it makes room to take the waiting connection off the
        // queue and close it, rather than poll waking up for it forever.
        reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        // Proxies to our own objects that arrive in requests hold their references here.
        const LocalServerRegistration serving_here({address(), shared_->authkey, shared_->core, current_pid()});
        for (;;) {
            pollfd fds[3] = {{listener_.fd(), POLLIN, 0}, {shared_->stop_fd, POLLIN, 0}, {watch_fd, POLLIN, 0}};
            const int r = ::poll(fds, watch_fd >= 0 ? 3 : 2, -1);
            if (r < 0) {
                if (errno == EINTR) continue;
                throw_errno("manager server: poll");
            }
            if (fds[1].revents || (watch_fd >= 0 && fds[2].revents)) break;
            if (fds[0].revents) accept_waiting();
        }
        if (reserve_fd_ >= 0) ::close(std::exchange(reserve_fd_, -1));
        shut_down_connections();
    }

    // For tests and diagnostics: connections open now, and how many of them are still
    // in the handshake.
    std::pair<std::size_t, std::size_t> connection_counts() const {
        std::lock_guard lock(shared_->mutex);
        return {shared_->open, shared_->handshaking};
    }

private:
    struct Peer {
        int fd;
        bool authenticated = false;
        bool dropped = false;  // shut down to make room; its thread closes it
    };

    // What connection threads share with the loop; they may outlive serve_forever() while
    // a call they run still blocks, so they hold it by shared_ptr.
    struct Shared {
        Shared(std::shared_ptr<ServerCore> c, std::string key, ServerLimits l)
            : core(std::move(c)),
              authkey(std::move(key)),
              limits(l),
              stop_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
            if (stop_fd < 0) throw_errno("manager server: eventfd");
            limits.max_connections = std::max<std::size_t>(limits.max_connections, 1);
            limits.max_handshaking = std::clamp<std::size_t>(limits.max_handshaking, 1, limits.max_connections);
        }
        ~Shared() { ::close(stop_fd); }
        void request_stop() noexcept {
            const std::uint64_t one = 1;
            [[maybe_unused]] auto n = ::write(stop_fd, &one, sizeof one);
        }
        // Called with `mutex` held. Shuts down the connection that has waited longest in
        // the handshake (the list is in arrival order); false when there is none.
        bool drop_oldest_handshaking() noexcept {
            for (Peer& p : peers) {
                if (p.authenticated || p.dropped) continue;
                p.dropped = true;
                --handshaking;
                --open;
                ::shutdown(p.fd, SHUT_RDWR);  // its thread sees EOF, fails the handshake, closes
                return true;
            }
            return false;
        }

        std::shared_ptr<ServerCore> core;
        std::string authkey;
        ServerLimits limits;
        int stop_fd;
        mutable std::mutex mutex;
        std::list<Peer> peers;       // every connection whose thread still runs
        std::size_t open = 0;        // peers not dropped
        std::size_t handshaking = 0; // of those, not yet authenticated
    };

    // Takes every connection waiting in the queue (a bounded number per wake-up, so a
    // flood cannot starve the stop request).
    void accept_waiting() {
        for (int i = 0; i < 64; ++i) {
            const int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) {
                switch (errno) {
                    case EAGAIN:
                    case EINVAL:  // the listening socket was shut down: stop() follows
                        return;
                    case EMFILE:
                    case ENFILE:
                    case ENOBUFS:
                    case ENOMEM:
                        shed_load();
                        return;
                    default:
                        // Errors of the one new connection (ECONNABORTED, EPROTO, EPERM, ...),
                        // which the man page says to retry.
                        continue;
                }
            }
            net::Socket socket(fd);
            if (!listener_.address().is_unix()) net::tune_tcp(fd);
            if (admit(fd)) start_connection(std::move(socket));
        }
    }

    // Out of fds (or kernel memory): make room by dropping the stranger that has waited
    // longest; with none to drop, refuse the connection that is waiting. Then pause a
    // moment, so the fds can come back before the next try.
    void shed_load() {
        bool dropped;
        {
            std::lock_guard lock(shared_->mutex);
            dropped = shared_->drop_oldest_handshaking();
        }
        if (!dropped && reserve_fd_ >= 0) {
            ::close(std::exchange(reserve_fd_, -1));
            const int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_CLOEXEC);
            if (fd >= 0) ::close(fd);
            reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        // After a drop, only as long as its thread needs to close the fd; otherwise long
        // enough not to spin on a queue we cannot take from.
        std::this_thread::sleep_for(dropped ? std::chrono::milliseconds(1) : std::chrono::milliseconds(5));
    }

    // Whether a new connection may stay; records it when it may.
    bool admit(int fd) {
        const bool same_user = net::peer_is_same_user(fd);
        if (shared_->limits.same_user_only && listener_.address().is_unix() && !same_user) return false;
        std::lock_guard lock(shared_->mutex);
        const auto& limits = shared_->limits;
        if (shared_->handshaking >= limits.max_handshaking || shared_->open >= limits.max_connections) {
            // Full: a stranger that is still silent makes room; authenticated clients
            // are never dropped for a newcomer, which is refused instead.
            if (!shared_->drop_oldest_handshaking()) return false;
        }
        ++shared_->open;
        ++shared_->handshaking;
        return true;
    }

    void start_connection(net::Socket socket) {
        auto shared = shared_;
        const int fd = socket.fd();
        std::list<Peer>::iterator where;
        {
            std::lock_guard lock(shared->mutex);
            where = shared->peers.insert(shared->peers.end(), Peer{fd});
        }
        try {
            std::thread([shared, where, s = std::move(socket)]() mutable {
                FrameChannel channel(std::move(s));
                serve_connection(*shared, where, channel);
                // Forgotten before the socket closes, so stop() cannot shut down a reused fd number.
                std::lock_guard lock(shared->mutex);
                forget(*shared, where);
            }).detach();
        } catch (...) {
            std::lock_guard lock(shared->mutex);
            forget(*shared, where);  // the socket closed with the failed thread's lambda
        }
    }

    // Called with `mutex` held.
    static void forget(Shared& shared, std::list<Peer>::iterator where) noexcept {
        if (!where->dropped) {
            --shared.open;
            if (!where->authenticated) --shared.handshaking;
        }
        shared.peers.erase(where);
    }

    static void serve_connection(Shared& shared, std::list<Peer>::iterator where, FrameChannel& channel) {
        try {
            auth::server_handshake(channel.fd(), shared.authkey, Deadline(shared.limits.handshake_timeout));
        } catch (...) {
            return;  // a wrong key or a stranger: drop it, nothing else is affected
        }
        {
            std::lock_guard lock(shared.mutex);
            if (where->dropped) return;  // dropped to make room just as it finished
            where->authenticated = true;
            --shared.handshaking;
        }
        ConnectionState state;
        state.same_user = net::peer_is_same_user(channel.fd());
        CallerContext& caller = current_caller();
        caller.fd = channel.fd();
        try {
            for (;;) {
                auto request = channel.receive(max_request_bytes, Deadline{}, server_spin, "manager server");
                bool close = false;
                auto& out = channel.out();
                caller.undo = nullptr;
                caller.may_run_code = state.may_run_code;
                shared.core->handle(request, state, out, wire::frame_header_size, close);
                // A call that took something (an item, a lock) for a caller that is gone
                // gives it back. Checked before sending too: over TCP a send to a peer that
                // died usually succeeds, the reset arriving only later.
                if (caller.undo && caller_gone()) {
                    caller.undo();
                    break;
                }
                try {
                    channel.send_out("manager server");
                } catch (...) {
                    if (caller.undo) caller.undo();
                    throw;
                }
                if (state.shutdown_requested) shared.request_stop();
                if (close) break;
            }
        } catch (...) {
            // EOF, a truncated or oversized frame, or a peer that vanished: this connection ends.
        }
        shared.core->connection_closed(state);
    }

    void shut_down_connections() noexcept {
        std::lock_guard lock(shared_->mutex);
        // Wakes threads waiting for a request; a thread inside a blocking call finishes
        // it, finds its socket shut down, and ends.
        for (const Peer& p : shared_->peers) ::shutdown(p.fd, SHUT_RDWR);
    }

    std::shared_ptr<Shared> shared_;
    net::ListeningSocket listener_;
    int reserve_fd_ = -1;
};

}  // namespace multiprocessing::detail::manager
