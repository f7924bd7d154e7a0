#include "strata/base/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include <fmt/format.h>

namespace strata {

Result<LrSchedule> LrSchedule::create(const SchedulerConfig& cfg, double optimizer_lr) {
  const bool needs_total = cfg.type == SchedulerType::kWarmupDecayLR || cfg.type == SchedulerType::kWarmupCosineLR;
  if (needs_total && cfg.total_num_steps <= 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "scheduler.params.total_num_steps: required by {} (the optimizer steps of the whole run)",
                      to_string(cfg.type));
  }
  if (cfg.type == SchedulerType::kOneCycle && (cfg.cycle_min_lr < 0 || cfg.cycle_max_lr < 0)) {
    return make_error(ErrorCode::kInvalidArgument, "scheduler.params.cycle_min_lr and cycle_max_lr: required by OneCycle");
  }
  return LrSchedule(cfg, optimizer_lr);
}

double LrSchedule::warmup_gamma(std::int64_t it) const {
  const double w = static_cast<double>(std::max<std::int64_t>(2, cfg_.warmup_num_steps));
  if (cfg_.warmup_type == "linear") return static_cast<double>(it) / w;
  return std::log(static_cast<double>(it + 1)) / std::log(w);
}

double LrSchedule::one_cycle_total() const {
  const auto second = cfg_.cycle_second_step_size > 0 ? cfg_.cycle_second_step_size : cfg_.cycle_first_step_size;
  return static_cast<double>(cfg_.cycle_first_step_size + second);
}

double LrSchedule::one_cycle_factor(std::int64_t it) const {
  const double total = one_cycle_total();
  const double ratio = static_cast<double>(cfg_.cycle_first_step_size) / total;
  const double b = static_cast<double>(it + 1);
  const double x = 1.0 + b / total - std::floor(1.0 + b / total);
  return x <= ratio ? x / ratio : (x - 1.0) / (ratio - 1.0);
}

double LrSchedule::at_iteration(std::int64_t it) const {
  const SchedulerConfig& c = cfg_;
  const std::int64_t w = std::max<std::int64_t>(2, c.warmup_num_steps);
  switch (c.type) {
    case SchedulerType::kNone: return optimizer_lr_;
    case SchedulerType::kWarmupLR:
    case SchedulerType::kWarmupDecayLR: {
      if (it < 0) return c.warmup_min_lr;  // set when the scheduler is built
      double gamma = 1.0;
      if (it < w) {
        gamma = warmup_gamma(it);
      } else if (c.type == SchedulerType::kWarmupDecayLR) {
        gamma = std::max(0.0, static_cast<double>(c.total_num_steps - it) /
                                  std::max(1.0, static_cast<double>(c.total_num_steps - w)));
      }
      return c.warmup_min_lr + (c.warmup_max_lr - c.warmup_min_lr) * gamma;
    }
    case SchedulerType::kWarmupCosineLR: {
      if (it < 0) return 0.0;  // DeepSpeed's value before the first scheduler step
      double ratio = 0;
      if (it < w) {
        ratio = c.warmup_min_ratio + warmup_gamma(it) * (1.0 - c.warmup_min_ratio);
      } else {
        // max(1, ...): where DeepSpeed would divide by zero (total == warmup), the end.
        const double t = static_cast<double>(it - w + 1) / static_cast<double>(std::max<std::int64_t>(1, c.total_num_steps - w));
        ratio = std::max(0.0, c.cos_min_ratio + (1.0 - c.cos_min_ratio) * (1.0 + std::cos(std::numbers::pi * t)) / 2.0);
      }
      return optimizer_lr_ * ratio;
    }
    case SchedulerType::kOneCycle: {
      const double total = one_cycle_total();
      if (static_cast<double>(it) < total) return c.cycle_min_lr + (c.cycle_max_lr - c.cycle_min_lr) * one_cycle_factor(it);
      if (c.decay_step_size == 0 || c.decay_lr_rate == 0) return c.cycle_min_lr;
      const double interval = (static_cast<double>(it) - total + 1.0) / static_cast<double>(c.decay_step_size);
      return c.cycle_min_lr / (1.0 + c.decay_lr_rate * interval);
    }
    case SchedulerType::kLRRangeTest: {
      double interval = static_cast<double>(it + 1) / static_cast<double>(c.lr_range_test_step_size);
      if (c.lr_range_test_staircase) interval = std::floor(interval);
      return c.lr_range_test_min_lr * (1.0 + c.lr_range_test_step_rate * interval);
    }
  }
  return optimizer_lr_;
}

std::string LrSchedule::describe() const {
  const SchedulerConfig& c = cfg_;
  const std::int64_t w = std::max<std::int64_t>(2, c.warmup_num_steps);
  switch (c.type) {
    case SchedulerType::kNone: return fmt::format("constant lr {:g}", optimizer_lr_);
    case SchedulerType::kWarmupLR:
      return fmt::format("WarmupLR: {} warmup {:g} -> {:g} over {} steps", c.warmup_type, c.warmup_min_lr, c.warmup_max_lr, w);
    case SchedulerType::kWarmupDecayLR:
      return fmt::format("WarmupDecayLR: {} warmup {:g} -> {:g} over {} steps, linear decay to 0 at step {}", c.warmup_type,
                         c.warmup_min_lr, c.warmup_max_lr, w, c.total_num_steps);
    case SchedulerType::kWarmupCosineLR:
      return fmt::format("WarmupCosineLR: lr {:g}, {} warmup over {} steps, cosine to {:g} at step {}", optimizer_lr_,
                         c.warmup_type, w, optimizer_lr_ * c.cos_min_ratio, c.total_num_steps);
    case SchedulerType::kOneCycle:
      return fmt::format("OneCycle: {:g} <-> {:g}, cycle {} + {} steps{}", c.cycle_min_lr, c.cycle_max_lr,
                         c.cycle_first_step_size,
                         c.cycle_second_step_size > 0 ? c.cycle_second_step_size : c.cycle_first_step_size,
                         c.cycle_momentum ? fmt::format(", beta1 {:g} <-> {:g}", c.cycle_max_mom, c.cycle_min_mom) : "");
    case SchedulerType::kLRRangeTest:
      return fmt::format("LRRangeTest: from {:g}, x(1 + {:g} per {} steps){}", c.lr_range_test_min_lr,
                         c.lr_range_test_step_rate, c.lr_range_test_step_size, c.lr_range_test_staircase ? ", stairs" : "");
  }
  return "?";
}

std::optional<std::array<double, 2>> LrSchedule::betas(std::int64_t step) const {
  if (cfg_.type != SchedulerType::kOneCycle || !cfg_.cycle_momentum) return std::nullopt;
  const SchedulerConfig& c = cfg_;
  const std::int64_t it = step - 1;
  // Built: (cycle_min_mom, 0.99). Then the cycle, inverse to the lr, and after it the
  // decay (when decay_step_size and decay_mom_rate are set), growing from cycle_max_mom.
  if (it < 0) return std::array<double, 2>{c.cycle_min_mom, 0.99};
  if (static_cast<double>(it) < one_cycle_total())
    return std::array<double, 2>{c.cycle_max_mom - (c.cycle_max_mom - c.cycle_min_mom) * one_cycle_factor(it), 0.99};
  if (c.decay_step_size == 0 || c.decay_mom_rate == 0) return std::array<double, 2>{c.cycle_max_mom, 0.99};
  const double interval = (static_cast<double>(it) - one_cycle_total() + 1.0) / static_cast<double>(c.decay_step_size);
  return std::array<double, 2>{c.cycle_max_mom * (1.0 + c.decay_mom_rate * interval), 0.99};
}

}  // namespace strata
