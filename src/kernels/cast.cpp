// Casts between fp32, bf16 and fp16 (cast.h): per-target loops, their dispatch, and the
// public entry points.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cast.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include "kernels/internal.h"
#include "kernels/simd_convert-inl.h"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class Src, class Dst>
HWY_NOINLINE void CastRange(const void* src, void* dst, std::size_t begin, std::size_t end) {
  using ST = typename Src::T;
  using DT = typename Dst::T;
  const ST* s = static_cast<const ST*>(src);
  DT* t = static_cast<DT*>(dst);
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  std::size_t i = begin;
  for (; i + lanes <= end; i += lanes) StoreFromF32(d, Dst(), LoadAsF32(d, Src(), s + i), t + i);
  if (i == end) return;
  HWY_ALIGN ST ss[HWY_LANES(float)];
  HWY_ALIGN DT st[HWY_LANES(float)];
  CopyIn(ss, s + i, end - i, lanes);
  StoreFromF32(d, Dst(), LoadAsF32(d, Src(), ss), st);
  CopyOut(t + i, st, end - i);
}

const detail::CastTable* GetCastTable() {
  static const detail::CastTable table = {hwy::TargetName(HWY_TARGET),
                                          {{nullptr, &CastRange<F32, BF16>, &CastRange<F32, F16>},
                                           {&CastRange<BF16, F32>, nullptr, &CastRange<BF16, F16>},
                                           {&CastRange<F16, F32>, &CastRange<F16, BF16>, nullptr}}};
  return &table;
}

}  // namespace strata::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "strata/kernels/cast.h"

namespace strata::kernels {

HWY_EXPORT(GetCastTable);

namespace detail {
const CastTable& cast_table() { return *HWY_DYNAMIC_DISPATCH(GetCastTable)(); }
}  // namespace detail

Status cast(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t n, ThreadPool* pool) {
  if (!detail::valid_dtype(src_dtype) || !detail::valid_dtype(dst_dtype)) {
    return make_error(ErrorCode::kInvalidArgument, "cast: unknown dtype ({} -> {})", static_cast<int>(src_dtype),
                      static_cast<int>(dst_dtype));
  }
  if (n > 0 && (src == nullptr || dst == nullptr)) {
    return make_error(ErrorCode::kInvalidArgument, "cast {} -> {}: null {} (n={})", dtype_name(src_dtype),
                      dtype_name(dst_dtype), src == nullptr ? "src" : "dst", n);
  }
  if (src_dtype == dst_dtype) {
    const std::size_t elem = dtype_size(src_dtype);
    detail::run_blocks(pool, n, [&](std::size_t b, std::size_t e) {
      std::memcpy(static_cast<std::byte*>(dst) + b * elem, static_cast<const std::byte*>(src) + b * elem,
                  (e - b) * elem);
    });
    return ok();
  }
  const detail::CastFn fn = detail::cast_table().fn[detail::dtype_index(src_dtype)][detail::dtype_index(dst_dtype)];
  detail::run_blocks(pool, n, [&](std::size_t b, std::size_t e) { fn(src, dst, b, e); });
  return ok();
}

Status fill(void* dst, DType dtype, std::size_t n, float value, ThreadPool* pool) {
  if (!detail::valid_dtype(dtype)) {
    return make_error(ErrorCode::kInvalidArgument, "fill: unknown dtype {}", static_cast<int>(dtype));
  }
  if (n > 0 && dst == nullptr) return make_error(ErrorCode::kInvalidArgument, "fill {}: null dst (n={})", dtype_name(dtype), n);
  // std::fill over a constant compiles to vector stores on its own; no dispatch needed.
  if (dtype == DType::kF32) {
    float* p = static_cast<float*>(dst);
    detail::run_blocks(pool, n, [&](std::size_t b, std::size_t e) { std::fill(p + b, p + e, value); });
  } else {
    const std::uint16_t bits = dtype == DType::kBF16 ? bf16_from_f32(value) : f16_from_f32(value);
    auto* p = static_cast<std::uint16_t*>(dst);
    detail::run_blocks(pool, n, [&](std::size_t b, std::size_t e) { std::fill(p + b, p + e, bits); });
  }
  return ok();
}

}  // namespace strata::kernels
#endif  // HWY_ONCE
