// Twin of seed 002_8c71d8103970d9b2.txt, lines 65-129 (producer/consumer with a
// JoinableQueue for tasks and a Queue for results):
//     def double(n):
//         return n * 2
//     def producer(name, task_q):
//         while 1:
//             n = random.random()
//             if n > 0.8: # Jump out when greater than 0.8
//                 task_q.put(None)
//                 print('%s break.' % name)
//                 break
//             print('%s produce %s.' % (name, n))
//             task_q.put((double, n))
//     def consumer(name, task_q, result_q):
//         while 1:
//             task = task_q.get()
//             if task is None:
//                 print('%s break.' % name)
//                 break
//             func, arg = task
//             res = func(arg)
//             time.sleep(0.5) # block
//             task_q.task_done()
//             result_q.put(res)
//             print('%s consume %s, result %s' % (name, arg, res))
//     def run():
//         task_q = JoinableQueue()
//         result_q = Queue()
//         processes = []
//         p1 = Process(name='p1', target=producer, args=('p1', task_q))
//         c1 = Process(name='c1', target=consumer, args=('c1', task_q, result_q))
//         p1.start()
//         c1.start()
//         processes.append(p1)
//         processes.append(c1)
//         for p in processes:   # join() blocks the main process
//             p.join()
//         while 1:              # After the child process ends, the value in the output result
//             if result_q.empty():
//                 break
//             result = result_q.get()
//             print('result is: %s' % result)
// The seed then says that with several consumers only one gets the None and the others
// hang in task_q.get(), and adds a timeout:
//     def consumer(name, task_q, result_q):
//         while 1:
//             try:
//                 task = task_q.get(1) # 1s
//             except queue.Empty:
//                 print('%s time out, break.' % name)
//             ...
// As printed, that consumer does not break on Empty, and get(1) is get(block=1), no
// timeout; run_with_timeouts() below does what its comments say: get(timeout=1), break.
//
// C++ differences: `double` is a keyword, and a function cannot travel inside a queue
// item as a pickled function does, so `double` is a function object, Double (an empty,
// trivially copyable struct, which can). None is std::nullopt. time.sleep(0.5) is
// scaled down to 50 ms. random.random() is a seeded generator, so the parent can replay
// what the producer drew and check that every task produced was consumed.
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

std::mt19937_64 generator(40);                      // random's state: each child starts from a copy
double random_random() { return std::uniform_real_distribution<double>(0.0, 1.0)(generator); }

struct Double {                                     // def double(n):
    double operator()(double n) const { return n * 2; }   // return n * 2
};
using Task = std::optional<std::tuple<Double, double>>;   // None, or (double, n)

void producer(std::string name, mp::JoinableQueue<Task> task_q) {   // def producer(name, task_q):
    while (true) {                                  //     while 1:
        double n = random_random();                 //         n = random.random()
        if (n > 0.8) {                              //         if n > 0.8:
            task_q.put(std::nullopt);               //             task_q.put(None)
            std::printf("%s break.\n", name.c_str());   //         print('%s break.' % name)
            std::fflush(stdout);
            break;                                  //             break
        }
        std::printf("%s produce %.17g.\n", name.c_str(), n);   //  print('%s produce %s.' % (name, n))
        std::fflush(stdout);
        task_q.put(std::tuple{Double{}, n});        //         task_q.put((double, n))
    }
}

void consumer(std::string name, mp::JoinableQueue<Task> task_q, mp::Queue<double> result_q) {
    while (true) {                                  //     while 1:
        Task task = task_q.get();                   //         task = task_q.get()
        if (!task) {                                //         if task is None:
            std::printf("%s break.\n", name.c_str());   //         print('%s break.' % name)
            std::fflush(stdout);
            break;                                  //             break
        }
        auto [func, arg] = *task;                   //         func, arg = task
        double res = func(arg);                     //         res = func(arg)
        std::this_thread::sleep_for(50ms);          //         time.sleep(0.5) # block
        task_q.task_done();                         //         task_q.task_done()
        result_q.put(res);                          //         result_q.put(res)
        std::printf("%s consume %.17g, result %.17g\n", name.c_str(), arg, res);
        std::fflush(stdout);                        //         print('%s consume %s, result %s' % (name, arg, res))
    }
}

// The seed's second consumer, with its timeout working as its comments say.
void consumer_with_timeout(std::string name, mp::JoinableQueue<Task> task_q, mp::Queue<double> result_q) {
    while (true) {                                  //     while 1:
        Task task;
        try {                                       //         try:
            task = task_q.get(1s);                  //             task = task_q.get(timeout=1) # 1s
        } catch (const mp::Empty&) {                //         except queue.Empty:
            std::printf("%s time out, break.\n", name.c_str());   // print('%s time out, break.' % name)
            std::fflush(stdout);
            break;                                  //             break
        }
        if (!task) {                                //         if task is None:
            std::printf("%s break.\n", name.c_str());
            std::fflush(stdout);
            break;
        }
        auto [func, arg] = *task;                   //         func, arg = task
        double res = func(arg);                     //         res = func(arg)
        std::this_thread::sleep_for(50ms);          //         time.sleep(0.5) # block
        task_q.task_done();                         //         task_q.task_done()
        result_q.put(res);                          //         result_q.put(res)
        std::printf("%s consume %.17g, result %.17g\n", name.c_str(), arg, res);
        std::fflush(stdout);
    }
}

// What the producer drew: the parent replays the generator from the same state.
std::multiset<double> expected_results() {
    std::multiset<double> out;
    for (double n = random_random(); n <= 0.8; n = random_random()) out.insert(Double{}(n));
    return out;
}

std::multiset<double> drain(mp::Queue<double>& result_q) {
    std::multiset<double> results;
    while (true) {                                  //     while 1:
        if (result_q.empty())                       //         if result_q.empty():
            break;                                  //             break
        double result = result_q.get();             //         result = result_q.get()
        std::printf("result is: %.17g\n", result);  //         print('result is: %s' % result)
        results.insert(result);
    }
    std::fflush(stdout);
    return results;
}

int run() {                                         // def run():
    mp::JoinableQueue<Task> task_q;                 //     task_q = JoinableQueue()
    mp::Queue<double> result_q;                     //     result_q = Queue()
    std::vector<mp::Process*> processes;            //     processes = []
    mp::Process p1(producer, "p1", task_q);         //     p1 = Process(name='p1', target=producer, args=('p1', task_q))
    p1.set_name("p1");
    mp::Process c1(consumer, "c1", task_q, result_q);   // c1 = Process(name='c1', target=consumer, args=('c1', task_q, result_q))
    c1.set_name("c1");
    p1.start();                                     //     p1.start()
    c1.start();                                     //     c1.start()
    processes.push_back(&p1);                       //     processes.append(p1)
    processes.push_back(&c1);                       //     processes.append(c1)
    for (mp::Process* p : processes)                //     for p in processes:
        p->join();                                  //         p.join()
    std::multiset<double> results = drain(result_q);   // while 1: ... print('result is: %s' % result)

    // join() returned for both: the producer and the consumer ended cleanly.
    CHECK(p1.exitcode() == 0);
    CHECK(c1.exitcode() == 0);
    // Every task produced was consumed, once: the results are exactly double(n) for
    // each n the producer drew.
    CHECK(results == expected_results());
    CHECK(task_q.empty());
    // task_q.join() would wait: the consumer took the None without task_done(). Every
    // other task was marked done, so one more task_done() lets join() return.
    CHECK(!task_q.join(100ms));
    task_q.task_done();
    task_q.join();
    return 0;
}

int run_with_timeouts() {                           // the same with two consumers
    mp::JoinableQueue<Task> task_q;
    mp::Queue<double> result_q;
    mp::Process p1(producer, "p1", task_q);
    mp::Process c1(consumer_with_timeout, "c1", task_q, result_q);
    mp::Process c2(consumer_with_timeout, "c2", task_q, result_q);
    p1.start();
    c1.start();
    c2.start();
    for (mp::Process* p : {&p1, &c1, &c2}) p->join();   // nobody hangs in task_q.get()
    std::multiset<double> results = drain(result_q);

    CHECK(p1.exitcode() == 0);
    CHECK(c1.exitcode() == 0);
    CHECK(c2.exitcode() == 0);
    CHECK(results == expected_results());
    CHECK(task_q.empty());
    task_q.task_done();                             // for the None, as above
    CHECK(task_q.join(0ms));
    return 0;
}

int main() {                                        // if __name__ == '__main__':
    mp::freeze_support();
    if (run() != 0) return 1;                       //     run()
    return run_with_timeouts();
}
