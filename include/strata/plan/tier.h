// Memory tiers and the kinds of state in them, shared by the planner's schedule and
// estimator and the tier allocator.
//
//   plan::Tier t = plan::Tier::kHost;
//   fmt::print("{}", plan::to_string(t));   // "host"
//
// The order is fastest first: compute (GPU HBM, or CPU RAM on a CPU-only machine), host
// (CPU RAM), nvme (swap files). Arrays indexed by tier use tier_index().
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "strata/base/config.h"

namespace strata::plan {

enum class Tier : std::uint8_t { kCompute = 0, kHost = 1, kNvme = 2 };
inline constexpr std::size_t kNumTiers = 3;
inline constexpr std::array<Tier, kNumTiers> kAllTiers{Tier::kCompute, Tier::kHost, Tier::kNvme};

constexpr std::size_t tier_index(Tier t) { return static_cast<std::size_t>(t); }
std::string_view to_string(Tier t);
// Where an offload setting puts state: none = compute, cpu = host, nvme = nvme.
Tier offload_tier(OffloadDevice d);

// Bytes per tier, indexed by tier_index().
using TierBytes = std::array<std::uint64_t, kNumTiers>;

// What a byte of model state is, for accounting (the estimator's table, the engine's
// reservations): parameters, gradients, optimizer state (fp32 master included), buffers
// (staging and other transient copies).
enum class StateKind : std::uint8_t { kParams = 0, kGrads = 1, kOptimizer = 2, kBuffers = 3 };
inline constexpr std::size_t kNumStateKinds = 4;
inline constexpr std::array<StateKind, kNumStateKinds> kAllStateKinds{StateKind::kParams, StateKind::kGrads,
                                                                       StateKind::kOptimizer, StateKind::kBuffers};
constexpr std::size_t kind_index(StateKind k) { return static_cast<std::size_t>(k); }
std::string_view to_string(StateKind k);

}  // namespace strata::plan
