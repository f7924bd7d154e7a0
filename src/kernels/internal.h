// Internal declarations shared by the kernel files: dtype indices, how ranges are split
// across threads, and the per-target tables of the cast and prologue loops. The step
// kernels' tables are in step_args.h.
#pragma once

#include <cmath>
#include <cstddef>

#include "strata/base/thread_pool.h"
#include "strata/kernels/dtype.h"

namespace strata::kernels::detail {

constexpr bool valid_dtype(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }
constexpr int dtype_index(DType t) { return static_cast<int>(t); }  // 0, 1, 2 for kF32, kBF16, kF16
constexpr int grad_index(DType t) { return dtype_index(t); }
constexpr int kNumDtype = 3;

// Block edges are multiples of 64 elements (256 B of fp32, 128 B of 16-bit), so two
// threads never write the same cache line of a 64-byte aligned array.
constexpr std::size_t kBlockAlign = 64;
// Below this many elements a block is not worth waking another thread for (~30 us of
// work at memory speed, comparable to a condition-variable handoff).
constexpr std::size_t kMinBlock = std::size_t{1} << 15;

// Runs fn(begin, end) over [0, n): on the caller without a pool, else one contiguous
// block per pool thread.
template <class F>
void run_blocks(ThreadPool* pool, std::size_t n, F&& fn) {
  if (n == 0) return;
  if (pool == nullptr) {
    fn(std::size_t{0}, n);
    return;
  }
  pool->parallel_for(n, kBlockAlign, fn, kMinBlock);
}

// ---- casts ----------------------------------------------------------------------
using CastFn = void (*)(const void* src, void* dst, std::size_t begin, std::size_t end);
struct CastTable {
  const char* target;
  CastFn fn[kNumDtype][kNumDtype];  // [src][dst]; the diagonal is null (a copy)
};
const CastTable& cast_table();

// ---- gradient prologue ------------------------------------------------------------
// Unscaled partial sums of one range. Blocks are added with Neumaier's compensated sum.
struct PrologueSums {
  double l1_sum = 0, l1_comp = 0;
  double l2_sum = 0, l2_comp = 0;
  float max_abs = 0;

  static void add(double& sum, double& comp, double x) {
    const double t = sum + x;
    comp += std::abs(sum) >= std::abs(x) ? (sum - t) + x : (x - t) + sum;
    sum = t;
  }
  void add_block(double l1, double l2) {
    add(l1_sum, l1_comp, l1);
    add(l2_sum, l2_comp, l2);
  }
  void merge(const PrologueSums& o) {
    add_block(o.l1(), o.l2());
    max_abs = max_abs > o.max_abs ? max_abs : o.max_abs;
  }
  double l1() const { return l1_sum + l1_comp; }
  double l2() const { return l2_sum + l2_comp; }
};
using PrologueFn = void (*)(const void* grad, std::size_t begin, std::size_t end, PrologueSums* out);
struct PrologueTable {
  const char* target;
  PrologueFn fn[kNumDtype];
};
const PrologueTable& prologue_table();

}  // namespace strata::kernels::detail
