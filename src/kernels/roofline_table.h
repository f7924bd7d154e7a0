// Internal: the per-target table of the roofline loops (roofline_simd.cpp).
#pragma once

#include <cstddef>

#include "kernels/internal.h"

namespace strata::kernels::detail {

struct RoofArgs {
  float* master;
  const void* grad;
  void* s0;     // m, or the single state
  void* s1;     // v; null for one-state patterns
  void* param;  // may be null
  float zero;   // 0, but only known at run time, so the adds are not folded away
};
using RoofFn = void (*)(const RoofArgs&, std::size_t begin, std::size_t end);
using ReadRoofFn = double (*)(const void* grad, std::size_t begin, std::size_t end);

// Index 0: 32-bit words, 1: 16-bit words; param: 0 none, 1 32-bit, 2 16-bit.
struct RoofTable {
  const char* target;
  RoofFn adam[2][2][3];       // [grad][state][param]
  RoofFn one_state[2][2][3];  // [grad][state][param]
  ReadRoofFn read[2];
  CastFn cast[2][2];
};
const RoofTable& roof_table();

}  // namespace strata::kernels::detail
