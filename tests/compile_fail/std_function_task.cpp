// A std::function given to a Pool must be rejected at compile time.
// expect: a std::function cannot be sent to another process
#include <functional>
#include <multiprocessing.hpp>
namespace mp = multiprocessing;

void use(mp::Pool& pool) {
    std::function<int(int)> f = [](int x) { return x + 1; };
    pool.apply(f, 1);
}
