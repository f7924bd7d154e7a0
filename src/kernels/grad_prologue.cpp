// The gradient prologue (grad_prologue.h): per-target loops, their dispatch, and the
// public entry point.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/grad_prologue.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include "kernels/simd_convert-inl.h"
#include "kernels/internal.h"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sums of |g| and g^2 (unscaled, in double) and max |g| over [begin, end), as
// compensated totals of blocks of kBlock elements: inside a block each double lane
// adds at most kBlock / lanes / 2 terms, so rounding stays near 1e-14 relative even for
// billions of elements.
template <class G>
HWY_NOINLINE void PrologueRange(const void* grad, std::size_t begin, std::size_t end, detail::PrologueSums* out) {
  using GT = typename G::T;
  const GT* g = static_cast<const GT*>(grad);
  const hn::ScalableTag<float> d;
  const std::size_t lanes = hn::Lanes(d);
  constexpr std::size_t kBlock = 2048;
  detail::PrologueSums total;
#if HWY_HAVE_FLOAT64 && HWY_TARGET != HWY_SCALAR  // SCALAR vectors have one lane: no halves
  const hn::Half<decltype(d)> dh;
  const hn::Rebind<double, decltype(dh)> dd;
  using VD = hn::Vec<decltype(dd)>;
  // Two vectors per iteration into eight independent double accumulators: with one
  // accumulator the loop waits on the add (FMA) latency, not on memory.
  struct Acc {
    VD l1_lo, l1_hi, l2_lo, l2_hi;
  };
  auto max_abs0 = hn::Zero(d), max_abs1 = hn::Zero(d);
  auto add = [&](hn::Vec<decltype(d)> a, Acc& acc) HWY_ATTR {
    const auto lo = hn::PromoteTo(dd, hn::LowerHalf(dh, a));
    const auto hi = hn::PromoteTo(dd, hn::UpperHalf(dh, a));
    acc.l1_lo = hn::Add(acc.l1_lo, lo);
    acc.l1_hi = hn::Add(acc.l1_hi, hi);
    acc.l2_lo = hn::MulAdd(lo, lo, acc.l2_lo);
    acc.l2_hi = hn::MulAdd(hi, hi, acc.l2_hi);
  };
  std::size_t i = begin;
  while (i < end) {
    const std::size_t block_end = end - i > kBlock ? i + kBlock : end;
    Acc a0{hn::Zero(dd), hn::Zero(dd), hn::Zero(dd), hn::Zero(dd)}, a1 = a0;
    for (; i + 2 * lanes <= block_end; i += 2 * lanes) {
      const auto x0 = hn::Abs(LoadAsF32(d, G(), g + i));
      const auto x1 = hn::Abs(LoadAsF32(d, G(), g + i + lanes));
      max_abs0 = hn::Max(max_abs0, x0);
      max_abs1 = hn::Max(max_abs1, x1);
      add(x0, a0);
      add(x1, a1);
    }
    if (i < block_end) {  // at most two vectors left; only the range's last block has a partial one
      for (; i + lanes <= block_end; i += lanes) {
        const auto x = hn::Abs(LoadAsF32(d, G(), g + i));
        max_abs0 = hn::Max(max_abs0, x);
        add(x, a0);
      }
      if (i < block_end) {
        HWY_ALIGN GT sg[HWY_LANES(float)];
        CopyIn(sg, g + i, block_end - i, lanes);
        const auto x = hn::Abs(LoadAsF32(d, G(), sg));
        max_abs0 = hn::Max(max_abs0, x);
        add(x, a0);
        i = block_end;
      }
    }
    const VD l1 = hn::Add(hn::Add(a0.l1_lo, a0.l1_hi), hn::Add(a1.l1_lo, a1.l1_hi));
    const VD l2 = hn::Add(hn::Add(a0.l2_lo, a0.l2_hi), hn::Add(a1.l2_lo, a1.l2_hi));
    total.add_block(hn::GetLane(hn::SumOfLanes(dd, l1)), hn::GetLane(hn::SumOfLanes(dd, l2)));
  }
  total.max_abs = hn::GetLane(hn::MaxOfLanes(d, hn::Max(max_abs0, max_abs1)));
#else
  // Targets without double lanes: convert with the vector code, sum in scalar double.
  for (std::size_t i = begin; i < end;) {
    const std::size_t block_end = end - i > kBlock ? i + kBlock : end;
    double l1 = 0, l2 = 0;
    for (; i < block_end; i += lanes) {
      HWY_ALIGN GT sg[HWY_LANES(float)];
      HWY_ALIGN float a[HWY_LANES(float)];
      const std::size_t k = block_end - i < lanes ? block_end - i : lanes;
      CopyIn(sg, g + i, k, lanes);
      hn::Store(hn::Abs(LoadAsF32(d, G(), sg)), d, a);
      for (std::size_t j = 0; j < k; ++j) {
        l1 += a[j];
        l2 += double{a[j]} * a[j];
        total.max_abs = total.max_abs > a[j] ? total.max_abs : a[j];
      }
    }
    total.add_block(l1, l2);
  }
#endif
  *out = total;
}

const detail::PrologueTable* GetPrologueTable() {
  static const detail::PrologueTable table = {hwy::TargetName(HWY_TARGET),
                                              {&PrologueRange<F32>, &PrologueRange<BF16>, &PrologueRange<F16>}};
  return &table;
}

}  // namespace strata::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

#include "strata/kernels/grad_prologue.h"

namespace strata::kernels {

HWY_EXPORT(GetPrologueTable);

namespace detail {
const PrologueTable& prologue_table() { return *HWY_DYNAMIC_DISPATCH(GetPrologueTable)(); }
}  // namespace detail

void GradStats::merge(const GradStats& o) {
  l1 += o.l1;
  l2_sq += o.l2_sq;
  linf = std::max(linf, o.linf);
  if (std::isnan(o.linf)) linf = o.linf;  // keep NaN: std::max drops it when it comes second
  nonfinite = nonfinite || o.nonfinite;
}

double GradStats::norm(double p) const {
  if (p == 1) return l1;
  if (p == 2) return std::sqrt(l2_sq);
  return linf;
}

Result<GradStats> grad_prologue(const void* grad, DType grad_dtype, std::size_t n, double inv_loss_scale,
                                ThreadPool* pool) {
  if (n > 0 && grad == nullptr) return make_error(ErrorCode::kInvalidArgument, "grad_prologue: grad is null (n={})", n);
  if (!detail::valid_dtype(grad_dtype)) {
    return make_error(ErrorCode::kInvalidArgument, "grad_prologue: unknown grad dtype {}",
                      static_cast<int>(grad_dtype));
  }
  if (!std::isfinite(inv_loss_scale) || inv_loss_scale <= 0) {
    return make_error(ErrorCode::kInvalidArgument, "grad_prologue: inv_loss_scale must be finite and > 0, got {}",
                      inv_loss_scale);
  }
  const detail::PrologueFn fn = detail::prologue_table().fn[detail::grad_index(grad_dtype)];
  // Each block's partial goes into a list; sorting by block start before combining
  // makes the result independent of which thread finishes first.
  std::vector<std::pair<std::size_t, detail::PrologueSums>> parts;
  std::mutex mu;
  detail::run_blocks(pool, n, [&](std::size_t begin, std::size_t end) {
    detail::PrologueSums part;
    fn(grad, begin, end, &part);
    std::lock_guard lock(mu);
    parts.emplace_back(begin, part);
  });
  std::sort(parts.begin(), parts.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  detail::PrologueSums sums;
  for (const auto& [begin, part] : parts) sums.merge(part);

  GradStats out;
  // Any inf or NaN makes the double sum of |g| inf or NaN; finite fp32 values cannot
  // overflow it (or the sum of squares: 3.4e38^2 * 2^64 < 1.8e308).
  out.nonfinite = !std::isfinite(sums.l1());
  if (out.nonfinite) {
    out.l1 = out.l2_sq = out.linf = std::numeric_limits<double>::quiet_NaN();
    return out;
  }
  out.l1 = sums.l1() * inv_loss_scale;
  out.l2_sq = sums.l2() * (inv_loss_scale * inv_loss_scale);
  out.linf = double{sums.max_abs} * inv_loss_scale;  // rounding is monotonic: max commutes with scaling
  return out;
}

double clip_coefficient(double total_norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(1.0, max_norm / (total_norm + 1e-6));
}

}  // namespace strata::kernels
#endif  // HWY_ONCE
