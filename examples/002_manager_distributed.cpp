// Twin of seed 002_8c71d8103970d9b2.txt, lines 306-403 (the distributed processes of
// Liao Xuefeng's tutorial: a server holding a task queue, a result queue, a Condition and
// a function; a producer and a consumer, separate programs, that reach them over TCP):
//   manager_server.py:
//     from multiprocessing.managers import BaseManager
//     from multiprocessing import Condition, Value
//     import queue
//     host = '127.0.0.1'
//     port = 8080
//     authkey = b'python'
//     task_q = queue.Queue(10)
//     result_q = queue.Queue(20)
//     cond = Condition()
//     done = Value('i', 0)
//     def double(n):
//         return n * 2
//     class ServerManager(BaseManager):
//         pass
//     ServerManager.register('get_task_queue', callable=lambda: task_q)
//     ServerManager.register('get_result_queue', callable=lambda: result_q)
//     ServerManager.register('get_cond', callable=lambda: cond)
//     ServerManager.register('get_done', callable=lambda: done)
//     ServerManager.register('get_double', callable=double)
//     server_manager = ServerManager(address=(host, port), authkey=authkey)
//     server = server_manager.get_server()
//     print('start server')
//     server.serve_forever()
//   manager_producer.py:
//     from multiprocessing.managers import BaseManager
//     import random
//     import time
//     (host, port, authkey as above)
//     class ProducerManager(BaseManager):
//         pass
//     ProducerManager.register('get_task_queue')
//     ProducerManager.register('get_cond')
//     ProducerManager.register('get_done')
//     producer_manager = ProducerManager(address=(host, port), authkey=authkey)
//     producer_manager.connect()
//     task_q = producer_manager.get_task_queue()
//     cond = producer_manager.get_cond()
//     # done = producer_manager.get_done()
//     count = 20 # Up to 20 tasks
//     while count > 0:
//         if cond.acquire():
//             if not task_q.full():
//                 n = random.randint(0, 10)
//                 task_q.put(n)
//                 print("Producer:deliver one, now tasks:%s" % task_q.qsize())
//                 cond.notify()
//                 count -= 1
//                 time.sleep(0.5)
//             else:
//                 print("Producer:already full, stop deliver, now tasks:%s" % task_q.qsize())
//                 cond.wait()
//             cond.release()
//     # done.value = 1
//     print('Producer break')
//   manager_consumer.py:
//     from multiprocessing.managers import BaseManager
//     (host, port, authkey as above)
//     class ConsumerManager(BaseManager):
//         pass
//     ConsumerManager.register('get_task_queue')
//     ConsumerManager.register('get_result_queue')
//     ConsumerManager.register('get_cond')
//     # ConsumerManager.register('get_done')
//     ConsumerManager.register('get_double')
//     consumer_manager = ConsumerManager(address=(host, port), authkey=authkey)
//     consumer_manager.connect()
//     task_q = consumer_manager.get_task_queue()
//     result_q = consumer_manager.get_result_queue()
//     cond = consumer_manager.get_cond()
//     # done = consumer_manager.get_done()
//     while 1:
//         if result_q.full():
//             print('result queue is full')
//             break
//         if cond.acquire():
//             if not task_q.empty():
//                 arg = task_q.get()
//                 res = consumer_manager.get_double(arg)
//                 print("Consumer:consume one, now tasks:%s" % task_q.qsize())
//                 result_q.put(res)
//                 cond.notify()
//             else:
//                 print("Consumer:only 0, stop consume, products")
//                 cond.wait()
//             cond.release()
//     while 1:
//         if result_q.empty():
//             break
//         result = result_q.get()
//         print('result is: %s' % result)
//
// The three programs are three roles of this one:
//   002_manager_distributed server PORT     serves until killed (PORT 0: a free port,
//                                           printed)
//   002_manager_distributed producer PORT
//   002_manager_distributed consumer PORT
//   002_manager_distributed                 all three: the server from a child process
//                                           (BaseManager::start(), on a free port), the
//                                           producer and the consumer as fresh runs of
//                                           this executable (/proc/self/exe), as separate
//                                           programs would be; then it checks that the
//                                           consumer's results are the doubles of what
//                                           the producer delivered, in order
//
// C++ differences: queue.Queue is mp::Queue<int> (put and get are synchronous, as
// queue.Queue's are); `double` is a keyword, so the function is double_. The producer
// prints the n it delivers, so that the run-everything mode can check the consumer's
// results against it, and sets `done` (commented out in the seed) when it has
// delivered all 20. time.sleep(0.5) is 5 ms. The seed's acquire(), wait() and get() wait
// forever; here each waits at most a second (the loops re-check what they wait for), and
// a role gives up with exit code 1 after 20 s, so a lost wake-up cannot hang the example.
#include <multiprocessing.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "check.hpp"

extern char** environ;

namespace mp = multiprocessing;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const char* const host = "127.0.0.1";               // host = '127.0.0.1'
const char* const authkey = "python";               // authkey = b'python'
constexpr int tasks = 20;                           // count = 20 # Up to 20 tasks
constexpr auto role_time_limit = 20s;               // a role that is not done by then gives up
constexpr auto example_time_limit = 25s;            // the run-everything mode kills what is left

int double_(int n) { return n * 2; }                // def double(n): return n * 2

// manager_server.py's objects and registrations. The objects are made on first use, so
// only the process that serves them (never a producer or consumer) creates them.
void register_server_side(mp::BaseManager& server_manager) {
    server_manager.register_("get_task_queue", []() -> mp::Queue<int>& {
        static mp::Queue<int> task_q(10);           // task_q = queue.Queue(10)
        return task_q;
    });
    server_manager.register_("get_result_queue", []() -> mp::Queue<int>& {
        static mp::Queue<int> result_q(20);         // result_q = queue.Queue(20)
        return result_q;
    });
    server_manager.register_("get_cond", []() -> mp::Condition& {
        static mp::Condition cond;                  // cond = Condition()
        return cond;
    });
    server_manager.register_("get_done", []() -> mp::Value<int>& {
        static mp::Value<int> done(0);              // done = Value('i', 0)
        return done;
    });
    server_manager.register_("get_double", double_);   // ServerManager.register('get_double', callable=double)
}

mp::managers::ManagerOptions options(int port) {
    return {.address = {host, static_cast<std::uint16_t>(port)}, .authkey = authkey};
}

void give_up_if_late(Clock::time_point deadline, const char* who) {
    if (Clock::now() > deadline)
        throw std::runtime_error(std::string(who) + ": not done after " + std::to_string(role_time_limit.count()) +
                                 " s, giving up");
}

int server(int port) {                              // manager_server.py
    mp::BaseManager server_manager(options(port));  // server_manager = ServerManager(address=(host, port), authkey=authkey)
    register_server_side(server_manager);
    auto server = server_manager.get_server();                    // server = server_manager.get_server()
    std::printf("start server\n");                  // print('start server')
    std::printf("listening on %s\n", server.address().to_string().c_str());
    std::fflush(stdout);
    server.serve_forever();                         // server.serve_forever()
    return 0;
}

int producer(int port) {                            // manager_producer.py
    mp::BaseManager producer_manager(options(port));
    producer_manager.register_<mp::Queue<int>>("get_task_queue");   // ProducerManager.register('get_task_queue')
    producer_manager.register_<mp::Condition>("get_cond");          // ProducerManager.register('get_cond')
    producer_manager.register_<mp::Value<int>>("get_done");         // ProducerManager.register('get_done')
    producer_manager.connect();                     // producer_manager.connect()
    auto task_q = producer_manager.get<mp::Queue<int>>("get_task_queue");   // task_q = producer_manager.get_task_queue()
    auto cond = producer_manager.get<mp::Condition>("get_cond");   // cond = producer_manager.get_cond()
    auto done = producer_manager.get<mp::Value<int>>("get_done");   // done = producer_manager.get_done()
    std::mt19937 random(std::random_device{}());
    std::uniform_int_distribution<int> randint(0, 10);
    const auto deadline = Clock::now() + role_time_limit;

    int count = tasks;                              // count = 20
    while (count > 0) {                             // while count > 0:
        give_up_if_late(deadline, "Producer");
        if (cond.acquire(1s)) {                     //     if cond.acquire():
            if (!task_q.full()) {                   //         if not task_q.full():
                int n = randint(random);            //             n = random.randint(0, 10)
                task_q.put(n, 1s);                  //             task_q.put(n)
                std::printf("Producer:deliver one, now tasks:%zu (n=%d)\n", task_q.qsize(), n);
                std::fflush(stdout);                //             print("Producer:deliver one, now tasks:%s" % task_q.qsize())
                cond.notify();                      //             cond.notify()
                count -= 1;                         //             count -= 1
                std::this_thread::sleep_for(5ms);   //             time.sleep(0.5)
            } else {                                //         else:
                std::printf("Producer:already full, stop deliver, now tasks:%zu\n", task_q.qsize());
                std::fflush(stdout);                //             print("Producer:already full, ...")
                cond.wait(1s);                      //             cond.wait()
            }
            cond.release();                         //         cond.release()
        }
    }
    done.set(1);                                    // done.value = 1
    std::printf("Producer break\n");                // print('Producer break')
    std::fflush(stdout);
    return 0;
}

int consumer(int port) {                            // manager_consumer.py
    mp::BaseManager consumer_manager(options(port));
    consumer_manager.register_<mp::Queue<int>>("get_task_queue");   // ConsumerManager.register('get_task_queue')
    consumer_manager.register_<mp::Queue<int>>("get_result_queue");   // ConsumerManager.register('get_result_queue')
    consumer_manager.register_<mp::Condition>("get_cond");          // ConsumerManager.register('get_cond')
    consumer_manager.register_<int(int)>("get_double");             // ConsumerManager.register('get_double')
    consumer_manager.connect();                     // consumer_manager.connect()
    auto task_q = consumer_manager.get<mp::Queue<int>>("get_task_queue");   // task_q = consumer_manager.get_task_queue()
    auto result_q = consumer_manager.get<mp::Queue<int>>("get_result_queue");   // result_q = consumer_manager.get_result_queue()
    auto cond = consumer_manager.get<mp::Condition>("get_cond");   // cond = consumer_manager.get_cond()
    const auto deadline = Clock::now() + role_time_limit;

    while (true) {                                  // while 1:
        give_up_if_late(deadline, "Consumer");
        if (result_q.full()) {                      //     if result_q.full():
            std::printf("result queue is full\n");  //         print('result queue is full')
            std::fflush(stdout);
            break;                                  //         break
        }
        if (cond.acquire(1s)) {                     //     if cond.acquire():
            if (!task_q.empty()) {                  //         if not task_q.empty():
                int arg = task_q.get(1s);           //             arg = task_q.get()
                int res = consumer_manager.call<int(int)>("get_double", arg);   // res = consumer_manager.get_double(arg)
                std::printf("Consumer:consume one, now tasks:%zu\n", task_q.qsize());
                std::fflush(stdout);                //             print("Consumer:consume one, now tasks:%s" % task_q.qsize())
                result_q.put(res, 1s);              //             result_q.put(res)
                cond.notify();                      //             cond.notify()
            } else {                                //         else:
                std::printf("Consumer:only 0, stop consume, products\n");
                std::fflush(stdout);                //             print("Consumer:only 0, stop consume, products")
                cond.wait(1s);                      //             cond.wait()
            }
            cond.release();                         //         cond.release()
        }
    }
    while (true) {                                  // while 1:
        if (result_q.empty())                       //     if result_q.empty():
            break;                                  //         break
        int result = result_q.get(1s);              //     result = result_q.get()
        std::printf("result is: %d\n", result);     //     print('result is: %s' % result)
        std::fflush(stdout);
    }
    return 0;
}

// ---- the run-everything mode ----------------------------------------------------------

// A role run as its own program: this executable again, with its stdout on a pipe that
// the parent reads (and echoes) line by line.
struct Role {
    const char* name;
    pid_t pid = -1;
    int out = -1;                                   // read end of its stdout
    std::string pending{};                          // a line not yet ended
    std::vector<std::string> lines{};
    int status = -1;                                // from waitpid
};

bool spawn(Role& role, int port) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return false;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);   // dup2 clears CLOEXEC on fd 1
    const std::string port_text = std::to_string(port);
    char* argv[] = {const_cast<char*>("002_manager_distributed"), const_cast<char*>(role.name),
                    const_cast<char*>(port_text.c_str()), nullptr};
    const int rc = ::posix_spawn(&role.pid, "/proc/self/exe", &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    if (rc != 0) {
        ::close(fds[0]);
        std::fprintf(stderr, "posix_spawn %s: %s\n", role.name, std::strerror(rc));
        return false;
    }
    role.out = fds[0];
    return true;
}

// Echoes the roles' output as it comes, until both have closed their stdout or time runs
// out; then reaps them, killing any still running. Returns false on a timeout.
bool follow(std::vector<Role*> roles, Clock::time_point deadline) {
    bool in_time = true;
    for (;;) {
        std::vector<pollfd> fds;
        std::vector<Role*> open;
        for (Role* r : roles)
            if (r->out >= 0) {
                fds.push_back({r->out, POLLIN, 0});
                open.push_back(r);
            }
        if (fds.empty()) break;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) {
            in_time = false;
            break;
        }
        if (::poll(fds.data(), fds.size(), static_cast<int>(left)) < 0 && errno != EINTR) break;
        for (std::size_t i = 0; i < fds.size(); ++i) {
            if (!fds[i].revents) continue;
            Role& r = *open[i];
            char buf[4096];
            const ssize_t n = ::read(r.out, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                ::close(r.out);
                r.out = -1;
                continue;
            }
            r.pending.append(buf, static_cast<std::size_t>(n));
            for (std::size_t end; (end = r.pending.find('\n')) != std::string::npos;) {
                r.lines.push_back(r.pending.substr(0, end));
                std::printf("%s\n", r.lines.back().c_str());
                r.pending.erase(0, end + 1);
            }
            std::fflush(stdout);
        }
    }
    for (Role* r : roles) {
        if (r->out >= 0) ::close(std::exchange(r->out, -1));
        // Exited or not, give it until the deadline (and a moment), then kill it.
        while (::waitpid(r->pid, &r->status, WNOHANG) == 0) {
            if (Clock::now() > deadline + 1s) {
                std::fprintf(stderr, "%s did not finish in time: killed\n", r->name);
                ::kill(r->pid, SIGKILL);
                ::waitpid(r->pid, &r->status, 0);
                in_time = false;
                break;
            }
            std::this_thread::sleep_for(10ms);
        }
    }
    return in_time;
}

bool exited_ok(const Role& r) { return WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0; }

// The numbers after `marker` in the lines that have it.
std::vector<int> numbers_after(const std::vector<std::string>& lines, const std::string& marker) {
    std::vector<int> out;
    for (const auto& line : lines)
        if (auto at = line.find(marker); at != std::string::npos) out.push_back(std::atoi(line.c_str() + at + marker.size()));
    return out;
}

int run_all() {
    const auto deadline = Clock::now() + example_time_limit;
    mp::BaseManager server_manager(options(0));     // port 0: whatever port is free
    register_server_side(server_manager);
    server_manager.start();
    const int port = server_manager.address().port;
    std::printf("start server (%s)\n", server_manager.address().to_string().c_str());
    std::fflush(stdout);
    CHECK(port != 0);

    Role producer_role{"producer"}, consumer_role{"consumer"};
    CHECK(spawn(producer_role, port));
    if (!spawn(consumer_role, port)) {
        ::kill(producer_role.pid, SIGKILL);
        ::waitpid(producer_role.pid, nullptr, 0);
        return 1;
    }
    const bool in_time = follow({&producer_role, &consumer_role}, deadline);

    CHECK(in_time);
    CHECK(exited_ok(producer_role));
    CHECK(exited_ok(consumer_role));
    // The consumer got what the producer delivered, each task doubled, in order (one
    // producer, one consumer, FIFO queues).
    const std::vector<int> delivered = numbers_after(producer_role.lines, "(n=");
    const std::vector<int> results = numbers_after(consumer_role.lines, "result is: ");
    CHECK(delivered.size() == tasks);
    std::vector<int> doubled;
    for (int n : delivered) doubled.push_back(double_(n));
    CHECK(results == doubled);

    // What the server holds at the end: both queues drained, and `done` set.
    auto task_q = server_manager.get<mp::Queue<int>>("get_task_queue");
    auto result_q = server_manager.get<mp::Queue<int>>("get_result_queue");
    auto done = server_manager.get<mp::Value<int>>("get_done");
    CHECK(task_q.empty());
    CHECK(result_q.empty());
    CHECK(done.get() == 1);
    CHECK(server_manager.call<int(int)>("get_double", 21) == 42);

    server_manager.shutdown();
    return 0;
}

int main(int argc, char** argv) {
    mp::freeze_support();
    if (argc == 1) return run_all();
    const std::string role = argv[1];
    if (argc != 3 || (role != "server" && role != "producer" && role != "consumer")) {
        std::fprintf(stderr, "usage: %s [server PORT | producer PORT | consumer PORT]\n", argv[0]);
        return 2;
    }
    const int port = std::atoi(argv[2]);
    try {
        if (role == "server") return server(port);
        if (role == "producer") return producer(port);
        return consumer(port);
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "%s: %s\n", role.c_str(), e.what());
        return 1;
    }
}
