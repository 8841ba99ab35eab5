// A raw pointer argument is rejected: it would mean nothing in the other process.
// expect: a raw pointer cannot cross a process boundary
#include <multiprocessing.hpp>
namespace mp = multiprocessing;

int first(int* p) { return *p; }

void use(mp::Pool& pool) {
    int x = 1;
    pool.apply(first, &x);
}
