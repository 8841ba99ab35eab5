// Twin of seed 004_be4ba7f392b3e3d1.txt, lines 7-12 ("进程池"):
//     import multiprocessing as mul
//     def f(x):
//         return x**2
//     pool = mul.Pool(5)
//     rel = pool.map(f,[1,2,3,4,5,6,7,8,9,10])
//     print(rel)
#include <multiprocessing.hpp>

#include <cstdio>
#include <vector>

namespace mp = multiprocessing;

int f(int x) {                                      // def f(x):
    return x * x;                                   //     return x**2
}

int main() {
    mp::freeze_support();
    mp::Pool pool(5);                               // pool = mul.Pool(5)
    std::vector<int> rel = pool.map(f, std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
                                                    // rel = pool.map(f,[1,2,3,4,5,6,7,8,9,10])
    std::printf("[");                               // print(rel)
    for (std::size_t i = 0; i < rel.size(); ++i)
        std::printf("%s%d", i ? ", " : "", rel[i]);
    std::printf("]\n");

    if (rel != std::vector<int>{1, 4, 9, 16, 25, 36, 49, 64, 81, 100}) {
        std::fprintf(stderr, "pool.map(f, [1..10]) gave the wrong list\n");
        return 1;
    }
    return 0;
}
