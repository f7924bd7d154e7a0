// Memory-roofline kernels: the loads and stores of a step kernel with next to none of
// its arithmetic, for `strata bench optim` to measure what memory allows on this machine
// in the same run, with the same SIMD target, threads and block split.
//
//   StepShard shard{.n = n, .master = p, .grad = g, .param = p16, .param_dtype = DType::kBF16};
//   double t_roof = time([&] { (void)roofline_adam(shard, m, v, &pool); });
//   double gbps = step_bytes_per_elem(StepPattern::kAdam, shard) * n / t_roof / 1e9;
//
// Each kernel reads and writes exactly the bytes of its step (see StepPattern) and
// leaves the values as they were (it adds a runtime zero), except the compute copy,
// which receives the master's top 16 bits. 16-bit streams are moved as raw 16-bit
// words: the narrowing is a shift, not a rounding, whatever the dtype.
#pragma once

#include <cstddef>

#include "strata/base/status.h"
#include "strata/kernels/dtype.h"
#include "strata/kernels/optimizer.h"

namespace strata {
class ThreadPool;
}

namespace strata::kernels {

enum class StepPattern {
  kAdam,      // read master, grad, m, v; write master, m, v (+ compute copy)
  kOneState,  // read master, grad, s; write master, s (+ compute copy): SGD momentum, Adagrad
  kRead,      // read grad: the gradient prologue
  kCast,      // read src (grad_dtype), write dst (param_dtype): cast
};

// Bytes per element that `pattern` moves for this shard's dtypes (state_dtype for the
// states, param_dtype if param is set; for kCast grad_dtype -> param_dtype).
std::size_t step_bytes_per_elem(StepPattern pattern, const StepShard& shard);

// Reads master, grad, m, v; writes master, m, v and param if set.
Status roofline_adam(const StepShard& shard, void* m, void* v, ThreadPool* pool = nullptr);
// Reads master, grad, s; writes master, s and param if set.
Status roofline_one_state(const StepShard& shard, void* s, ThreadPool* pool = nullptr);
// Reads n gradient elements; returns a sum of them (16-bit words read as bf16), only so
// that the loads cannot be optimized away.
Result<double> roofline_read(const void* grad, DType grad_dtype, std::size_t n, ThreadPool* pool = nullptr);
// Reads n elements of src, writes n of dst.
Status roofline_cast(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t n,
                     ThreadPool* pool = nullptr);

}  // namespace strata::kernels
