// The loops of the optimizers with one state tensor (SGD's momentum, Adagrad's sum,
// Lion's m), compiled once per SIMD target, and their dispatch table.
// Formulas: strata/kernels/optimizer.h. Scalar twins: sgd_reference(),
// adagrad_reference() and lion_reference() in reference.cpp (operation-for-operation
// identical; no FMA).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/one_state_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include "kernels/simd_convert-inl.h"
#include "kernels/step_args.h"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Steps [begin, end) of a one-state kernel: whole vectors in place, then the tail through
// zero-padded copies (simd_convert-inl.h). body(w, g, s, out) steps one vector; s is null
// without a state (SGD without momentum), and read_state false gives the tail a zero state
// instead of reading it (SGD's first step overwrites its buffer unread).
template <class G, class S, class P, class Body>
HWY_INLINE void OneStateLoop(float* w, const typename G::T* g, typename S::T* s, typename P::T* out, bool read_state,
                             std::size_t begin, std::size_t end, std::size_t lanes, const Body& body) {
  std::size_t i = begin;
  for (; i + lanes <= end; i += lanes) body(w + i, g + i, s ? s + i : nullptr, CopyAt<P>(out, i));
  if (i == end) return;
  const std::size_t rem = end - i;
  HWY_ALIGN float sw[HWY_LANES(float)];
  HWY_ALIGN typename G::T sg[HWY_LANES(float)];
  HWY_ALIGN typename S::T ss[HWY_LANES(float)] = {};
  HWY_ALIGN typename P::T sp[HWY_LANES(float)];
  CopyIn(sw, w + i, rem, lanes);
  CopyIn(sg, g + i, rem, lanes);
  if (s && read_state) CopyIn(ss, s + i, rem, lanes);
  body(sw, sg, s ? ss : nullptr, out ? sp : nullptr);
  CopyOut(w + i, sw, rem);
  if (s) CopyOut(s + i, ss, rem);
  if (out) CopyOut(out + i, sp, rem);
}

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

  OneStateLoop<G, S, P>(a.master, static_cast<const GT*>(a.grad), momentum ? static_cast<ST*>(a.buf) : nullptr,
                        static_cast<PT*>(a.param), /*read_state=*/!first, begin, end, lanes, body);
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

  OneStateLoop<G, S, P>(a.master, static_cast<const GT*>(a.grad), static_cast<ST*>(a.sum), static_cast<PT*>(a.param),
                        /*read_state=*/true, begin, end, lanes, body);
}

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

  OneStateLoop<G, S, P>(a.master, static_cast<const GT*>(a.grad), static_cast<ST*>(a.m), static_cast<PT*>(a.param),
                        /*read_state=*/true, begin, end, lanes, body);
}

template <class G, class S>
void FillRows(detail::OneStateTable& t, int gi, int si) {
  detail::SgdFn(&sgd)[detail::kNumParam] = t.sgd[gi][si];
  detail::AdagradFn(&adagrad)[detail::kNumParam] = t.adagrad[gi][si];
  detail::LionFn(&lion)[detail::kNumParam] = t.lion[gi][si];
  sgd[detail::kParamNone] = &SgdRange<G, S, NoParam>;
  sgd[detail::kParamF32] = &SgdRange<G, S, F32>;
  sgd[detail::kParamBF16] = &SgdRange<G, S, BF16>;
  sgd[detail::kParamF16] = &SgdRange<G, S, F16>;
  adagrad[detail::kParamNone] = &AdagradRange<G, S, NoParam>;
  adagrad[detail::kParamF32] = &AdagradRange<G, S, F32>;
  adagrad[detail::kParamBF16] = &AdagradRange<G, S, BF16>;
  adagrad[detail::kParamF16] = &AdagradRange<G, S, F16>;
  lion[detail::kParamNone] = &LionRange<G, S, NoParam>;
  lion[detail::kParamF32] = &LionRange<G, S, F32>;
  lion[detail::kParamBF16] = &LionRange<G, S, BF16>;
  lion[detail::kParamF16] = &LionRange<G, S, F16>;
}

template <class G>
void FillGrad(detail::OneStateTable& t, int gi) {
  FillRows<G, F32>(t, gi, 0);
  FillRows<G, BF16>(t, gi, 1);
}

const detail::OneStateTable* GetOneStateTable() {
  static const detail::OneStateTable table = [] {
    detail::OneStateTable t{};
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

HWY_EXPORT(GetOneStateTable);

namespace detail {
const OneStateTable& one_state_table() { return *HWY_DYNAMIC_DISPATCH(GetOneStateTable)(); }
}  // namespace detail

}  // namespace strata::kernels
#endif  // HWY_ONCE
