// Adam/AdamW loops, compiled once per SIMD target, and their dispatch table.
// The formulas are documented in strata/kernels/optimizer.h; the scalar twin is
// adam_reference() in reference.cpp, which must stay operation-for-operation identical
// (no FMA: this file builds with -ffp-contract=off, see CMakeLists.txt).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/adam_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include "kernels/simd_convert-inl.h"
#include "kernels/step_args.h"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// G, S, P: element tags of the gradient, the states and the compute copy.
template <class G, class S, class P>
HWY_NOINLINE void AdamRange(const detail::AdamArgs& args, std::size_t begin, std::size_t end) {
  using GT = typename G::T;
  using ST = typename S::T;
  using PT = typename P::T;
  const detail::AdamArgs a = args;  // a local copy: stores through the arrays cannot alias it
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  const auto grad_scale = hn::Set(d, a.grad_scale);
  const auto wd = hn::Set(d, a.wd);
  const auto decay = hn::Set(d, a.decay);
  const auto beta1 = hn::Set(d, a.beta1);
  const auto omb1 = hn::Set(d, a.one_minus_beta1);
  const auto beta2 = hn::Set(d, a.beta2);
  const auto omb2 = hn::Set(d, a.one_minus_beta2);
  const auto bc2_sqrt = hn::Set(d, a.bc2_sqrt);
  const auto eps = hn::Set(d, a.eps);
  const auto neg_step = hn::Set(d, a.neg_step_size);
  const bool l2 = a.l2, decoupled = a.decoupled, amsgrad = a.amsgrad;

  // One vector of every stream. vmax_p is null unless amsgrad; out_p null without a copy.
  auto body = [&](float* w_p, const GT* g_p, ST* m_p, ST* v_p, ST* vmax_p, PT* out_p) HWY_ATTR {
    auto g = hn::Mul(LoadAsF32(d, G(), g_p), grad_scale);
    auto w = hn::LoadU(d, w_p);
    if (l2) g = hn::Add(g, hn::Mul(w, wd));
    if (decoupled) w = hn::Mul(w, decay);
    const auto m = hn::Add(hn::Mul(LoadAsF32(d, S(), m_p), beta1), hn::Mul(g, omb1));
    const auto v = hn::Add(hn::Mul(LoadAsF32(d, S(), v_p), beta2), hn::Mul(hn::Mul(g, omb2), g));
    StoreFromF32(d, S(), m, m_p);
    StoreFromF32(d, S(), v, v_p);
    auto v_used = v;
    if (amsgrad) {
      v_used = hn::Max(LoadAsF32(d, S(), vmax_p), v);
      StoreFromF32(d, S(), v_used, vmax_p);
    }
    const auto denom = hn::Add(hn::Div(hn::Sqrt(v_used), bc2_sqrt), eps);
    w = hn::Add(w, hn::Div(hn::Mul(neg_step, m), denom));
    hn::StoreU(w, d, w_p);
    StoreFromF32(d, P(), w, out_p);
  };

  float* w = a.master;
  const GT* g = static_cast<const GT*>(a.grad);
  ST* m = static_cast<ST*>(a.m);
  ST* v = static_cast<ST*>(a.v);
  ST* vmax = amsgrad ? static_cast<ST*>(a.vmax) : nullptr;
  PT* out = static_cast<PT*>(a.param);

  // Without amsgrad, m stands in for vmax (the body does not touch it): no per-vector
  // null check, and no offsetting of a null pointer.
  ST* vmax_or_m = vmax ? vmax : m;
  std::size_t i = begin;
  for (; i + lanes <= end; i += lanes) {
    body(w + i, g + i, m + i, v + i, vmax_or_m + i, CopyAt<P>(out, i));
  }
  if (i == end) return;
  // The tail (fewer than `lanes` elements): same code on zero-padded copies.
  const std::size_t rem = end - i;
  HWY_ALIGN float sw[HWY_LANES(float)];
  HWY_ALIGN GT sg[HWY_LANES(float)];
  HWY_ALIGN ST sm[HWY_LANES(float)], sv[HWY_LANES(float)], smax[HWY_LANES(float)];
  HWY_ALIGN PT sp[HWY_LANES(float)];
  CopyIn(sw, w + i, rem, lanes);
  CopyIn(sg, g + i, rem, lanes);
  CopyIn(sm, m + i, rem, lanes);
  CopyIn(sv, v + i, rem, lanes);
  if (vmax) CopyIn(smax, vmax + i, rem, lanes);
  body(sw, sg, sm, sv, vmax ? smax : nullptr, out ? sp : nullptr);
  CopyOut(w + i, sw, rem);
  CopyOut(m + i, sm, rem);
  CopyOut(v + i, sv, rem);
  if (vmax) CopyOut(vmax + i, smax, rem);
  if (out) CopyOut(out + i, sp, rem);
}

template <class G, class S>
void FillAdamRow(detail::AdamFn (&row)[detail::kNumParam]) {
  row[detail::kParamNone] = &AdamRange<G, S, NoParam>;
  row[detail::kParamF32] = &AdamRange<G, S, F32>;
  row[detail::kParamBF16] = &AdamRange<G, S, BF16>;
  row[detail::kParamF16] = &AdamRange<G, S, F16>;
}

template <class G>
void FillAdamGrad(detail::AdamFn (&rows)[detail::kNumState][detail::kNumParam]) {
  FillAdamRow<G, F32>(rows[0]);
  FillAdamRow<G, BF16>(rows[1]);
}

const detail::AdamTable* GetAdamTable() {
  static const detail::AdamTable table = [] {
    detail::AdamTable t{};
    t.target = hwy::TargetName(HWY_TARGET);
    FillAdamGrad<F32>(t.fn[detail::grad_index(DType::kF32)]);
    FillAdamGrad<BF16>(t.fn[detail::grad_index(DType::kBF16)]);
    FillAdamGrad<F16>(t.fn[detail::grad_index(DType::kF16)]);
    return t;
  }();
  return &table;
}

}  // namespace strata::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata::kernels {

HWY_EXPORT(GetAdamTable);

namespace detail {
const AdamTable& adam_table() { return *HWY_DYNAMIC_DISPATCH(GetAdamTable)(); }
}  // namespace detail

}  // namespace strata::kernels
#endif  // HWY_ONCE
