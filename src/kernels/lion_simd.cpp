// Lion loops, compiled once per SIMD target, and their dispatch table.
// Formula: strata/kernels/optimizer.h. Scalar twin: lion_reference() in reference.cpp
// (operation-for-operation identical; no FMA).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/lion_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include "kernels/simd_convert-inl.h"
#include "kernels/step_args.h"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class G, class S, class P>
HWY_NOINLINE void LionRange(const detail::LionArgs& args, std::size_t begin, std::size_t end) {
  using GT = typename G::T;
  using ST = typename S::T;
  using PT = typename P::T;
  const detail::LionArgs a = args;
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  const auto grad_scale = hn::Set(d, a.grad_scale);
  const auto decay = hn::Set(d, a.decay);
  const auto beta1 = hn::Set(d, a.beta1);
  const auto omb1 = hn::Set(d, a.one_minus_beta1);
  const auto beta2 = hn::Set(d, a.beta2);
  const auto omb2 = hn::Set(d, a.one_minus_beta2);
  const auto neg_lr = hn::Set(d, a.neg_lr);
  const auto lr = hn::Neg(neg_lr);
  const auto zero = hn::Zero(d);
  const auto neg_zero = hn::Set(d, -0.0f);
  const bool decoupled = a.decoupled;

  auto body = [&](float* w_p, const GT* g_p, ST* m_p, PT* out_p) HWY_ATTR {
    const auto g = hn::Mul(LoadAsF32(d, G(), g_p), grad_scale);
    auto w = hn::LoadU(d, w_p);
    if (decoupled) w = hn::Mul(w, decay);
    const auto m = LoadAsF32(d, S(), m_p);
    const auto c = hn::Add(hn::Mul(m, beta1), hn::Mul(g, omb1));
    // -lr * sign(c), sign as torch.sign: 0 for 0 and for NaN (neither compare holds);
    // the zero is -0, as (+0) * -lr is.
    w = hn::Add(w, hn::IfThenElse(hn::Gt(c, zero), neg_lr, hn::IfThenElse(hn::Lt(c, zero), lr, neg_zero)));
    StoreFromF32(d, S(), hn::Add(hn::Mul(m, beta2), hn::Mul(g, omb2)), m_p);
    hn::StoreU(w, d, w_p);
    StoreFromF32(d, P(), w, out_p);
  };

  float* w = a.master;
  const GT* g = static_cast<const GT*>(a.grad);
  ST* m = static_cast<ST*>(a.m);
  PT* out = static_cast<PT*>(a.param);
  std::size_t i = begin;
  for (; i + lanes <= end; i += lanes) body(w + i, g + i, m + i, CopyAt<P>(out, i));
  if (i == end) return;
  const std::size_t rem = end - i;
  HWY_ALIGN float sw[HWY_LANES(float)];
  HWY_ALIGN GT sg[HWY_LANES(float)];
  HWY_ALIGN ST sm[HWY_LANES(float)];
  HWY_ALIGN PT sp[HWY_LANES(float)];
  CopyIn(sw, w + i, rem, lanes);
  CopyIn(sg, g + i, rem, lanes);
  CopyIn(sm, m + i, rem, lanes);
  body(sw, sg, sm, out ? sp : nullptr);
  CopyOut(w + i, sw, rem);
  CopyOut(m + i, sm, rem);
  if (out) CopyOut(out + i, sp, rem);
}

template <class G, class S>
void FillRow(detail::LionFn (&fn)[detail::kNumParam]) {
  fn[detail::kParamNone] = &LionRange<G, S, NoParam>;
  fn[detail::kParamF32] = &LionRange<G, S, F32>;
  fn[detail::kParamBF16] = &LionRange<G, S, BF16>;
  fn[detail::kParamF16] = &LionRange<G, S, F16>;
}

template <class G>
void FillGrad(detail::LionTable& t, int gi) {
  FillRow<G, F32>(t.fn[gi][0]);
  FillRow<G, BF16>(t.fn[gi][1]);
}

const detail::LionTable* GetLionTable() {
  static const detail::LionTable table = [] {
    detail::LionTable t{};
    t.target = hwy::TargetName(HWY_TARGET);
    FillGrad<F32>(t, detail::grad_index(DType::kF32));
    FillGrad<BF16>(t, detail::grad_index(DType::kBF16));
    FillGrad<F16>(t, detail::grad_index(DType::kF16));
    return t;
  }();
  return &table;
}

}  // namespace strata::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata::kernels {

HWY_EXPORT(GetLionTable);

namespace detail {
const LionTable& lion_table() { return *HWY_DYNAMIC_DISPATCH(GetLionTable)(); }
}  // namespace detail

}  // namespace strata::kernels
#endif  // HWY_ONCE
