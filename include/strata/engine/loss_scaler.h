// Loss scaling for fp16 training, with DeepSpeed's semantics.
//
//   LossScaler scaler(cfg.fp16);            // dynamic when fp16.loss_scale == 0
//   (loss * scaler.scale()).backward();
//   bool overflow = ...;                    // from the gradient prologue, max over ranks
//   if (scaler.update(overflow)) step();    // false: skip this step
//
// Dynamic scaling starts at 2^initial_scale_power. On an overflow the step is skipped
// and, once `hysteresis` overflows have been absorbed, the scale halves (not below
// min_loss_scale). After loss_scale_window steps without overflow since the last one,
// it doubles. With consecutive_hysteresis the hysteresis budget refills after every
// good step instead of only when the scale grows. A static scale never changes but
// still skips overflowing steps. With fp16 off the scale is 1 and only non-finite
// gradients skip a step.
#pragma once

#include <cstdint>

#include "strata/base/config.h"

namespace strata::engine {

class LossScaler {
 public:
  LossScaler() = default;  // scale 1, never changes
  explicit LossScaler(const Fp16Config& cfg);

  double scale() const { return scale_; }
  bool dynamic() const { return dynamic_; }
  // Records one optimizer step's outcome; returns true when the step should be applied.
  bool update(bool overflow);
  std::uint64_t skipped_steps() const { return skipped_; }

  // For checkpoints: the full scaler state.
  struct State {
    double scale = 1;
    std::int64_t iter = 0;
    std::int64_t last_overflow_iter = -1;
    int hysteresis_left = 1;
    std::uint64_t skipped = 0;
  };
  State state() const { return {scale_, iter_, last_overflow_iter_, hysteresis_left_, skipped_}; }
  void restore(const State& s);

 private:
  bool dynamic_ = false;
  double scale_ = 1;
  double min_scale_ = 1;
  int window_ = 1000;
  int hysteresis_ = 1;
  bool consecutive_hysteresis_ = false;
  int hysteresis_left_ = 1;
  std::int64_t iter_ = 0;
  std::int64_t last_overflow_iter_ = -1;
  std::uint64_t skipped_ = 0;
};

}  // namespace strata::engine
