// Twin of seed 000_d95e13487ef67c7d.txt, lines 99-117 ("2.2 类 multiprocessing.pool.AsyncResult"),
// which describes, for the result of Pool.apply_async():
//     get([timeout])  -- the result; TimeoutError when not ready within timeout;
//                        an exception raised by the remote call is re-raised by get()
//     wait([timeout]) -- wait until the result is ready or the timeout ran out
//     ready()         -- whether the call has completed
//     successful()    -- completed without raising; raises if the result is not ready
// The seed has no code for this section; this is the smallest program that uses each method.
#include <multiprocessing.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <typeinfo>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

int slow_square(int x) {
    std::this_thread::sleep_for(300ms);
    return x * x;
}

int fail(std::string why) {
    throw std::runtime_error(why);
}

int main() {
    mp::freeze_support();
    mp::Pool pool(2);

    // wait(timeout) / ready() / successful() / get(timeout) on a slow task
    auto slow = pool.apply_async(slow_square, 7);
    CHECK(!slow.wait(20ms));                        // result.wait(0.02) -> not ready yet
    CHECK(!slow.ready());                           // result.ready() -> False
    try {
        (void)slow.successful();                    // result.successful() -> raises
        std::fprintf(stderr, "successful() before ready() should throw mp::ValueError\n");
        return 1;
    } catch (const mp::ValueError& e) {
        std::printf("successful() before ready: ValueError: %s\n", e.what());
    }
    try {
        (void)slow.get(20ms);                       // result.get(timeout=0.02) -> TimeoutError
        std::fprintf(stderr, "get(20ms) should throw mp::TimeoutError\n");
        return 1;
    } catch (const mp::TimeoutError& e) {
        std::printf("get(20ms): TimeoutError: %s\n", e.what());
    }
    slow.wait();                                    // result.wait()
    CHECK(slow.ready());                            // result.ready() -> True
    CHECK(slow.successful());                       // result.successful() -> True
    CHECK(slow.get() == 49);                        // result.get() -> 49
    CHECK(slow.get(0s) == 49);                      // get() again gives the same result
    std::printf("slow_square(7) = %d\n", slow.get());

    // an exception raised by the remote call is re-raised by get()
    auto failing = pool.apply_async(fail, "bad input");
    CHECK(failing.wait(5s));                        // result.wait(5) -> True once done
    CHECK(failing.ready());
    CHECK(!failing.successful());                   // result.successful() -> False
    try {
        (void)failing.get();                        // result.get() -> raises RuntimeError('bad input')
        std::fprintf(stderr, "get() should re-throw the task's std::runtime_error\n");
        return 1;
    } catch (const std::runtime_error& e) {
        std::printf("get(): std::runtime_error: %s\n", e.what());
        CHECK(typeid(e) == typeid(std::runtime_error));   // the same type, not a wrapper
        CHECK(std::strcmp(e.what(), "bad input") == 0);
    }

    pool.close();
    pool.join();
    return 0;
}
