// Twin of seed 004_be4ba7f392b3e3d1.txt, lines 49-63 ("Manager": the shared-memory
// example again, with the objects held by a manager's server process):
//     import multiprocessing
//     def f(x, arr, l):
//         x.value = 3.14
//         arr[0] = 5
//         l.append('Hello')
//     server = multiprocessing.Manager()
//     x = server.Value('d', 0.0)
//     arr = server.Array('i', range(10))
//     l = server.list()
//     proc = multiprocessing.Process(target=f, args=(x, arr, l))
//     proc.start()
//     proc.join()
//     print(x.value)
//     print(arr)
//     print(l)
// C++ differences: the typecodes are template arguments (Value<double>, Array<int>,
// list<std::string>); a proxy's attribute writes are calls (x.set, arr.set).
#include <multiprocessing.hpp>

#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;

void f(mp::managers::ValueProxy<double> x, mp::managers::ArrayProxy<int> arr,
       mp::managers::ListProxy<std::string> l) {   // def f(x, arr, l):
    x.set(3.14);                                    //     x.value = 3.14
    arr.set(0, 5);                                  //     arr[0] = 5
    l.append("Hello");                              //     l.append('Hello')
}

int main() {
    mp::freeze_support();
    auto server = mp::Manager();                    // server = multiprocessing.Manager()
    auto x = server.Value<double>(0.0);             // x = server.Value('d', 0.0)
    std::vector<int> range10(10);
    std::iota(range10.begin(), range10.end(), 0);
    auto arr = server.Array<int>(range10);          // arr = server.Array('i', range(10))
    auto l = server.list<std::string>();            // l = server.list()
    mp::Process proc(f, x, arr, l);                 // proc = multiprocessing.Process(target=f, args=(x, arr, l))
    proc.start();                                   // proc.start()
    proc.join();                                    // proc.join()

    const double value = x.value();
    const std::vector<int> items = arr.get();
    const std::vector<std::string> strings = l.get();
    std::printf("%g\n", value);                     // print(x.value)
    std::printf("array('i', [");                    // print(arr)
    for (std::size_t i = 0; i < items.size(); ++i) std::printf("%s%d", i ? ", " : "", items[i]);
    std::printf("])\n[");                           // print(l)
    for (std::size_t i = 0; i < strings.size(); ++i) std::printf("%s'%s'", i ? ", " : "", strings[i].c_str());
    std::printf("]\n");
    std::fflush(stdout);

    // The child changed the server's objects; the parent reads the changes back.
    CHECK(proc.exitcode() == 0);
    CHECK(value == 3.14);
    CHECK((items == std::vector<int>{5, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
    CHECK(arr.size() == 10);                        // a manager's Array keeps its size
    CHECK(arr[-1] == 9);
    CHECK((strings == std::vector<std::string>{"Hello"}));

    server.shutdown();
    return 0;
}
