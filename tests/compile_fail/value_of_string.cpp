// A shared Value of a type that owns heap memory must be rejected at compile time.
// expect: must be trivially copyable and hold no pointers
#include <string>
#include <multiprocessing.hpp>
namespace mp = multiprocessing;

void use() {
    mp::Value<std::string> v(std::string("hello"));
}
