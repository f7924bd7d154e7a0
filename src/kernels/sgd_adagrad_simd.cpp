// SGD and Adagrad loops, compiled once per SIMD target, and their dispatch table.
// Formulas: strata/kernels/optimizer.h. Scalar twins: sgd_reference() and
// adagrad_reference() in reference.cpp (operation-for-operation identical; no FMA).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/sgd_adagrad_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include "kernels/simd_convert-inl.h"
#include "kernels/step_args.h"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class G, class S, class P>
HWY_NOINLINE void SgdRange(const detail::SgdArgs& args, std::size_t begin, std::size_t end) {
  using GT = typename G::T;
  using ST = typename S::T;
  using PT = typename P::T;
  const detail::SgdArgs a = args;
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  const auto grad_scale = hn::Set(d, a.grad_scale);
  const auto wd = hn::Set(d, a.wd);
  const auto mom = hn::Set(d, a.momentum_f);
  const auto omd = hn::Set(d, a.one_minus_dampening);
  const auto neg_lr = hn::Set(d, a.neg_lr);
  const bool use_wd = a.use_wd, momentum = a.momentum, first = a.first, nesterov = a.nesterov;

  // buf_p is null without momentum.
  auto body = [&](float* w_p, const GT* g_p, ST* buf_p, PT* out_p) HWY_ATTR {
    auto g = hn::Mul(LoadAsF32(d, G(), g_p), grad_scale);
    auto w = hn::LoadU(d, w_p);
    if (use_wd) g = hn::Add(g, hn::Mul(w, wd));
    if (momentum) {
      // torch clones the gradient into the buffer on the first step: no dampening.
      const auto buf = first ? g : hn::Add(hn::Mul(LoadAsF32(d, S(), buf_p), mom), hn::Mul(g, omd));
      StoreFromF32(d, S(), buf, buf_p);
      g = nesterov ? hn::Add(g, hn::Mul(buf, mom)) : buf;
    }
    w = hn::Add(w, hn::Mul(g, neg_lr));
    hn::StoreU(w, d, w_p);
    StoreFromF32(d, P(), w, out_p);
  };

  float* w = a.master;
  const GT* g = static_cast<const GT*>(a.grad);
  ST* buf = momentum ? static_cast<ST*>(a.buf) : nullptr;
  PT* out = static_cast<PT*>(a.param);
  std::size_t i = begin;
  for (; i + lanes <= end; i += lanes) body(w + i, g + i, momentum ? buf + i : nullptr, CopyAt<P>(out, i));
  if (i == end) return;
  const std::size_t rem = end - i;
  HWY_ALIGN float sw[HWY_LANES(float)];
  HWY_ALIGN GT sg[HWY_LANES(float)];
  HWY_ALIGN ST sb[HWY_LANES(float)] = {};
  HWY_ALIGN PT sp[HWY_LANES(float)];
  CopyIn(sw, w + i, rem, lanes);
  CopyIn(sg, g + i, rem, lanes);
  if (buf && !first) CopyIn(sb, buf + i, rem, lanes);  // step 1 must not read the buffer
  body(sw, sg, buf ? sb : nullptr, out ? sp : nullptr);
  CopyOut(w + i, sw, rem);
  if (buf) CopyOut(buf + i, sb, rem);
  if (out) CopyOut(out + i, sp, rem);
}

template <class G, class S, class P>
HWY_NOINLINE void AdagradRange(const detail::AdagradArgs& args, std::size_t begin, std::size_t end) {
  using GT = typename G::T;
  using ST = typename S::T;
  using PT = typename P::T;
  const detail::AdagradArgs a = args;
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  const auto grad_scale = hn::Set(d, a.grad_scale);
  const auto wd = hn::Set(d, a.wd);
  const auto eps = hn::Set(d, a.eps);
  const auto neg_clr = hn::Set(d, a.neg_clr);
  const bool use_wd = a.use_wd;

  auto body = [&](float* w_p, const GT* g_p, ST* sum_p, PT* out_p) HWY_ATTR {
    auto g = hn::Mul(LoadAsF32(d, G(), g_p), grad_scale);
    auto w = hn::LoadU(d, w_p);
    if (use_wd) g = hn::Add(g, hn::Mul(w, wd));
    const auto sum = hn::Add(LoadAsF32(d, S(), sum_p), hn::Mul(g, g));
    StoreFromF32(d, S(), sum, sum_p);
    const auto std_dev = hn::Add(hn::Sqrt(sum), eps);
    w = hn::Add(w, hn::Div(hn::Mul(neg_clr, g), std_dev));
    hn::StoreU(w, d, w_p);
    StoreFromF32(d, P(), w, out_p);
  };

  float* w = a.master;
  const GT* g = static_cast<const GT*>(a.grad);
  ST* sum = static_cast<ST*>(a.sum);
  PT* out = static_cast<PT*>(a.param);
  std::size_t i = begin;
  for (; i + lanes <= end; i += lanes) body(w + i, g + i, sum + i, CopyAt<P>(out, i));
  if (i == end) return;
  const std::size_t rem = end - i;
  HWY_ALIGN float sw[HWY_LANES(float)];
  HWY_ALIGN GT sg[HWY_LANES(float)];
  HWY_ALIGN ST ss[HWY_LANES(float)];
  HWY_ALIGN PT sp[HWY_LANES(float)];
  CopyIn(sw, w + i, rem, lanes);
  CopyIn(sg, g + i, rem, lanes);
  CopyIn(ss, sum + i, rem, lanes);
  body(sw, sg, ss, out ? sp : nullptr);
  CopyOut(w + i, sw, rem);
  CopyOut(sum + i, ss, rem);
  if (out) CopyOut(out + i, sp, rem);
}

template <class G, class S>
void FillRows(detail::SgdFn (&sgd)[detail::kNumParam], detail::AdagradFn (&adagrad)[detail::kNumParam]) {
  sgd[detail::kParamNone] = &SgdRange<G, S, NoParam>;
  sgd[detail::kParamF32] = &SgdRange<G, S, F32>;
  sgd[detail::kParamBF16] = &SgdRange<G, S, BF16>;
  sgd[detail::kParamF16] = &SgdRange<G, S, F16>;
  adagrad[detail::kParamNone] = &AdagradRange<G, S, NoParam>;
  adagrad[detail::kParamF32] = &AdagradRange<G, S, F32>;
  adagrad[detail::kParamBF16] = &AdagradRange<G, S, BF16>;
  adagrad[detail::kParamF16] = &AdagradRange<G, S, F16>;
}

template <class G>
void FillGrad(detail::SgdAdagradTable& t, int gi) {
  FillRows<G, F32>(t.sgd[gi][0], t.adagrad[gi][0]);
  FillRows<G, BF16>(t.sgd[gi][1], t.adagrad[gi][1]);
}

const detail::SgdAdagradTable* GetSgdAdagradTable() {
  static const detail::SgdAdagradTable table = [] {
    detail::SgdAdagradTable t{};
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

HWY_EXPORT(GetSgdAdagradTable);

namespace detail {
const SgdAdagradTable& sgd_adagrad_table() { return *HWY_DYNAMIC_DISPATCH(GetSgdAdagradTable)(); }
}  // namespace detail

}  // namespace strata::kernels
#endif  // HWY_ONCE
