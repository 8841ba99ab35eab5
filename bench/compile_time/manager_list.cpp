// managers.hpp alone and one list proxy.
#include <multiprocessing/managers.hpp>
namespace mp = multiprocessing;

int main() {
    mp::freeze_support();
    auto manager = mp::Manager();
    auto l = manager.list<int>();
    l.append(42);
    return l.size() == 1 ? 0 : 1;
}
