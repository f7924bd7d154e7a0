// DeepSpeed's learning-rate schedulers, as the "scheduler" config block names them:
// WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle and LRRangeTest.
//
//   STRATA_ASSIGN_OR_RETURN(LrSchedule s, LrSchedule::create(cfg.scheduler, cfg.optimizer.lr));
//   engine.set_lr(s.lr(step));                     // before optimizer step `step` (0-based)
//   if (auto b = s.betas(step)) engine.set_betas(*b);  // OneCycle's cycled momentum
//
// Note [scheduler stepping]: DeepSpeed's engine steps its scheduler after each applied
// optimizer step, and each scheduler sets the optimizer's lr once when it is built (its
// value at last_batch_iteration -1). So optimizer step k runs with the formula at
// iteration k - 1, and step 0 with the value at -1: WarmupLR and WarmupDecayLR
// warmup_min_lr, WarmupCosineLR 0, OneCycle cycle_min_lr, LRRangeTest its min lr.
// lr(step) reproduces that, so a run here and under DeepSpeed use the same lr at every
// step. at_iteration(it) is DeepSpeed's get_lr() at last_batch_iteration = it.
//
// The formulas (DeepSpeed's deepspeed/runtime/lr_schedules.py), it = iteration >= 0:
//   warmup gamma(it), it < W (W = max(2, warmup_num_steps)):
//       log: ln(it + 1) / ln(W)      linear: it / W
//   WarmupLR:       min + (max - min) * (it < W ? gamma : 1)
//   WarmupDecayLR:  min + (max - min) * (it < W ? gamma : max(0, (T - it) / max(1, T - W)))
//   WarmupCosineLR: lr0 * (it < W ? r0 + (1 - r0) * gamma
//                                 : max(0, c + (1 - c) * (1 + cos(pi * (it - W + 1) / (T - W))) / 2))
//   OneCycle, it < S1 + S2: b = it + 1, x = b / (S1 + S2) - floor(b / (S1 + S2)),
//       f = x <= S1/(S1+S2) ? x / (S1/(S1+S2)) : (x - 1) / (S1/(S1+S2) - 1),
//       lr = min + (max - min) * f, beta1 = max_mom - (max_mom - min_mom) * f;
//     after: lr = min / (1 + rate * (it - S1 - S2 + 1) / decay_step_size) (min when no decay)
//   LRRangeTest: min * (1 + rate * i), i = (it + 1) / size, floored with staircase.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "strata/base/config.h"

namespace strata {

class LrSchedule {
 public:
  // optimizer_lr: the optimizer block's lr (WarmupCosineLR's peak; the lr without a
  // scheduler).
  // total_num_steps 0 in `cfg` (not given) is an error for the schedulers that need it;
  // callers that know the run's length fill it in first (strata train: --steps).
  static Result<LrSchedule> create(const SchedulerConfig& cfg, double optimizer_lr);

  // The lr optimizer step `step` (0-based, counting applied steps) runs with.
  double lr(std::int64_t step) const { return at_iteration(step - 1); }
  // OneCycle with cycle_momentum: the Adam betas of step `step` (DeepSpeed sets beta2 to
  // 0.99 with them); nullopt otherwise.
  std::optional<std::array<double, 2>> betas(std::int64_t step) const;

  double at_iteration(std::int64_t it) const;
  // One line for run summaries: "WarmupCosineLR: lr 0.003, linear warmup over 30 steps, ...".
  std::string describe() const;
  SchedulerType type() const { return cfg_.type; }
  const SchedulerConfig& config() const { return cfg_; }

 private:
  LrSchedule(const SchedulerConfig& cfg, double optimizer_lr) : cfg_(cfg), optimizer_lr_(optimizer_lr) {}
  double warmup_gamma(std::int64_t it) const;
  double one_cycle_factor(std::int64_t it) const;
  double one_cycle_total() const;

  SchedulerConfig cfg_;
  double optimizer_lr_ = 0;
};

}  // namespace strata
