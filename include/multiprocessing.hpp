// Everything: Python's `import multiprocessing`.
#pragma once

#include "multiprocessing/context.hpp"
#include "multiprocessing/errors.hpp"
#include "multiprocessing/pool.hpp"
#include "multiprocessing/process.hpp"
