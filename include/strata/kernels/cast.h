// Vectorized casts between fp32, bf16 and fp16, e.g. to build a compute copy from the
// fp32 master shard.
//
//   // master: n floats; compute: n bf16 values (raw 16-bit patterns)
//   STRATA_RETURN_IF_ERROR(strata::kernels::cast(master, DType::kF32, compute, DType::kBF16, n, &pool));
//   STRATA_RETURN_IF_ERROR(strata::kernels::fill(exp_avg, DType::kBF16, n, 0.0f, &pool));
//
// Rounding and NaN handling are those of dtype.h (RNE, subnormals kept, NaN stays NaN),
// bit for bit on every SIMD target. Casting to the same dtype copies. 16-bit to 16-bit
// goes through fp32 (exact for the widening half), so it rounds once.
//
// src and dst must not overlap. Any alignment works; 64-byte aligned buffers are fastest.
// With a pool, the range is split into one contiguous block per thread; with nullptr it
// runs on the caller.
#pragma once

#include <cstddef>

#include "strata/base/status.h"
#include "strata/kernels/dtype.h"

namespace strata {
class ThreadPool;
}

namespace strata::kernels {

// Errors (kInvalidArgument) when n > 0 and a pointer is null, or on an unknown dtype.
Status cast(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t n,
            ThreadPool* pool = nullptr);

// Sets n elements of dst to `value` rounded to dtype (e.g. zeroing optimizer states, or
// Adagrad's initial_accumulator_value). Same errors as cast.
Status fill(void* dst, DType dtype, std::size_t n, float value, ThreadPool* pool = nullptr);

}  // namespace strata::kernels
