// Twin of seed 001_22a7b71a27b014c2.txt, lines 84-92 ("同步": a Lock demo; line 91 is garbled
// in the seed, it was `for num in range(10):`):
//     from multiprocessing import Process, Lock
//     def l(lock, num):
//         lock.acquire()
//         print "Hello Num: %s" % (num)
//         lock.release()
//     if __name__ == '__main__':
//         lock = Lock()
//         for num in range(10):
//             Process(target=l, args=(lock, num)).start()
// The Python leaves the joining to the exit of the main process; here the processes are
// kept so that they can be joined and the outcome checked: each child also counts, under
// the same lock, its number in a shared Array and whether anyone else was inside.
#include <multiprocessing.hpp>

#include <cstdio>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;

void l(mp::Lock lock, int num, mp::RawArray<int> printed, mp::RawValue<int> inside) {  // def l(lock, num):
    lock.acquire();                                  //     lock.acquire()
    const bool alone = ++inside.value() == 1;
    std::printf("Hello Num: %d\n", num);             //     print "Hello Num: %s" % (num)
    std::fflush(stdout);
    printed[num] += alone ? 1 : 100;                 // (a second process inside would show as 100)
    --inside.value();
    lock.release();                                  //     lock.release()
}

int main() {
    mp::freeze_support();                            // if __name__ == '__main__':
    mp::Lock lock;                                   //     lock = Lock()
    mp::RawArray<int> printed(10);                   // (how often each number was printed)
    mp::RawValue<int> inside(0);                     // (how many processes are between acquire and release)
    std::vector<mp::Process> processes;
    for (int num = 0; num < 10; ++num) {             //     for num in range(10):
        processes.emplace_back(l, lock, num, printed, inside);   //     Process(target=l, args=(lock, num)).start()
        processes.back().start();
    }

    // every child ran alone under the lock and printed its number exactly once
    for (auto& p : processes) {
        p.join();
        CHECK(p.exitcode() == 0);
    }
    for (int num = 0; num < 10; ++num) CHECK(printed[num] == 1);
    CHECK(inside.value() == 0);
    CHECK(lock.acquire(false));  // and the lock is free again
    lock.release();
    return 0;
}
