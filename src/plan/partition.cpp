// Partitioners; see strata/plan/partition.h.
#include "strata/plan/partition.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "strata/plan/tier.h"

namespace strata::plan {

std::string_view to_string(Tier t) {
  switch (t) {
    case Tier::kCompute: return "compute";
    case Tier::kHost: return "host";
    case Tier::kNvme: return "nvme";
  }
  return "?";
}

Tier offload_tier(OffloadDevice d) {
  switch (d) {
    case OffloadDevice::kNone: return Tier::kCompute;
    case OffloadDevice::kCpu: return Tier::kHost;
    case OffloadDevice::kNvme: return Tier::kNvme;
  }
  return Tier::kCompute;
}

std::string_view to_string(StateKind k) {
  switch (k) {
    case StateKind::kParams: return "params";
    case StateKind::kGrads: return "grads";
    case StateKind::kOptimizer: return "optimizer";
    case StateKind::kBuffers: return "buffers";
  }
  return "?";
}

namespace {

Status check_world(int world) {
  if (world < 1) return make_error(ErrorCode::kInvalidArgument, "world size must be >= 1, got {}", world);
  return ok();
}

std::uint64_t weight(const ParamInfo& p) { return p.trainable ? p.numel : 1; }

// Assigns params in `order` to the least-loaded rank (lowest rank on ties).
Partition greedy(std::span<const ParamInfo> params, std::span<const std::size_t> order, int world) {
  Partition out;
  out.owner.assign(params.size(), 0);
  out.load.assign(static_cast<std::size_t>(world), 0);
  for (std::size_t idx : order) {
    // A linear scan: world is small (ranks), and it keeps the tie rule obvious.
    auto it = std::min_element(out.load.begin(), out.load.end());
    const int rank = static_cast<int>(it - out.load.begin());
    out.owner[idx] = rank;
    *it += weight(params[idx]);
  }
  const std::uint64_t total = std::accumulate(out.load.begin(), out.load.end(), std::uint64_t{0});
  out.max_load = *std::max_element(out.load.begin(), out.load.end());
  out.imbalance = total == 0 ? 1.0
                             : static_cast<double>(out.max_load) * world / static_cast<double>(total);
  return out;
}

}  // namespace

Result<Partition> partition_greedy_in_order(std::span<const ParamInfo> params, int world) {
  STRATA_RETURN_IF_ERROR(check_world(world));
  std::vector<std::size_t> order(params.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  return greedy(params, order, world);
}

Result<Partition> partition_sorted_greedy(std::span<const ParamInfo> params, int world) {
  STRATA_RETURN_IF_ERROR(check_world(world));
  std::vector<std::size_t> order(params.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  // Stable, so equal sizes keep registration order and every rank sorts identically.
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return weight(params[a]) > weight(params[b]); });
  return greedy(params, order, world);
}

Result<std::uint64_t> alignment_elems(int world, std::uint64_t io_align_elems) {
  STRATA_RETURN_IF_ERROR(check_world(world));
  if (io_align_elems == 0) return make_error(ErrorCode::kInvalidArgument, "I/O alignment must be >= 1 element");
  const auto w = static_cast<std::uint64_t>(world);
  const std::uint64_t g = std::gcd(w, io_align_elems);
  if (io_align_elems / g > std::numeric_limits<std::uint64_t>::max() / w)
    return make_error(ErrorCode::kOutOfRange, "lcm({}, {}) overflows", world, io_align_elems);
  return w / g * io_align_elems;
}

Result<FlatSplit> split_flat(std::uint64_t numel, int world, std::uint64_t align_elems) {
  STRATA_ASSIGN_OR_RETURN(const std::uint64_t align, alignment_elems(world, align_elems));
  FlatSplit s;
  s.numel = numel;
  const std::uint64_t units = numel / align + (numel % align != 0 ? 1 : 0);
  if (units > std::numeric_limits<std::uint64_t>::max() / align)
    return make_error(ErrorCode::kOutOfRange, "padding {} elements to a multiple of {} overflows", numel, align);
  s.padded_numel = units * align;
  s.shard_numel = s.padded_numel / static_cast<std::uint64_t>(world);
  s.padding = s.padded_numel - numel;
  s.load.resize(static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) {
    const std::uint64_t begin = s.shard_numel * static_cast<std::uint64_t>(r);
    const std::uint64_t end = begin + s.shard_numel;
    s.load[static_cast<std::size_t>(r)] = numel <= begin ? 0 : std::min(end, numel) - begin;
  }
  const std::uint64_t max_load = *std::max_element(s.load.begin(), s.load.end());
  s.imbalance = numel == 0 ? 1.0 : static_cast<double>(max_load) * world / static_cast<double>(numel);
  return s;
}

}  // namespace strata::plan
