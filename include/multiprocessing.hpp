// Everything: Python's `import multiprocessing`.
#pragma once

#include "multiprocessing/connection.hpp"
#include "multiprocessing/context.hpp"
#include "multiprocessing/dummy.hpp"
#include "multiprocessing/errors.hpp"
#include "multiprocessing/managers.hpp"
#include "multiprocessing/pool.hpp"
#include "multiprocessing/process.hpp"
#include "multiprocessing/queues.hpp"
#include "multiprocessing/shared_memory.hpp"
#include "multiprocessing/sharedctypes.hpp"
#include "multiprocessing/synchronize.hpp"
#include "multiprocessing/util.hpp"
