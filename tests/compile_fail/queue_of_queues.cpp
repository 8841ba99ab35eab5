// A shared handle (here a Queue) put inside a message must be rejected at compile time:
// it reaches a child by inheritance or as a Process argument, as in Python.
// expect: cannot be sent inside a message
#include <multiprocessing.hpp>
namespace mp = multiprocessing;

void use() {
    mp::Queue<mp::Queue<int>> outer;
    outer.put(mp::Queue<int>());
}
