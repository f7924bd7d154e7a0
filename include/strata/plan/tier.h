// Memory tiers, shared by the planner's schedule and estimator.
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

namespace strata::plan {

enum class Tier : std::uint8_t { kCompute = 0, kHost = 1, kNvme = 2 };
inline constexpr std::size_t kNumTiers = 3;
inline constexpr std::array<Tier, kNumTiers> kAllTiers{Tier::kCompute, Tier::kHost, Tier::kNvme};

constexpr std::size_t tier_index(Tier t) { return static_cast<std::size_t>(t); }
std::string_view to_string(Tier t);

// Bytes per tier, indexed by tier_index().
using TierBytes = std::array<std::uint64_t, kNumTiers>;

}  // namespace strata::plan
