// DType: the element types the CPU kernels read and write, and their scalar conversions.
//
//   using strata::kernels::DType;
//   std::uint16_t h = strata::kernels::bf16_from_f32(1.0f / 3);    // 0x3EAB (RNE)
//   float back = strata::kernels::f32_from_bf16(h);                // 0.333984375f
//   STRATA_ASSIGN_OR_RETURN(DType t, strata::kernels::parse_dtype("fp16"));
//
// bf16 and fp16 values travel as their raw 16-bit patterns (std::uint16_t): the kernels
// layer is torch-free and GCC 12 has no std::bfloat16_t. The scalar conversions here are
// the reference the vector kernels are tested against, written for clarity, not speed;
// the vector versions live in cast.h.
//
// Rounding (fp32 -> 16 bit) is round-to-nearest-even, as torch's c10::BFloat16 and
// c10::Half do. Subnormals are kept (not flushed). Overflow goes to inf. NaN stays NaN:
// the result is a quiet NaN with the input's sign and top payload bits, which is what
// x86's F16C and AVX-512-BF16 instructions produce. Widening is exact; an fp16
// signalling NaN widens to a quiet one (as F16C's vcvtph2ps does), a bf16 one keeps its
// bits (widening bf16 is a shift).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "strata/base/status.h"

namespace strata::kernels {

enum class DType : std::uint8_t { kF32, kBF16, kF16 };

constexpr std::size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }
// "fp32", "bf16", "fp16".
std::string_view dtype_name(DType t);
// Accepts fp32/float32/f32/float, bf16/bfloat16, fp16/float16/f16/half (any case).
Result<DType> parse_dtype(std::string_view name);

std::uint16_t bf16_from_f32(float f);
float f32_from_bf16(std::uint16_t bits);
std::uint16_t f16_from_f32(float f);
float f32_from_f16(std::uint16_t bits);

}  // namespace strata::kernels
