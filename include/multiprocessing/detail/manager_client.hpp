// A manager's client side: the connections a process keeps to one manager server, and
// the state behind every proxy.
//
// Each thread has its own connection per manager (as Python's proxies have), so a
// blocking call in one thread never holds up another, and a lock acquired through a
// proxy is held by that thread's server-side connection. A process additionally keeps
// one idle "anchor" connection: the server drops a process's references when its last
// connection closes, and the anchor keeps them while threads come and go.
//
// Fork: a child inherits the parent's sockets but must not talk on them (the replies
// would go to whoever reads first). Every connection remembers the process that made
// it, and a child makes its own on first use.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <pthread.h>

#include "../errors.hpp"
#include "deadline.hpp"
#include "manager_channel.hpp"
#include "manager_local.hpp"
#include "manager_protocol.hpp"
#include "process_state.hpp"
#include "shared_object.hpp"
#include "socket.hpp"
#include "wire.hpp"

namespace multiprocessing::detail::manager {

// How long a client spins for a reply before it sleeps in poll().
inline constexpr std::chrono::microseconds client_spin{100};
// Replies larger than this are refused (the connection is then dropped).
inline constexpr std::size_t max_reply_bytes = std::size_t(1) << 32;

inline std::uint64_t random_u64() {
    std::random_device device;
    return (std::uint64_t(device()) << 32) ^ device();
}

class ClientCore : public std::enable_shared_from_this<ClientCore> {
public:
    // `code_secret`: the server's secret for this program's own processes (see
    // ServerCore::set_code_secret), or empty for a client that is not one of them.
    ClientCore(connection::Address address, std::string authkey, std::chrono::duration<double> connect_timeout,
               std::string code_secret = {})
        : address_(std::move(address)),
          authkey_(std::move(authkey)),
          code_secret_(std::move(code_secret)),
          connect_timeout_(connect_timeout),
          serial_(next_serial()),
          session_seed_(random_u64()) {}

    ClientCore(const ClientCore&) = delete;
    ClientCore& operator=(const ClientCore&) = delete;
    ~ClientCore() {
        if (anchor_fd_ >= 0) ::close(anchor_fd_);
    }

    const connection::Address& address() const noexcept { return address_; }
    const std::string& authkey() const noexcept { return authkey_; }
    const std::string& code_secret() const noexcept { return code_secret_; }
    std::chrono::duration<double> connect_timeout() const noexcept { return connect_timeout_; }

    // One request and its reply, on this thread's connection. `read_result` (unless it
    // is nullptr) is called with the reply's body.
    template <class Read, class... A>
    void request(Op op, std::uint64_t object, std::string_view name, Read&& read_result, const A&... arguments) {
        if (ThreadChannels::finished)
            throw ProcessError("manager: this thread is exiting and has closed its manager connections");
        ensure_anchor();
        FrameChannel& channel = thread_channel();
        try {
            encode(channel.out(), op, object, name, arguments...);
            channel.send_out("manager proxy");
            auto reply = channel.receive(max_reply_bytes, Deadline{}, client_spin, "manager proxy");
            ByteReader body = open_reply(reply, name.empty() ? std::string_view("a request") : name);
            if constexpr (!std::is_null_pointer_v<std::decay_t<Read>>) read_result(body);
        } catch (const EOFError&) {
            server_gone();
        } catch (const std::system_error&) {  // EPIPE/ECONNRESET on send
            server_gone();
        }
    }

    // Opens a connection and says hello; used for the thread connections and the anchor.
    FrameChannel open_channel() {
        FrameChannel channel(net::connect(address_, Deadline(connect_timeout_)));
        auth::client_handshake(channel.fd(), authkey_, Deadline(connect_timeout_));
        if (code_secret_.empty())
            encode(channel.out(), Op::hello, session_token(), {});
        else
            encode(channel.out(), Op::hello, session_token(), {}, code_secret_);
        channel.send_out("manager connect");
        open_reply(channel.receive(max_reply_bytes, Deadline(connect_timeout_), {}, "manager connect"), "hello");
        return channel;
    }

    // This thread's connection is dead: forget it (a later call reconnects, or fails
    // to connect with a clear error) and say what happened.
    [[noreturn]] void server_gone() {
        forget_thread_channel();
        throw_server_gone();
    }

    [[noreturn]] void throw_server_gone() const {
        throw ProcessError("manager: the server at " + address_.to_string() +
                           " closed the connection; it was shut down or it died");
    }

private:
    template <class... A>
    static void encode(std::vector<std::byte>& out, Op op, std::uint64_t object, std::string_view name,
                       const A&... arguments) {
        encode_request(out, wire::frame_header_size, op, object, name, arguments...);
    }

    // The session is this process: a child gets another token, so the server counts
    // its references apart from its parent's.
    std::uint64_t session_token() const noexcept {
        std::uint64_t x = session_seed_ ^ (std::uint64_t(current_pid()) * 0x9E3779B97F4A7C15ull);
        x ^= x >> 31;
        return x | 1;  // never 0
    }

    void ensure_anchor() {
        const pid_t me = current_pid();
        // acquire: pairs with the release below, so a thread that sees this process's
        // pid also sees the anchor that thread stored.
        pid_t seen = anchored_pid_.load(std::memory_order_acquire);
        if (seen == me) return;
        // One thread per process wins and connects; the others go on (their own
        // connections hold the session until the anchor is there).
        if (!anchored_pid_.compare_exchange_strong(seen, me, std::memory_order_acq_rel)) return;
        try {
            FrameChannel anchor = open_channel();
            const int old = anchor_fd_;
            anchor_fd_ = anchor.socket().release();
            // A fork child's inherited copy of its parent's anchor: closing it here
            // closes only the child's copy.
            if (old >= 0) ::close(old);
        } catch (...) {
            anchored_pid_.store(0, std::memory_order_release);
            throw;
        }
    }

    struct CachedChannel {
        std::uint64_t serial;
        std::weak_ptr<ClientCore> owner;
        std::unique_ptr<FrameChannel> channel;
    };
    // This thread's connections, closed when it exits. `finished` (trivially destructible,
    // so still readable then) keeps a proxy destroyed later in the thread's exit from
    // reaching for the destroyed list.
    struct ThreadChannels {
        std::vector<CachedChannel> list;
        ~ThreadChannels() { finished = true; }
        static inline thread_local bool finished = false;
    };
    static std::vector<CachedChannel>& thread_channels() {
        thread_local ThreadChannels channels;
        return channels.list;
    }

    FrameChannel& thread_channel() {
        auto& channels = thread_channels();
        for (auto& c : channels) {
            if (c.serial != serial_) continue;
            if (c.channel && c.channel->pid() == current_pid()) return *c.channel;
            c.channel = std::make_unique<FrameChannel>(open_channel());
            return *c.channel;
        }
        // Connections to managers that are gone are closed on the way.
        std::erase_if(channels, [](const CachedChannel& c) { return c.owner.expired(); });
        channels.push_back({serial_, weak_from_this(), std::make_unique<FrameChannel>(open_channel())});
        return *channels.back().channel;
    }

    void forget_thread_channel() noexcept {
        for (auto& c : thread_channels())
            if (c.serial == serial_) c.channel.reset();
    }

    static std::uint64_t next_serial() noexcept {
        static std::atomic<std::uint64_t> serial{1};
        // relaxed: only uniqueness matters.
        return serial.fetch_add(1, std::memory_order_relaxed);
    }

    const connection::Address address_;
    const std::string authkey_;
    const std::string code_secret_;
    const std::chrono::duration<double> connect_timeout_;
    const std::uint64_t serial_;
    const std::uint64_t session_seed_;
    std::atomic<pid_t> anchored_pid_{0};
    int anchor_fd_ = -1;
};

// What every proxy copy in a process shares: the object's id on the server and one
// reference to it, given back when the last copy here goes.
//
// A reference is given back early only while no fork happened since the proxy was made.
// After a fork, a child may hold a copy that has not yet taken its own reference (it
// does on first use), and giving the parent's back could free the object under it; so
// the reference then stays until this process's connections close (it exits, or the
// manager shuts down).
//
// A proxy rebuilt inside its own server (a value stored in a served container) holds its
// reference in the server's table instead (`held_by_server`, see manager_local.hpp).
class ProxyState {
public:
    ProxyState(std::shared_ptr<ClientCore> client, std::uint64_t id,
               const std::shared_ptr<ServerHeldReferences>& held_by_server = nullptr)
        : client_(std::move(client)),
          id_(id),
          attached_pid_(current_pid()),
          forks_at_creation_(fork_count()),
          held_by_server_(held_by_server),
          server_pid_(held_by_server ? current_pid() : 0) {}
    ProxyState(const ProxyState&) = delete;
    ProxyState& operator=(const ProxyState&) = delete;

    ~ProxyState() {
        // Only the process that holds the reference gives it back. Best effort: a server
        // that is gone already dropped it.
        if (attached_pid_.load(std::memory_order_relaxed) != current_pid()) return;
        if (server_pid_ == current_pid()) {
            // The server's own forks (a served Pool's workers) run no server code, so
            // the fork rule below does not apply to the references it holds itself.
            if (auto server = held_by_server_.lock()) server->let_go(id_);
            return;
        }
        if (fork_count() != forks_at_creation_) return;
        try {
            client_->request(Op::decref, id_, {}, nullptr);
        } catch (...) {
        }
    }

    ClientCore& client() const noexcept { return *client_; }
    std::uint64_t id() const noexcept { return id_; }

    template <class R, class... A>
    R call(std::string_view method, const A&... arguments) {
        attach();
        if constexpr (std::is_void_v<R>) {
            client_->request(Op::call, id_, method, nullptr, arguments...);
        } else {
            std::optional<R> result;
            client_->request(Op::call, id_, method, [&](ByteReader& r) { result.emplace(get<R>(r)); }, arguments...);
            return std::move(*result);
        }
    }

private:
    // A copy inherited by a fork child takes a reference of its own on first use, so the
    // object lives while the child uses it even if the parent lets go.
    void attach() {
        const pid_t me = current_pid();
        // relaxed: each process only ever compares with its own pid.
        pid_t seen = attached_pid_.load(std::memory_order_relaxed);
        if (seen == me) return;
        if (!attached_pid_.compare_exchange_strong(seen, me, std::memory_order_relaxed)) return;
        try {
            client_->request(Op::incref, id_, {}, nullptr);
        } catch (...) {
            attached_pid_.store(seen, std::memory_order_relaxed);
            throw;
        }
    }

    // How many forks this process has made (counted from the first proxy on). The
    // counter lives in the parent; a child starts from its parent's count, which is fine:
    // only "did it change since" is asked.
    static std::uint64_t fork_count() noexcept {
        static std::atomic<std::uint64_t> forks{0};
        static const bool installed = [] {
            // relaxed: read only by this process's threads, after the fork has returned.
            ::pthread_atfork([] { forks.fetch_add(1, std::memory_order_relaxed); }, nullptr, nullptr);
            return true;
        }();
        (void)installed;
        return forks.load(std::memory_order_relaxed);
    }

    std::shared_ptr<ClientCore> client_;
    std::uint64_t id_;
    std::atomic<pid_t> attached_pid_;
    std::uint64_t forks_at_creation_;
    std::weak_ptr<ServerHeldReferences> held_by_server_;
    // The server's process, where held_by_server_ holds the reference; 0 for a client.
    pid_t server_pid_;
};

// A proxy in the payload of a process started by spawn or forkserver: where its server
// is, the key, and the object. The key travels as Python's does when it spawns: through
// the bootstrap fd, which only the child can read.
struct ProxyReference {
    connection::Address address;
    std::string authkey;
    std::uint64_t id = 0;
    double connect_timeout_seconds = 0;
    // A spawned child of the manager's program is one of its own processes; the secret
    // travels with the key, through the bootstrap fd.
    std::string code_secret;

    template <class Archive>
    void serialize(Archive& archive) {
        archive(address, authkey, id, connect_timeout_seconds, code_secret);
    }
};

inline ProxyReference reference_to(const ProxyState& state) {
    const ClientCore& client = state.client();
    return {client.address(), client.authkey(), state.id(), client.connect_timeout().count(), client.code_secret()};
}

// The clients of this process (and those its parent had when it forked), so that proxies
// to one server share one client, and a proxy that arrives in a message finds the key
// its server takes.
class Clients {
public:
    static Clients& instance() {
        // Leaked on purpose: proxies destroyed by static destructors may still look here.
        static Clients* clients = new Clients;
        return *clients;
    }

    // A client of the server at `address` (with that key and secret, unless `key` is
    // nullptr: any client of it), made when there is none.
    std::shared_ptr<ClientCore> find_or_make(const connection::Address& address, const std::string* key,
                                             const std::string& code_secret,
                                             std::chrono::duration<double> connect_timeout) {
        std::lock_guard lock(mutex_);
        if (auto found = find_locked(address, key, code_secret)) return found;
        auto made = std::make_shared<ClientCore>(address, key ? *key : process_state().authkey, connect_timeout,
                                                 key ? code_secret : std::string());
        clients_.push_back(made);
        return made;
    }

    // Any client of the server at `address` that this process has, or nullptr.
    std::shared_ptr<ClientCore> find(const connection::Address& address) {
        std::lock_guard lock(mutex_);
        return find_locked(address, nullptr, {});
    }

    void add(const std::shared_ptr<ClientCore>& client) {
        std::lock_guard lock(mutex_);
        clients_.push_back(client);
    }

private:
    std::shared_ptr<ClientCore> find_locked(const connection::Address& address, const std::string* key,
                                            const std::string& code_secret) {
        std::erase_if(clients_, [](const auto& c) { return c.expired(); });
        for (const auto& weak : clients_) {
            auto c = weak.lock();
            if (c && c->address() == address && (!key || (c->authkey() == *key && c->code_secret() == code_secret)))
                return c;
        }
        return nullptr;
    }

    Clients() {
        // A fork child may be made while another thread holds the mutex.
        ::pthread_atfork(nullptr, nullptr, [] { new (&instance().mutex_) std::mutex; });
    }
    std::mutex mutex_;
    std::vector<std::weak_ptr<ClientCore>> clients_;
};

// In the child: a proxy state holding a reference of its own on the object (taken here,
// given back when the last copy goes). Proxies to one server share one client, as the
// proxies a manager hands out do.
inline std::shared_ptr<ProxyState> rebuild_proxy_state(const ProxyReference& r) {
    auto client = Clients::instance().find_or_make(r.address, &r.authkey, r.code_secret,
                                                   std::chrono::duration<double>(r.connect_timeout_seconds));
    client->request(Op::incref, r.id, {}, nullptr);
    return std::make_shared<ProxyState>(std::move(client), r.id);
}

// A proxy inside a message (a task argument, a queue item, a value in a managed list):
// its server and object, and not the key, as Python pickles a proxy. The receiver
// presents the key of a client it already has for that server (its own, or its parent's
// when it was forked), or else the program's key, which a Manager given none uses.
struct ProxyInMessage {
    connection::Address address;
    std::uint64_t id = 0;

    template <class Archive>
    void serialize(Archive& archive) {
        archive(address, id);
    }
};

inline ProxyInMessage message_reference_to(const ProxyState& state) { return {state.client().address(), state.id()}; }

// How long a proxy that arrived in a message waits to connect (ManagerOptions' default).
inline constexpr std::chrono::seconds message_proxy_connect_timeout{20};

// The receiving side: a proxy state with a reference of this process's own. Inside the
// server itself, the server holds it (manager_local.hpp).
inline std::shared_ptr<ProxyState> rebuild_from_message(const ProxyInMessage& r) {
    if (auto local = LocalServers::instance().find(r.address)) {
        if (auto references = local->references.lock()) {
            references->hold(r.id);
            auto client = Clients::instance().find_or_make(r.address, &local->authkey, {},
                                                           message_proxy_connect_timeout);
            return std::make_shared<ProxyState>(std::move(client), r.id, references);
        }
    }
    auto client = decoding_a_peers_request
                      ? Clients::instance().find(r.address)
                      : Clients::instance().find_or_make(r.address, nullptr, {}, message_proxy_connect_timeout);
    if (!client)
        throw ValueError("manager: a proxy in this request names the server at " + r.address.to_string() +
                         ", which this server has no connection to; a server connects only to servers it already "
                         "knows (a manager its program made before starting this one), never to an address a "
                         "client names");
    try {
        client->request(Op::incref, r.id, {}, nullptr);
    } catch (const AuthenticationError& e) {
        throw AuthenticationError(std::string(e.what()) + " (a proxy arrived in a message for the manager at " +
                                  r.address.to_string() + ", which this process has no connection to, and the "
                                  "server refused the program's own key: a manager started with an authkey of "
                                  "its own must be connected to in this process, or an ancestor, first)");
    }
    return std::make_shared<ProxyState>(std::move(client), r.id);
}

}  // namespace multiprocessing::detail::manager
