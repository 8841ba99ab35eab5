// starmap items whose elements the function cannot take as its arguments.
// expect: Pool.starmap: the function cannot be called with the elements of an item
#include <multiprocessing.hpp>
#include <string>
#include <tuple>
#include <vector>
namespace mp = multiprocessing;

int add(int a, int b) { return a + b; }

void use(mp::Pool& pool) {
    std::vector<std::tuple<int, std::string>> items{{1, "2"}};
    auto sums = pool.starmap(add, items);
    (void)sums;
}
