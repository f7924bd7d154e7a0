// Memory-roofline kernels (roofline.h): per-target loops, dispatch, public entry points.
// Streams are moved as 32-bit or 16-bit words; 16-bit words load by a shift (as bf16
// does) and store by keeping the top half, the cheapest narrowing there is.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/roofline_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <bit>

#include <hwy/highway.h>

#include "kernels/internal.h"
#include "kernels/roofline_table.h"
#include "kernels/simd_convert-inl.h"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class D>
HWY_INLINE void StoreTop(D d, F32, hn::Vec<D> v, float* p) {
  hn::StoreU(v, d, p);
}
template <class D>
HWY_INLINE void StoreTop(D /*d*/, BF16, hn::Vec<D> v, std::uint16_t* p) {
  const hn::RebindToSigned<D> di;
  const hn::Rebind<std::int16_t, D> di16;
  hn::StoreU(hn::BitCast(hn::Rebind<std::uint16_t, D>(), hn::DemoteTo(di16, hn::ShiftRight<16>(hn::BitCast(di, v)))),
             hn::Rebind<std::uint16_t, D>(), p);
}
template <class D>
HWY_INLINE void StoreTop(D, NoParam, hn::Vec<D>, std::uint16_t*) {}

// kStates = 2 (Adam) or 1 (SGD momentum, Adagrad). `zero` is 0 at run time.
template <int kStates, class G, class S, class P>
HWY_NOINLINE void StepRoofRange(const detail::RoofArgs& a, std::size_t begin, std::size_t end) {
  using GT = typename G::T;
  using ST = typename S::T;
  using PT = typename P::T;
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  const auto zero = hn::Set(d, a.zero);
  auto body = [&](float* w_p, const GT* g_p, ST* s0_p, ST* s1_p, PT* out_p) HWY_ATTR {
    const auto w = hn::Add(hn::LoadU(d, w_p), hn::Mul(LoadAsF32(d, G(), g_p), zero));
    StoreTop(d, S(), hn::Add(LoadAsF32(d, S(), s0_p), zero), s0_p);
    if constexpr (kStates == 2) StoreTop(d, S(), hn::Add(LoadAsF32(d, S(), s1_p), zero), s1_p);
    hn::StoreU(w, d, w_p);
    StoreTop(d, P(), w, out_p);
  };
  float* w = a.master;
  const GT* g = static_cast<const GT*>(a.grad);
  ST* s0 = static_cast<ST*>(a.s0);
  ST* s1 = static_cast<ST*>(a.s1);
  PT* out = static_cast<PT*>(a.param);
  ST* s1_or_s0 = s1 ? s1 : s0;  // a never-touched stand-in for the one-state pattern
  std::size_t i = begin;
  for (; i + lanes <= end; i += lanes) body(w + i, g + i, s0 + i, s1_or_s0 + i, CopyAt<P>(out, i));
  if (i == end) return;
  const std::size_t rem = end - i;
  HWY_ALIGN float sw[HWY_LANES(float)];
  HWY_ALIGN GT sg[HWY_LANES(float)];
  HWY_ALIGN ST ss0[HWY_LANES(float)], ss1[HWY_LANES(float)] = {};
  HWY_ALIGN PT sp[HWY_LANES(float)];
  CopyIn(sw, w + i, rem, lanes);
  CopyIn(sg, g + i, rem, lanes);
  CopyIn(ss0, s0 + i, rem, lanes);
  if (s1) CopyIn(ss1, s1 + i, rem, lanes);
  body(sw, sg, ss0, ss1, out ? sp : nullptr);
  CopyOut(w + i, sw, rem);
  CopyOut(s0 + i, ss0, rem);
  if (s1) CopyOut(s1 + i, ss1, rem);
  if (out) CopyOut(out + i, sp, rem);
}

template <class G>
HWY_NOINLINE double ReadRoofRange(const void* grad, std::size_t begin, std::size_t end) {
  using GT = typename G::T;
  const GT* g = static_cast<const GT*>(grad);
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  auto acc0 = hn::Zero(d), acc1 = hn::Zero(d);  // two chains, so the adds do not serialize
  std::size_t i = begin;
  for (; i + 2 * lanes <= end; i += 2 * lanes) {
    acc0 = hn::Add(acc0, LoadAsF32(d, G(), g + i));
    acc1 = hn::Add(acc1, LoadAsF32(d, G(), g + i + lanes));
  }
  double tail = 0;
  for (; i < end; ++i) tail += static_cast<double>(g[i]);
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(acc0, acc1))) + tail;
}

template <class Src, class Dst>
HWY_NOINLINE void CastRoofRange(const void* src, void* dst, std::size_t begin, std::size_t end) {
  using ST = typename Src::T;
  using DT = typename Dst::T;
  const ST* s = static_cast<const ST*>(src);
  DT* t = static_cast<DT*>(dst);
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  std::size_t i = begin;
  for (; i + lanes <= end; i += lanes) StoreTop(d, Dst(), LoadAsF32(d, Src(), s + i), t + i);
  for (; i < end; ++i) {
    if constexpr (sizeof(ST) == sizeof(DT)) {
      t[i] = static_cast<DT>(s[i]);
    } else if constexpr (sizeof(ST) == 4) {
      t[i] = static_cast<DT>(std::bit_cast<std::uint32_t>(s[i]) >> 16);
    } else {
      t[i] = std::bit_cast<float>(static_cast<std::uint32_t>(s[i]) << 16);
    }
  }
}

template <int kStates, class G, class S>
void FillRoofRow(detail::RoofFn (&row)[3]) {
  row[0] = &StepRoofRange<kStates, G, S, NoParam>;
  row[1] = &StepRoofRange<kStates, G, S, F32>;
  row[2] = &StepRoofRange<kStates, G, S, BF16>;
}

template <int kStates>
void FillRoof(detail::RoofFn (&t)[2][2][3]) {
  FillRoofRow<kStates, F32, F32>(t[0][0]);
  FillRoofRow<kStates, F32, BF16>(t[0][1]);
  FillRoofRow<kStates, BF16, F32>(t[1][0]);
  FillRoofRow<kStates, BF16, BF16>(t[1][1]);
}

const detail::RoofTable* GetRoofTable() {
  static const detail::RoofTable table = [] {
    detail::RoofTable t{};
    t.target = hwy::TargetName(HWY_TARGET);
    FillRoof<2>(t.adam);
    FillRoof<1>(t.one_state);
    t.read[0] = &ReadRoofRange<F32>;
    t.read[1] = &ReadRoofRange<BF16>;
    t.cast[0][0] = &CastRoofRange<F32, F32>;
    t.cast[0][1] = &CastRoofRange<F32, BF16>;
    t.cast[1][0] = &CastRoofRange<BF16, F32>;
    t.cast[1][1] = &CastRoofRange<BF16, BF16>;
    return t;
  }();
  return &table;
}

}  // namespace strata::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <mutex>

#include "strata/kernels/roofline.h"

namespace strata::kernels {

HWY_EXPORT(GetRoofTable);

namespace detail {
const RoofTable& roof_table() { return *HWY_DYNAMIC_DISPATCH(GetRoofTable)(); }
}  // namespace detail

namespace {

int width(DType t) { return t == DType::kF32 ? 0 : 1; }  // 32-bit or 16-bit words

Status check(const char* op, const StepShard& s, const void* s0) {
  if (!detail::valid_dtype(s.grad_dtype) || !detail::valid_dtype(s.param_dtype) || !detail::valid_dtype(s.state_dtype)) {
    return make_error(ErrorCode::kInvalidArgument, "{}: unknown dtype", op);
  }
  if (s.n > 0 && (s.master == nullptr || s.grad == nullptr || s0 == nullptr)) {
    return make_error(ErrorCode::kInvalidArgument, "{}: null array (n={})", op, s.n);
  }
  return ok();
}

Status run_step_roof(const char* op, int states, const StepShard& s, void* s0, void* s1, ThreadPool* pool) {
  STRATA_RETURN_IF_ERROR(check(op, s, s0));
  if (states == 2 && s.n > 0 && s1 == nullptr) return make_error(ErrorCode::kInvalidArgument, "{}: null v", op);
  const detail::RoofArgs args{s.master, s.grad, s0, states == 2 ? s1 : nullptr, s.param, 0.0f};
  const int p = s.param == nullptr ? 0 : 1 + width(s.param_dtype);
  const auto& t = detail::roof_table();
  const detail::RoofFn fn = (states == 2 ? t.adam : t.one_state)[width(s.grad_dtype)][width(s.state_dtype)][p];
  detail::run_blocks(pool, s.n, [&](std::size_t b, std::size_t e) { fn(args, b, e); });
  return ok();
}

}  // namespace

std::size_t step_bytes_per_elem(StepPattern pattern, const StepShard& s) {
  const std::size_t g = dtype_size(s.grad_dtype), st = dtype_size(s.state_dtype);
  const std::size_t p = s.param != nullptr ? dtype_size(s.param_dtype) : 0;
  switch (pattern) {
    case StepPattern::kAdam: return 4 + g + 2 * st + 4 + 2 * st + p;
    case StepPattern::kOneState: return 4 + g + st + 4 + st + p;
    case StepPattern::kRead: return g;
    case StepPattern::kCast: return g + dtype_size(s.param_dtype);
  }
  return 0;
}

Status roofline_adam(const StepShard& shard, void* m, void* v, ThreadPool* pool) {
  return run_step_roof("roofline_adam", 2, shard, m, v, pool);
}

Status roofline_one_state(const StepShard& shard, void* s, ThreadPool* pool) {
  return run_step_roof("roofline_one_state", 1, shard, s, nullptr, pool);
}

Result<double> roofline_read(const void* grad, DType grad_dtype, std::size_t n, ThreadPool* pool) {
  if (!detail::valid_dtype(grad_dtype) || (n > 0 && grad == nullptr)) {
    return make_error(ErrorCode::kInvalidArgument, "roofline_read: bad arguments (n={})", n);
  }
  const detail::ReadRoofFn fn = detail::roof_table().read[width(grad_dtype)];
  double total = 0;
  std::mutex mu;
  detail::run_blocks(pool, n, [&](std::size_t b, std::size_t e) {
    const double part = fn(grad, b, e);
    std::lock_guard lock(mu);
    total += part;
  });
  return total;
}

Status roofline_cast(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t n, ThreadPool* pool) {
  if (!detail::valid_dtype(src_dtype) || !detail::valid_dtype(dst_dtype) ||
      (n > 0 && (src == nullptr || dst == nullptr))) {
    return make_error(ErrorCode::kInvalidArgument, "roofline_cast: bad arguments (n={})", n);
  }
  const detail::CastFn fn = detail::roof_table().cast[width(src_dtype)][width(dst_dtype)];
  detail::run_blocks(pool, n, [&](std::size_t b, std::size_t e) { fn(src, dst, b, e); });
  return ok();
}

}  // namespace strata::kernels
#endif  // HWY_ONCE
