// Everything: Python's `import multiprocessing`.
#pragma once

// util.hpp (get_logger, and {fmt}) first: a format string the compiler rejects is then
// reported under a 3-line include chain, not one through the pool's internals.
#include "multiprocessing/util.hpp"
#include "multiprocessing/connection.hpp"
#include "multiprocessing/context.hpp"
#include "multiprocessing/dummy.hpp"
#include "multiprocessing/errors.hpp"
#include "multiprocessing/functools.hpp"
#include "multiprocessing/managers.hpp"
#include "multiprocessing/pool.hpp"
#include "multiprocessing/process.hpp"
#include "multiprocessing/queues.hpp"
#include "multiprocessing/shared_memory.hpp"
#include "multiprocessing/sharedctypes.hpp"
#include "multiprocessing/synchronize.hpp"
