// The examples' one assertion: on a mismatch, say where and what on stderr and make
// main() return 1, so ctest (and a reader running the example) sees the failure.
#pragma once

#include <cstdio>

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);        \
            return 1;                                                                             \
        }                                                                                         \
    } while (0)
