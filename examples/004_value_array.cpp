// Twin of seed 004_be4ba7f392b3e3d1.txt, lines 33-44 ("共享内存", modified from the official
// documentation):
//     import multiprocessing
//     def f(n, a):
//         n.value = 3.14
//         a[0] = 5
//     num = multiprocessing.Value('d', 0.0)
//     arr = multiprocessing.Array('i', range(10))
//     p = multiprocessing.Process(target=f, args=(num, arr))
//     p.start()
//     p.join()
//     print num.value
//     print arr[:]
// The documentation's original (num.value = 3.1415927; arr[i] = -arr[i] for every i)
// runs afterwards, on the same two objects.
#include <multiprocessing.hpp>

#include <cstdio>
#include <ranges>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;

void f(mp::Value<double> n, mp::Array<int> a) {     // def f(n, a):
    n.value() = 3.14;                                //     n.value = 3.14
    a[0] = 5;                                        //     a[0] = 5
}

void f_docs(mp::Value<double> n, mp::Array<int> a) {  // the documentation's f
    n.value() = 3.1415927;                           //     n.value = 3.1415927
    for (std::size_t i = 0; i < a.size(); ++i)       //     for i in range(len(a)):
        a[i] = -a[i];                                //         a[i] = -a[i]
}

void print_list(const mp::Array<int>& arr) {         // print arr[:]
    std::printf("[");
    for (std::size_t i = 0; i < arr.size(); ++i) std::printf("%s%d", i ? ", " : "", arr[i]);
    std::printf("]\n");
    std::fflush(stdout);
}

int main() {
    mp::freeze_support();
    mp::Value<double> num(0.0);                      // num = multiprocessing.Value('d', 0.0)
    mp::Array<int> arr(std::views::iota(0, 10));     // arr = multiprocessing.Array('i', range(10))
    mp::Process p(f, num, arr);                      // p = multiprocessing.Process(target=f, args=(num, arr))
    p.start();                                       // p.start()
    p.join();                                        // p.join()
    std::printf("%g\n", num.value());                // print num.value
    print_list(arr);                                 // print arr[:]

    // the child's writes are the parent's reads: 3.14 and [5, 1, 2, ..., 9]
    CHECK(p.exitcode() == 0);
    CHECK(num.value() == 3.14);
    CHECK((std::vector<int>(arr.begin(), arr.end()) == std::vector<int>{5, 1, 2, 3, 4, 5, 6, 7, 8, 9}));

    mp::Process q(f_docs, num, arr);
    q.start();
    q.join();
    std::printf("%.7f\n", num.value());
    print_list(arr);

    // 3.1415927 and [-5, -1, -2, ..., -9]
    CHECK(q.exitcode() == 0);
    CHECK(num.value() == 3.1415927);
    CHECK((std::vector<int>(arr.begin(), arr.end()) == std::vector<int>{-5, -1, -2, -3, -4, -5, -6, -7, -8, -9}));
    return 0;
}
