#include "strata/engine/loss_scaler.h"

#include <algorithm>
#include <cmath>

namespace strata::engine {

LossScaler::LossScaler(const Fp16Config& cfg) {
  if (!cfg.enabled) return;
  dynamic_ = cfg.loss_scale == 0;
  scale_ = dynamic_ ? std::ldexp(1.0, cfg.initial_scale_power) : cfg.loss_scale;
  min_scale_ = cfg.min_loss_scale;
  window_ = cfg.loss_scale_window;
  hysteresis_ = hysteresis_left_ = cfg.hysteresis;
  consecutive_hysteresis_ = cfg.consecutive_hysteresis;
}

bool LossScaler::update(bool overflow) {
  if (overflow) {
    ++skipped_;
    if (dynamic_) {
      if (hysteresis_ == 1 || hysteresis_left_ == 1) scale_ = std::max(scale_ / 2, min_scale_);
      else --hysteresis_left_;
      last_overflow_iter_ = iter_;
    }
  } else if (dynamic_) {
    if (consecutive_hysteresis_) hysteresis_left_ = hysteresis_;
    if ((iter_ - last_overflow_iter_) % window_ == 0) {
      if (!consecutive_hysteresis_) hysteresis_left_ = hysteresis_;
      scale_ *= 2;
    }
  }
  ++iter_;
  return !overflow;
}

void LossScaler::restore(const State& s) {
  scale_ = s.scale;
  iter_ = s.iter;
  last_overflow_iter_ = s.last_overflow_iter;
  hysteresis_left_ = s.hysteresis_left;
  skipped_ = s.skipped;
}

}  // namespace strata::engine
