// Minimal check helpers shared by the plain C++ tests (no test framework dependency):
// EXPECT(cond, printf-args...) records a failure with file/line; report_failures() ends main().
#pragma once

#include <cstdio>

inline int g_failures = 0;

#define EXPECT(cond, ...)                                       \
  do {                                                          \
    if (!(cond)) {                                              \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                        \
      std::fprintf(stderr, "\n");                               \
      ++g_failures;                                             \
    }                                                           \
  } while (0)
