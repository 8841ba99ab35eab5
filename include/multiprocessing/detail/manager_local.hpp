// A manager server that runs in this very process, found by its address.
//
// A proxy that arrives in a request to its own server (a list proxy appended to a managed
// list, a queue proxy stored in a managed dict) is rebuilt inside the server. Connecting
// to itself to take a reference would cost a socket and a server thread per stored proxy;
// instead the proxy holds its reference in the server's table directly (Python's server
// does the same with its "manager-owned" proxies), and gives it back when the stored
// value goes.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <pthread.h>

#include "shared_object.hpp"
#include "socket.hpp"

namespace multiprocessing::detail::manager {

// References held by the server itself, on behalf of the objects it serves.
class ServerHeldReferences {
public:
    // Takes one; KeyError when the server has no such object (any more).
    virtual void hold(std::uint64_t id) = 0;
    virtual void let_go(std::uint64_t id) noexcept = 0;

protected:
    ~ServerHeldReferences() = default;
};

struct LocalServer {
    connection::Address address;
    std::string authkey;
    std::weak_ptr<ServerHeldReferences> references;
    pid_t pid = 0;
};

class LocalServers {
public:
    static LocalServers& instance() {
        // Leaked on purpose: proxies destroyed by static destructors may still look here.
        static LocalServers* servers = new LocalServers;
        return *servers;
    }

    void add(LocalServer server) {
        std::lock_guard lock(mutex_);
        servers_.push_back(std::move(server));
    }

    void remove(const connection::Address& address) noexcept {
        std::lock_guard lock(mutex_);
        std::erase_if(servers_, [&](const LocalServer& s) { return s.address == address && s.pid == current_pid(); });
    }

    // The server at `address` if this process runs it (not a parent that forked us).
    std::optional<LocalServer> find(const connection::Address& address) {
        std::lock_guard lock(mutex_);
        for (const auto& s : servers_)
            if (s.pid == current_pid() && s.address == address && !s.references.expired()) return s;
        return std::nullopt;
    }

private:
    LocalServers() {
        // A fork child may be made while another thread holds the mutex.
        ::pthread_atfork(nullptr, nullptr, [] { new (&instance().mutex_) std::mutex; });
    }
    std::mutex mutex_;
    std::vector<LocalServer> servers_;
};

// Set while a server thread decodes a peer's request. A proxy in it that names another
// server is rebuilt only through a connection this process already has to that server:
// the server never presents a key to an address a peer chose (which could relay the
// challenge to a server that takes the same key).
inline thread_local bool decoding_a_peers_request = false;

class DecodingPeersRequest {
public:
    DecodingPeersRequest() noexcept : was_(decoding_a_peers_request) { decoding_a_peers_request = true; }
    ~DecodingPeersRequest() { decoding_a_peers_request = was_; }
    DecodingPeersRequest(const DecodingPeersRequest&) = delete;
    DecodingPeersRequest& operator=(const DecodingPeersRequest&) = delete;

private:
    bool was_;
};

// Registers a server for as long as it serves.
class LocalServerRegistration {
public:
    explicit LocalServerRegistration(LocalServer server) : address_(server.address) {
        LocalServers::instance().add(std::move(server));
    }
    ~LocalServerRegistration() { LocalServers::instance().remove(address_); }
    LocalServerRegistration(const LocalServerRegistration&) = delete;
    LocalServerRegistration& operator=(const LocalServerRegistration&) = delete;

private:
    connection::Address address_;
};

}  // namespace multiprocessing::detail::manager
