// pool.hpp alone and one pool.map.
#include <multiprocessing/pool.hpp>
namespace mp = multiprocessing;

int square(int x) { return x * x; }

int main() {
    mp::freeze_support();
    mp::Pool pool(2);
    auto squares = pool.map(square, std::vector<int>{1, 2, 3, 4, 5});
    return squares[4] == 25 ? 0 : 1;
}
