// Twin of seed 001_22a7b71a27b014c2.txt, lines 40-59 (Queue):
//     from multiprocessing import Process, Queue
//     def offer(queue):
//         queue.put("Hello World")
//     if __name__ == '__main__':
//         q = Queue()
//         p = Process(target=offer, args=(q,))
//         p.start()
//         print q.get()
// The text before it (lines 44-53) describes put(obj, block, timeout) raising Queue.Full
// and get(block, timeout) raising Queue.Empty; the second part checks those sentences.
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <string>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

void offer(mp::Queue<std::string> queue) {          // def offer(queue):
    queue.put("Hello World");                       //     queue.put("Hello World")
}

int main() {                                        // if __name__ == '__main__':
    mp::freeze_support();
    mp::Queue<std::string> q;                       //     q = Queue()
    mp::Process p(offer, q);                        //     p = Process(target=offer, args=(q,))
    p.start();                                      //     p.start()
    std::string got = q.get();
    std::printf("%s\n", got.c_str());               //     print q.get()
    std::fflush(stdout);

    CHECK(got == "Hello World");                    // the child's item reached the parent
    p.join();                                       // (Python joins it at interpreter exit)
    CHECK(p.exitcode() == 0);
    CHECK(q.empty());

    // "If block is True and timeout is positive, put blocks up to timeout waiting for
    //  room, then raises Queue.Full; if block is False and the queue is full, it raises
    //  Queue.Full at once."
    mp::Queue<int> small(1);
    small.put(1);
    bool full_at_once = false, full_after_timeout = false;
    try { small.put(2, /*block=*/false); } catch (const mp::Full&) { full_at_once = true; }
    auto t0 = std::chrono::steady_clock::now();
    try { small.put(2, /*block=*/true, 0.1s); } catch (const mp::Full&) { full_after_timeout = true; }
    CHECK(full_at_once);
    CHECK(full_after_timeout && std::chrono::steady_clock::now() - t0 >= 100ms);

    // "get removes and returns an item; with block False it returns one if available,
    //  else raises Queue.Empty at once; with a timeout it raises Queue.Empty when none
    //  came in time."
    CHECK(small.get(/*block=*/false) == 1);
    bool empty_at_once = false, empty_after_timeout = false;
    try { small.get(/*block=*/false); } catch (const mp::Empty&) { empty_at_once = true; }
    t0 = std::chrono::steady_clock::now();
    try { small.get(/*block=*/true, 0.1s); } catch (const mp::Empty&) { empty_after_timeout = true; }
    CHECK(empty_at_once);
    CHECK(empty_after_timeout && std::chrono::steady_clock::now() - t0 >= 100ms);
    return 0;
}
