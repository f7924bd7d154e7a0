// Internal, per SIMD target: loading fp32/bf16/fp16 arrays as fp32 vectors and storing
// fp32 vectors back with round-to-nearest-even. Included by every *_simd.cpp after
// <hwy/highway.h>, once per target (foreach_target.h re-includes those files).
//
// Note [16-bit conversions]: Highway 1.0.3 is not enough here. Its bf16 DemoteTo
// truncates, and on targets without F16C (SSSE3, SSE4, EMU128) its fp16 DemoteTo
// truncates and turns inf/NaN into 65504, and fp16 PromoteTo turns inf/NaN into 65536.
// It has no AVX-512-BF16 target, and that extension's vcvtneps2bf16 flushes subnormals
// anyway, which torch's c10::BFloat16 does not. So bf16 rounding is done with integer
// ops on every target (about six per vector, well inside the memory-bound slack), and
// fp16 uses the hardware F16C instructions on x86 AVX2 and up (RNE, keeps NaN) and the
// integer versions below elsewhere. Tests check every target bit for bit against the
// scalar conversions in dtype.cpp.

#if defined(STRATA_KERNELS_SIMD_CONVERT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_SIMD_CONVERT_INL_H_
#undef STRATA_KERNELS_SIMD_CONVERT_INL_H_
#else
#define STRATA_KERNELS_SIMD_CONVERT_INL_H_
#endif

#include <cstdint>
#include <type_traits>

#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#undef STRATA_HW_F16
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
#define STRATA_HW_F16 1
#else
#define STRATA_HW_F16 0
#endif

// Element tags: how an array is stored. T is the storage type.
struct F32 { using T = float; };
struct BF16 { using T = std::uint16_t; };
struct F16 { using T = std::uint16_t; };
struct NoParam { using T = std::uint16_t; };  // no compute copy to write

// fp32 -> bf16 bits (in the low half of each i32 lane, sign-extended), RNE, NaN quieted.
template <class D>
HWY_INLINE hn::Vec<hn::RebindToSigned<D>> Bf16BitsRne(D /*d*/, hn::Vec<D> v) {
  const hn::RebindToSigned<D> di;
  const auto bits = hn::BitCast(di, v);
  // Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even; the carry
  // can run into the exponent, which is how rounding up to the next binade (or to inf)
  // happens. Arithmetic shift keeps the result a valid int16 for DemoteTo.
  const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(di, 1));
  const auto rounded = hn::ShiftRight<16>(hn::Add(bits, hn::Add(lsb, hn::Set(di, 0x7FFF))));
  const auto quiet_nan = hn::Or(hn::ShiftRight<16>(bits), hn::Set(di, 0x40));
  return hn::IfThenElse(hn::RebindMask(di, hn::IsNaN(v)), quiet_nan, rounded);
}

#if !STRATA_HW_F16
// fp32 -> fp16 bits (low half of each lane), RNE, subnormals kept, overflow to inf.
template <class D>
HWY_INLINE hn::Vec<hn::RebindToSigned<D>> F16BitsRne(D d, hn::Vec<D> v) {
  const hn::RebindToSigned<D> di;
  const auto bits = hn::BitCast(di, v);
  const auto sign = hn::And(hn::ShiftRight<16>(bits), hn::Set(di, 0x8000));
  const auto a = hn::And(bits, hn::Set(di, 0x7FFFFFFF));  // |v|, as bits
  // Normal results: rebias the exponent (127 -> 15) and round off 13 mantissa bits.
  const auto lsb = hn::And(hn::ShiftRight<13>(a), hn::Set(di, 1));
  const auto normal = hn::ShiftRight<13>(
      hn::Add(hn::Sub(a, hn::Set(di, 112 << 23)), hn::Add(lsb, hn::Set(di, 0xFFF))));
  // Subnormal results (|v| < 2^-14): adding 0.5 puts the fp16 subnormal step (2^-24) at
  // the last mantissa bit of the sum, so the fp32 add itself rounds to nearest even.
  const auto half = hn::Set(d, 0.5f);
  const auto sub = hn::Sub(hn::BitCast(di, hn::Add(hn::BitCast(d, a), half)), hn::BitCast(di, half));
  const auto nan = hn::Or(hn::Set(di, 0x7E00), hn::And(hn::ShiftRight<13>(a), hn::Set(di, 0x3FF)));
  auto r = hn::IfThenElse(hn::Lt(a, hn::Set(di, 0x38800000)), sub, normal);
  r = hn::IfThenElse(hn::Gt(a, hn::Set(di, 0x477FEFFF)), hn::Set(di, 0x7C00), r);  // >= 65520: inf
  r = hn::IfThenElse(hn::Gt(a, hn::Set(di, 0x7F800000)), nan, r);
  return hn::Or(r, sign);
}

// fp16 bits (zero-extended in i32 lanes) -> fp32, exact.
template <class D>
HWY_INLINE hn::Vec<D> F32FromF16Bits(D d, hn::Vec<hn::RebindToSigned<D>> h) {
  const hn::RebindToSigned<D> di;
  const auto sign = hn::ShiftLeft<16>(hn::And(h, hn::Set(di, 0x8000)));
  const auto exp = hn::And(h, hn::Set(di, 0x7C00));
  const auto mag = hn::ShiftLeft<13>(hn::And(h, hn::Set(di, 0x7FFF)));
  const auto normal = hn::Add(mag, hn::Set(di, 112 << 23));
  const auto nan_quiet = hn::IfThenElseZero(hn::Ne(hn::And(h, hn::Set(di, 0x3FF)), hn::Zero(di)), hn::Set(di, 0x00400000));
  const auto special = hn::Or(hn::Or(mag, hn::Set(di, 0x7F800000)), nan_quiet);  // inf; NaN made quiet
  const auto sub = hn::BitCast(di, hn::Mul(hn::ConvertTo(d, hn::And(h, hn::Set(di, 0x3FF))),
                                           hn::Set(d, 1.0f / 16777216.0f)));  // m * 2^-24
  auto r = hn::IfThenElse(hn::Eq(exp, hn::Zero(di)), sub, normal);
  r = hn::IfThenElse(hn::Eq(exp, hn::Set(di, 0x7C00)), special, r);
  return hn::BitCast(d, hn::Or(r, sign));
}
#endif

// Loads Lanes(d) elements at p as fp32.
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, F32, const float* p) {
  return hn::LoadU(d, p);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, BF16, const std::uint16_t* p) {
  const hn::Rebind<std::uint16_t, D> du16;
  const hn::RebindToUnsigned<D> du32;
  return hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(du32, hn::LoadU(du16, p))));
}
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, F16, const std::uint16_t* p) {
  const hn::Rebind<std::uint16_t, D> du16;
#if STRATA_HW_F16
  const hn::Rebind<hwy::float16_t, D> df16;
  return hn::PromoteTo(d, hn::BitCast(df16, hn::LoadU(du16, p)));
#else
  const hn::RebindToSigned<D> di;
  return F32FromF16Bits(d, hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<D>(), hn::LoadU(du16, p))));
#endif
}

// Stores the fp32 vector v as Lanes(d) elements at p.
template <class D>
HWY_INLINE void StoreFromF32(D d, F32, hn::Vec<D> v, float* p) {
  hn::StoreU(v, d, p);
}
template <class D>
HWY_INLINE void StoreFromF32(D d, BF16, hn::Vec<D> v, std::uint16_t* p) {
  const hn::Rebind<std::int16_t, D> di16;
  const hn::Rebind<std::uint16_t, D> du16;
  hn::StoreU(hn::BitCast(du16, hn::DemoteTo(di16, Bf16BitsRne(d, v))), du16, p);
}
template <class D>
HWY_INLINE void StoreFromF32(D d, F16, hn::Vec<D> v, std::uint16_t* p) {
  const hn::Rebind<std::uint16_t, D> du16;
#if STRATA_HW_F16
  const hn::Rebind<hwy::float16_t, D> df16;
  hn::StoreU(hn::BitCast(du16, hn::DemoteTo(df16, v)), du16, p);
#else
  // Values are in [0, 0xFFFF]; sign-extend so the saturating i32 -> i16 demotion is exact.
  const hn::Rebind<std::int16_t, D> di16;
  const auto bits = hn::ShiftRight<16>(hn::ShiftLeft<16>(F16BitsRne(d, v)));
  hn::StoreU(hn::BitCast(du16, hn::DemoteTo(di16, bits)), du16, p);
#endif
}
template <class D>
HWY_INLINE void StoreFromF32(D, NoParam, hn::Vec<D>, std::uint16_t*) {}

// Tails: a loop runs whole vectors over its range, then runs the same vector code once
// more on zero-padded copies of the last few elements and copies the results back.
// Masked or blended stores would be shorter, but Highway emulates 16-bit blended
// stores on AVX2 with a full-vector read-modify-write, which would race with the thread
// that owns the next block.
template <class T>
HWY_INLINE void CopyIn(T* HWY_RESTRICT scratch, const T* src, std::size_t rem, std::size_t lanes) {
  for (std::size_t j = 0; j < lanes; ++j) scratch[j] = j < rem ? src[j] : T{};
}
// The compute copy's pointer at element i. Dispatch picks NoParam exactly when there is
// no copy, so this needs no null check (and never offsets a null pointer).
template <class P, class T>
HWY_INLINE T* CopyAt(T* base, std::size_t i) {
  if constexpr (std::is_same_v<P, NoParam>) {
    return nullptr;
  } else {
    return base + i;
  }
}
template <class T>
HWY_INLINE void CopyOut(T* dst, const T* HWY_RESTRICT scratch, std::size_t rem) {
  for (std::size_t j = 0; j < rem; ++j) dst[j] = scratch[j];
}

}  // namespace strata::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard toggle
