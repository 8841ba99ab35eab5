// An argument type that is neither trivially copyable nor serializable is rejected,
// with the type named in the instantiation trace and the fix in the message.
// expect: cannot_cross_process_boundary<NoSerialize>
#include <string>
#include <multiprocessing.hpp>
namespace mp = multiprocessing;

struct NoSerialize {
    std::string name;
};
int size_of(NoSerialize n) { return static_cast<int>(n.name.size()); }

void use(mp::Pool& pool) { pool.apply(size_of, NoSerialize{"x"}); }
