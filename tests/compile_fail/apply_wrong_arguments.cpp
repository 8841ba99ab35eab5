// A function given arguments it cannot take: the library's one message, and no page of
// errors from the templates behind it.
// expect: Pool.apply: the function cannot be called with these arguments
#include <multiprocessing.hpp>
namespace mp = multiprocessing;

int add(int a, int b) { return a + b; }

void use(mp::Pool& pool) {
    auto sum = pool.apply(add, 1);  // one argument short
    (void)sum;
}
