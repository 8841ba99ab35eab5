// queues.hpp alone and one put/get.
#include <multiprocessing/queues.hpp>
namespace mp = multiprocessing;

int main() {
    mp::Queue<int> q;
    q.put(42);
    return q.get() == 42 ? 0 : 1;
}
