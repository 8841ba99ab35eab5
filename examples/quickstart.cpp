// The README's quickstart: a pool of worker processes squares numbers.
#include <multiprocessing.hpp>

#include <cstdio>
#include <vector>

namespace mp = multiprocessing;

int square(int x) { return x * x; }

int main() {
    mp::freeze_support();
    mp::Pool pool(2);
    std::vector<int> squares = pool.map(square, std::vector<int>{1, 2, 3, 4, 5});
    auto async = pool.apply_async(square, 12);
    std::printf("map: %d %d %d %d %d, apply_async: %d\n", squares[0], squares[1], squares[2], squares[3],
                squares[4], async.get());
    return squares == std::vector<int>{1, 4, 9, 16, 25} && async.get() == 144 ? 0 : 1;
}
