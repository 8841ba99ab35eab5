// A lambda capturing a std::string given to a Pool must be rejected at compile time.
// expect: captures must all be trivially copyable
#include <string>
#include <multiprocessing.hpp>
namespace mp = multiprocessing;

void use(mp::Pool& pool) {
    std::string greeting = "hello";
    pool.apply([greeting](int x) { return greeting.size() + x; }, 1);
}
