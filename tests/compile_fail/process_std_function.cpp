// A std::function given to a Process must be rejected at compile time.
// expect: a std::function cannot be sent to another process
#include <functional>
#include <multiprocessing.hpp>
namespace mp = multiprocessing;

void use() {
    std::function<void()> f = [] {};
    mp::Process p(f);
}
