// Twin of seed 002_8c71d8103970d9b2.txt, lines 133-207 ("Shared memory"), both examples:
//     from multiprocessing import sharedctypes, Process, Lock
//     from ctypes import Structure, c_bool, c_double
//     pprint(sharedctypes.typecode_to_type)
//     lock = Lock()
//     class Point(Structure):
//         _fields_ = [('x', c_double), ('y', c_double)]
//     def modify(n, b, s, arr, A):
//         n.value **= 2
//         b.value = True
//         s.value = s.value.upper()
//         arr[0] = 10
//         for a in A:
//             a.x **= 2
//             a.y **= 2
//     if __name__ == '__main__':
//         n = sharedctypes.Value('i', 7)
//         b = sharedctypes.Value(c_bool, False, lock=False)
//         s = sharedctypes.Array('c', b'hello world', lock=lock)
//         arr = sharedctypes.Array('i', range(5), lock=True)
//         A = sharedctypes.Array(Point, [(1.875, -6.25), (-5.75, 2.0)], lock=lock)
//         p = Process(target=modify, args=(n, b, s, arr, A))
//         p.start()
//         p.join()
//         print(n.value)                       # 49
//         print(b.value)                       # True
//         print(s.value)                       # b'HELLO WORLD'
//         print(arr[:])                        # [10, 1, 2, 3, 4]
//         print([(a.x, a.y) for a in A])       # [(3.515625, 39.0625), (33.0625, 4.0)]
//
//     FINISHED = 3; FAILED = 4; INPROCESS = 2; WAITING = 1
//     def execute_method(status, process):
//         time.sleep(1)
//         status.value = INPROCESS # test
//         time.sleep(1)
//         status.value = FINISHED # test
//         time.sleep(0.5)
//     def run(execute_code):
//         status = Value('i', WAITING )
//         process = Value('f', 0.0)
//         p = Process(target=execute_method, args=(status, process))
//         p.start()
//         start_time = datetime.datetime.now()
//         while True:
//             print(status.value)
//             now_time = datetime.datetime.now()
//             if (now_time - start_time).seconds > 30: # Over 30sbreak
//                 print('execute failed')
//                 p.terminate()
//                 break
//             if status.value == 3:
//                 print('end execute')
//                 break
//             else:
//                 print('waiting or executing')
//             time.sleep(0.5)
//         p.join()
// (The memcached lines are comments in the seed. The seed never calls run(); here main
// calls it once. Its sleeps are scaled down: 1 s to 0.2 s, 0.5 s to 0.1 s.)
//
// C++ has no typecodes: the type is the template argument. Value('i', 7) is
// mp::Value<int>, lock=False is mp::RawValue, lock=lock is an mp::Lock given to the
// constructor, and a ctypes Structure is a plain struct.
#include <multiprocessing.hpp>

#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <ranges>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

struct Point {                                       // class Point(Structure):
    double x, y;                                     //     _fields_ = [('x', c_double), ('y', c_double)]
};

void modify(mp::Value<int> n, mp::RawValue<bool> b, mp::Array<char, mp::Lock> s, mp::Array<int> arr,
            mp::Array<Point, mp::Lock> A) {          // def modify(n, b, s, arr, A):
    n.value() *= n.value();                          //     n.value **= 2
    b.value() = true;                                //     b.value = True
    for (char& c : s)                                //     s.value = s.value.upper()
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    arr[0] = 10;                                     //     arr[0] = 10
    for (Point& a : A) {                             //     for a in A:
        a.x *= a.x;                                  //         a.x **= 2
        a.y *= a.y;                                  //         a.y **= 2
    }
}

// A double as Python prints it: the shortest form that reads back the same, with ".0" if whole.
std::string py_float(double v) {
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    std::string s(buf, end);
    if (s.find_first_of(".en") == std::string::npos) s += ".0";
    return s;
}

enum Status { WAITING = 1, INPROCESS = 2, FINISHED = 3, FAILED = 4 };

void execute_method(mp::Value<int> status, mp::Value<float> process) {  // def execute_method(status, process):
    (void)process;
    std::this_thread::sleep_for(200ms);              //     time.sleep(1)
    status.value() = INPROCESS;                      //     status.value = INPROCESS # test
    std::this_thread::sleep_for(200ms);              //     time.sleep(1)
    status.value() = FINISHED;                       //     status.value = FINISHED # test
    std::this_thread::sleep_for(100ms);              //     time.sleep(0.5)
}

// Returns what the parent saw, in order, for the checks in main().
std::vector<int> run(const char* execute_code) {     // def run(execute_code):
    (void)execute_code;
    std::vector<int> seen;
    mp::Value<int> status(WAITING);                  //     status = Value('i', WAITING )
    mp::Value<float> process(0.0f);                  //     process = Value('f', 0.0)
    mp::Process p(execute_method, status, process);  //     p = Process(target=execute_method, args=(status, process))
    p.start();                                       //     p.start()
    const auto start_time = std::chrono::steady_clock::now();   // start_time = datetime.datetime.now()
    for (;;) {                                       //     while True:
        const int now = status.value();
        seen.push_back(now);
        std::printf("%d\n", now);                    //         print(status.value)
        const auto now_time = std::chrono::steady_clock::now();  // now_time = datetime.datetime.now()
        if (now_time - start_time > 30s) {           //         if (now_time - start_time).seconds > 30:
            std::printf("execute failed\n");         //             print('execute failed')
            p.terminate();                           //             p.terminate()
            seen.push_back(FAILED);
            break;                                   //             break
        }
        if (status.value() == 3) {                   //         if status.value == 3:
            std::printf("end execute\n");            //             print('end execute')
            seen.push_back(status.value());
            break;                                   //             break
        } else {                                     //         else:
            std::printf("waiting or executing\n");   //             print('waiting or executing')
        }
        std::fflush(stdout);
        std::this_thread::sleep_for(100ms);          //         time.sleep(0.5)
    }
    std::fflush(stdout);
    p.join();                                        //     p.join()
    return seen;
}

int main() {
    mp::freeze_support();                            // if __name__ == '__main__':

    // pprint(sharedctypes.typecode_to_type): what each typecode is in C++.
    std::printf("{'b': signed char, 'B': unsigned char, 'c': char, 'd': double, 'f': float,\n"
                " 'h': short, 'H': unsigned short, 'i': int, 'I': unsigned int, 'l': long,\n"
                " 'L': unsigned long, 'q': long long, 'Q': unsigned long long, 'u': wchar_t}\n");
    mp::Lock lock;                                   // lock = Lock()

    mp::Value<int> n(7);                             //     n = sharedctypes.Value('i', 7)
    mp::RawValue<bool> b(false);                     //     b = sharedctypes.Value(c_bool, False, lock=False)
    mp::Array<char, mp::Lock> s(std::string_view("hello world"), lock);   // s = sharedctypes.Array('c', b'hello world', lock=lock)
    mp::Array<int> arr(std::views::iota(0, 5));      //     arr = sharedctypes.Array('i', range(5), lock=True)
    mp::Array<Point, mp::Lock> A({{1.875, -6.25}, {-5.75, 2.0}}, lock);  // A = sharedctypes.Array(Point, [...], lock=lock)
    mp::Process p(modify, n, b, s, arr, A);          //     p = Process(target=modify, args=(n, b, s, arr, A))
    p.start();                                       //     p.start()
    p.join();                                        //     p.join()
    std::printf("%d\n", n.value());                  //     print(n.value)
    std::printf("%s\n", b.value() ? "True" : "False");                  // print(b.value)
    const std::string s_value(s.begin(), s.end());
    std::printf("b'%s'\n", s_value.c_str());         //     print(s.value)
    std::printf("[");                                //     print(arr[:])
    for (std::size_t i = 0; i < arr.size(); ++i) std::printf("%s%d", i ? ", " : "", arr[i]);
    std::printf("]\n[");                             //     print([(a.x, a.y) for a in A])
    for (std::size_t i = 0; i < A.size(); ++i)
        std::printf("%s(%s, %s)", i ? ", " : "", py_float(A[i].x).c_str(), py_float(A[i].y).c_str());
    std::printf("]\n");
    std::fflush(stdout);

    // what the Python prints: 49, True, b'HELLO WORLD', [10, 1, 2, 3, 4],
    // [(3.515625, 39.0625), (33.0625, 4.0)]
    CHECK(p.exitcode() == 0);
    CHECK(n.value() == 49);
    CHECK(b.value() == true);
    CHECK(s_value == "HELLO WORLD");
    CHECK((std::vector<int>(arr.begin(), arr.end()) == std::vector<int>{10, 1, 2, 3, 4}));
    CHECK(A[0].x == 3.515625 && A[0].y == 39.0625);
    CHECK(A[1].x == 33.0625 && A[1].y == 4.0);
    // s and A share the one lock: holding it through s holds it for A
    {
        std::lock_guard g(s.get_lock());
        CHECK(!A.get_lock().acquire(false));
    }

    // The status monitor: the parent saw WAITING, then (maybe) INPROCESS, then FINISHED,
    // never going back, and ended with 'end execute' rather than 'execute failed'.
    const std::vector<int> seen = run("demo");
    CHECK(seen.size() >= 2);
    CHECK(seen.front() == WAITING || seen.front() == INPROCESS);
    for (std::size_t i = 1; i < seen.size(); ++i) CHECK(seen[i] >= seen[i - 1]);
    CHECK(seen.back() == FINISHED);
    return 0;
}
