// Lamb's two passes (strata/kernels/optimizer.h), compiled once per SIMD target, and
// their dispatch table. Scalar twins: lamb_moments_reference() and lamb_apply_reference()
// in reference.cpp; m, v, the master and its copy match them bit for bit (no FMA: this
// file builds with -ffp-contract=off), the sums to rounding (their order differs).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/lamb_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include <type_traits>

#include "kernels/simd_convert-inl.h"
#include "kernels/step_args.h"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The constants both passes use to form u = m / (sqrt(v) + eps) + wd*p.
template <class D>
struct LambUpdate {
  hn::Vec<D> eps, wd;
  bool use_wd;

  LambUpdate(D d, const detail::LambArgs& a) : eps(hn::Set(d, a.eps)), wd(hn::Set(d, a.wd)), use_wd(a.use_wd) {}
  HWY_INLINE hn::Vec<D> operator()(hn::Vec<D> m, hn::Vec<D> v, hn::Vec<D> w) const {
    auto u = hn::Div(m, hn::Add(hn::Sqrt(v), eps));
    if (use_wd) u = hn::Add(u, hn::Mul(w, wd));
    return u;
  }
};

// Sums of squares of two fp32 streams, in double, within one block of the range.
template <class D>
struct SquareSums {
#if HWY_HAVE_FLOAT64 && HWY_TARGET != HWY_SCALAR  // SCALAR vectors have one lane: no halves
  using DH = hn::Half<D>;
  using DD = hn::Rebind<double, DH>;
  hn::Vec<DD> p, u;
  // Written out: an implicit constructor would miss the target's attributes.
  SquareSums() : p(hn::Zero(DD())), u(hn::Zero(DD())) {}
  HWY_INLINE void add(D, hn::Vec<D> pv, hn::Vec<D> uv) {
    const DH dh;
    const DD dd;
    auto square = [&](hn::Vec<D> x, hn::Vec<DD>& acc) HWY_ATTR {
      const auto lo = hn::PromoteTo(dd, hn::LowerHalf(dh, x));
      const auto hi = hn::PromoteTo(dd, hn::UpperHalf(dh, x));
      acc = hn::Add(acc, hn::Add(hn::Mul(lo, lo), hn::Mul(hi, hi)));
    };
    square(pv, p);
    square(uv, u);
  }
  double p_total() const { return hn::GetLane(hn::SumOfLanes(DD(), p)); }
  double u_total() const { return hn::GetLane(hn::SumOfLanes(DD(), u)); }
#else
  // Without double lanes: the vectors go through memory and are added in scalar double.
  double p = 0, u = 0;
  HWY_INLINE void add(D d, hn::Vec<D> pv, hn::Vec<D> uv) {
    HWY_ALIGN float a[HWY_LANES(float)], b[HWY_LANES(float)];
    hn::Store(pv, d, a);
    hn::Store(uv, d, b);
    for (std::size_t j = 0; j < hn::Lanes(d); ++j) {
      p += double{a[j]} * a[j];
      u += double{b[j]} * b[j];
    }
  }
  double p_total() const { return p; }
  double u_total() const { return u; }
#endif
};

// Pass 1: m and v from the gradient, and the sums of p^2 and u^2 (u from m and v as
// stored). Blocks of kBlock elements keep each double lane's terms few.
template <class G, class S>
HWY_NOINLINE void LambMomentsRange(const detail::LambArgs& args, std::size_t begin, std::size_t end,
                                   detail::LambSumsPartial* out) {
  using GT = typename G::T;
  using ST = typename S::T;
  const detail::LambArgs a = args;
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  const auto grad_scale = hn::Set(d, a.grad_scale);
  const auto beta1 = hn::Set(d, a.beta1);
  const auto omb1 = hn::Set(d, a.one_minus_beta1);
  const auto beta2 = hn::Set(d, a.beta2);
  const auto omb2 = hn::Set(d, a.one_minus_beta2);
  const LambUpdate<decltype(d)> update(d, a);
  constexpr std::size_t kBlock = 2048;

  auto body = [&](const float* w_p, const GT* g_p, ST* m_p, ST* v_p, SquareSums<decltype(d)>& sums) HWY_ATTR {
    const auto g = hn::Mul(LoadAsF32(d, G(), g_p), grad_scale);
    const auto w = hn::LoadU(d, w_p);
    auto m = hn::Add(hn::Mul(LoadAsF32(d, S(), m_p), beta1), hn::Mul(g, omb1));
    auto v = hn::Add(hn::Mul(LoadAsF32(d, S(), v_p), beta2), hn::Mul(hn::Mul(g, omb2), g));
    StoreFromF32(d, S(), m, m_p);
    StoreFromF32(d, S(), v, v_p);
    if constexpr (!std::is_same_v<S, F32>) {  // read back the rounded values pass 2 will see
      m = LoadAsF32(d, S(), m_p);
      v = LoadAsF32(d, S(), v_p);
    }
    sums.add(d, w, update(m, v, w));
  };

  const float* w = a.master;
  const GT* g = static_cast<const GT*>(a.grad);
  ST* m = static_cast<ST*>(a.m);
  ST* v = static_cast<ST*>(a.v);
  detail::LambSumsPartial total;
  for (std::size_t i = begin; i < end;) {
    const std::size_t block_end = end - i > kBlock ? i + kBlock : end;
    SquareSums<decltype(d)> sums;
    for (; i + lanes <= block_end; i += lanes) body(w + i, g + i, m + i, v + i, sums);
    if (i < block_end) {  // the range's last few elements: zero padding adds 0 to both sums (eps > 0)
      const std::size_t rem = block_end - i;
      HWY_ALIGN float sw[HWY_LANES(float)];
      HWY_ALIGN GT sg[HWY_LANES(float)];
      HWY_ALIGN ST sm[HWY_LANES(float)], sv[HWY_LANES(float)];
      CopyIn(sw, w + i, rem, lanes);
      CopyIn(sg, g + i, rem, lanes);
      CopyIn(sm, m + i, rem, lanes);
      CopyIn(sv, v + i, rem, lanes);
      body(sw, sg, sm, sv, sums);
      CopyOut(m + i, sm, rem);
      CopyOut(v + i, sv, rem);
      i = block_end;
    }
    total.add_block(sums.p_total(), sums.u_total());
  }
  *out = total;
}

// Pass 2: u again from m and v, then w += neg_ratio * u, and the compute copy.
template <class S, class P>
HWY_NOINLINE void LambApplyRange(const detail::LambArgs& args, std::size_t begin, std::size_t end) {
  using ST = typename S::T;
  using PT = typename P::T;
  const detail::LambArgs a = args;
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  const auto neg_ratio = hn::Set(d, a.neg_ratio);
  const LambUpdate<decltype(d)> update(d, a);

  auto body = [&](float* w_p, const ST* m_p, const ST* v_p, PT* out_p) HWY_ATTR {
    auto w = hn::LoadU(d, w_p);
    w = hn::Add(w, hn::Mul(update(LoadAsF32(d, S(), m_p), LoadAsF32(d, S(), v_p), w), neg_ratio));
    hn::StoreU(w, d, w_p);
    StoreFromF32(d, P(), w, out_p);
  };

  float* w = a.master;
  const ST* m = static_cast<const ST*>(a.m);
  const ST* v = static_cast<const ST*>(a.v);
  PT* out = static_cast<PT*>(a.param);
  std::size_t i = begin;
  for (; i + lanes <= end; i += lanes) body(w + i, m + i, v + i, CopyAt<P>(out, i));
  if (i == end) return;
  const std::size_t rem = end - i;
  HWY_ALIGN float sw[HWY_LANES(float)];
  HWY_ALIGN ST sm[HWY_LANES(float)], sv[HWY_LANES(float)];
  HWY_ALIGN PT sp[HWY_LANES(float)];
  CopyIn(sw, w + i, rem, lanes);
  CopyIn(sm, m + i, rem, lanes);
  CopyIn(sv, v + i, rem, lanes);
  body(sw, sm, sv, out ? sp : nullptr);
  CopyOut(w + i, sw, rem);
  if (out) CopyOut(out + i, sp, rem);
}

template <class S>
void FillApplyRow(detail::LambApplyFn (&row)[detail::kNumParam]) {
  row[detail::kParamNone] = &LambApplyRange<S, NoParam>;
  row[detail::kParamF32] = &LambApplyRange<S, F32>;
  row[detail::kParamBF16] = &LambApplyRange<S, BF16>;
  row[detail::kParamF16] = &LambApplyRange<S, F16>;
}

template <class G>
void FillMomentsRow(detail::LambMomentsFn (&row)[detail::kNumState]) {
  row[0] = &LambMomentsRange<G, F32>;
  row[1] = &LambMomentsRange<G, BF16>;
}

const detail::LambTable* GetLambTable() {
  static const detail::LambTable table = [] {
    detail::LambTable t{};
    t.target = hwy::TargetName(HWY_TARGET);
    FillMomentsRow<F32>(t.moments[detail::grad_index(DType::kF32)]);
    FillMomentsRow<BF16>(t.moments[detail::grad_index(DType::kBF16)]);
    FillMomentsRow<F16>(t.moments[detail::grad_index(DType::kF16)]);
    FillApplyRow<F32>(t.apply[0]);
    FillApplyRow<BF16>(t.apply[1]);
    return t;
  }();
  return &table;
}

}  // namespace strata::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata::kernels {

HWY_EXPORT(GetLambTable);

namespace detail {
const LambTable& lamb_table() { return *HWY_DYNAMIC_DISPATCH(GetLambTable)(); }
}  // namespace detail

}  // namespace strata::kernels
#endif  // HWY_ONCE
