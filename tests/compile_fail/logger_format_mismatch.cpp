// A log message whose {fmt} format string does not fit its arguments must not compile.
// expect: argument not found
#include <multiprocessing.hpp>
namespace mp = multiprocessing;

void use() { mp::get_logger().info("worker exiting after {} tasks, {}", 3); }
