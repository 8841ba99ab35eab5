// Twin of seed 002_8c71d8103970d9b2.txt, lines 277-303 ("Distribution process": a
// BaseManager serving a list over TCP, and a client program that connects and appends):
//   manager_server.py:
//     from multiprocessing.managers import BaseManager
//     host = '127.0.0.1'
//     port = 8080
//     authkey = b'python'
//     shared_list = []
//     class ServerManager(BaseManager):
//         pass
//     ServerManager.register('get_list', callable=lambda: shared_list)
//     server_manager = ServerManager(address=(host, port), authkey=authkey)
//     server = server_manager.get_server()
//     server.serve_forever()
//   manager_client.py
//     from multiprocessing.managers import BaseManager
//     host = '127.0.0.1'
//     port = 8080
//     authkey = b'python'
//     class ClientManager(BaseManager):
//         pass
//     ClientManager.register('get_list')
//     client_manager = ClientManager(address=(host, port), authkey=authkey)
//     client_manager.connect()
//     l = client_manager.get_list()
//     print(l)
//     l.append('new_value')
//     print(l)
//   "After running several times, new_value is added to the shared_list."
//
// One program plays both parts:
//   002_manager_remote_list server PORT   manager_server.py: serves until killed
//   002_manager_remote_list client PORT   manager_client.py, once
//   002_manager_remote_list               the server (from a child, via start()) on a
//                                         free port, then the client run several times,
//                                         each in its own process, then a few at once
// Port 0 picks a free port (8080 may be taken); the server role prints the one it got.
// C++ differences: `register` is a keyword (register_), and the client declares what
// get_list serves (a std::vector<std::string>, whose proxy is a ListProxy).
#include <multiprocessing.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;

const char* const host = "127.0.0.1";               // host = '127.0.0.1'
const char* const authkey = "python";               // authkey = b'python'

std::vector<std::string>& shared_list() {           // shared_list = []
    static std::vector<std::string> list;           // only the server process ever makes it
    return list;
}

void register_server_side(mp::BaseManager& server_manager) {
    server_manager.register_("get_list", []() -> std::vector<std::string>& { return shared_list(); });
}   // ServerManager.register('get_list', callable=lambda: shared_list)

void print_list(const std::vector<std::string>& l) {
    std::printf("[");
    for (std::size_t i = 0; i < l.size(); ++i) std::printf("%s'%s'", i ? ", " : "", l[i].c_str());
    std::printf("]\n");
    std::fflush(stdout);
}

// manager_client.py. Throws (exit code 1 in a Process, or from main) if its append did
// not land at the end of the list it saw.
void client(int port) {
    mp::BaseManager client_manager({.address = {host, static_cast<std::uint16_t>(port)}, .authkey = authkey});
    client_manager.register_<std::vector<std::string>>("get_list");   // ClientManager.register('get_list')
    client_manager.connect();                       // client_manager.connect()
    auto l = client_manager.get<std::vector<std::string>>("get_list");   // l = client_manager.get_list()
    const std::vector<std::string> before = l.get();
    print_list(before);                             // print(l)
    l.append("new_value");                          // l.append('new_value')
    const std::vector<std::string> after = l.get();
    print_list(after);                              // print(l)
    // Other clients may append at the same time: ours is in there, after what we saw.
    if (after.size() <= before.size() || !std::equal(before.begin(), before.end(), after.begin()) ||
        std::count(after.begin(), after.end(), "new_value") <= std::count(before.begin(), before.end(), "new_value"))
        throw std::runtime_error("the client's append did not arrive");
}

int serve(int port) {                               // manager_server.py
    mp::BaseManager server_manager({.address = {host, static_cast<std::uint16_t>(port)}, .authkey = authkey});
    register_server_side(server_manager);
    auto server = server_manager.get_server();                    // server = server_manager.get_server()
    std::printf("serving on %s\n", server.address().to_string().c_str());
    std::fflush(stdout);
    server.serve_forever();                         // server.serve_forever()
    return 0;
}

int run_all() {
    // The server, in a child process, on a port of the system's choosing.
    mp::BaseManager server_manager({.address = {host, 0}, .authkey = authkey});
    register_server_side(server_manager);
    server_manager.start();
    const int port = server_manager.address().port;
    std::printf("server on %s\n", server_manager.address().to_string().c_str());
    std::fflush(stdout);
    CHECK(port != 0);

    // "After running several times, new_value is added to the shared_list."
    constexpr int runs = 3;
    for (int i = 0; i < runs; ++i) {
        mp::Process c(client, port);
        c.start();
        c.join();
        CHECK(c.exitcode() == 0);
    }
    auto l = server_manager.get<std::vector<std::string>>("get_list");
    CHECK(l.get() == std::vector<std::string>(runs, "new_value"));

    // Several clients at once: the server takes every append, none is lost.
    constexpr int at_once = 4;
    std::vector<mp::Process> clients;
    for (int i = 0; i < at_once; ++i) clients.emplace_back(client, port);
    for (auto& c : clients) c.start();
    for (auto& c : clients) {
        CHECK(c.join(mp::Timeout(20.0)));
        CHECK(c.exitcode() == 0);
    }
    print_list(l.get());
    CHECK(l.get() == std::vector<std::string>(runs + at_once, "new_value"));

    // A client with the wrong key is refused, and the server goes on serving.
    mp::BaseManager intruder({.address = {host, static_cast<std::uint16_t>(port)}, .authkey = "wrong"});
    bool refused = false;
    try {
        intruder.connect();
    } catch (const mp::AuthenticationError&) {
        refused = true;
    }
    CHECK(refused);
    CHECK(l.size() == runs + at_once);

    server_manager.shutdown();
    return 0;
}

int main(int argc, char** argv) {
    mp::freeze_support();
    if (argc == 3 && std::string(argv[1]) == "server") return serve(std::atoi(argv[2]));
    if (argc == 3 && std::string(argv[1]) == "client") {
        try {
            client(std::atoi(argv[2]));
            return 0;
        } catch (const std::exception& e) {
            std::fprintf(stderr, "client: %s\n", e.what());
            return 1;
        }
    }
    if (argc != 1) {
        std::fprintf(stderr, "usage: %s [server PORT | client PORT]\n", argv[0]);
        return 2;
    }
    return run_all();
}
