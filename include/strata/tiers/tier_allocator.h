// TierAllocator: byte budgets per memory tier, with RAII reservations.
//
//   tiers::TierAllocator tiers({/*compute=*/256 << 20, /*host=*/0, /*nvme=*/0});  // 0 = no limit
//   STRATA_ASSIGN_OR_RETURN(tiers::Reservation r,
//                           tiers.reserve(Tier::kCompute, bytes, StateKind::kParams, "gathered chunk 3"));
//   ...                                  // the bytes are accounted until r is destroyed
//   tiers.peak(Tier::kCompute);          // high-water mark since reset_peak()
//   tiers.used(Tier::kHost, StateKind::kGrads);   // bytes of one kind held now
//
// Every byte of model state strata holds goes through a reservation (DESIGN §3, "Tiers
// and budgets"), which says what kind of state it is (plan::StateKind). A reservation that would exceed the budget fails with an error that
// names the need, the budget, and the biggest holders:
//   resource_exhausted: cannot fit: need 48.0 MiB in compute, budget 128.0 MiB, 96.0 MiB
//   in use, held by: gathered chunk 2 (32.0 MiB), gathered chunk 5 (32.0 MiB) and 2 more (32.0 MiB)
// (the four largest by name, the rest counted).
// The allocator only accounts; the memory itself comes from LibTorch or the I/O pool.
// Thread-safe. A reservation shares the allocator's ledger, so releasing one after its
// allocator is gone is safe (owners rarely control the order their members die in).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "strata/base/status.h"
#include "strata/plan/tier.h"

namespace strata::tiers {

using plan::StateKind;
using plan::Tier;

class TierAllocator;

namespace detail {
// The accounting behind one TierAllocator, shared with its reservations.
struct TierLedger {
  mutable std::mutex mu;
  plan::TierBytes budgets{0, 0, 0};
  plan::TierBytes used{0, 0, 0};
  plan::TierBytes peak{0, 0, 0};
  std::array<std::array<std::uint64_t, plan::kNumStateKinds>, plan::kNumTiers> kind_used{};
  std::array<std::array<std::uint64_t, plan::kNumStateKinds>, plan::kNumTiers> kind_peak{};
  std::map<std::string, std::uint64_t> held[plan::kNumTiers];

  void give_back(Tier t, StateKind k, std::uint64_t bytes, const std::string& holder);
};
}  // namespace detail

// Move-only: holds `bytes` of a tier on behalf of a named holder until destroyed.
class Reservation {
 public:
  Reservation() = default;
  Reservation(Reservation&& o) noexcept { *this = std::move(o); }
  Reservation& operator=(Reservation&& o) noexcept;
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation() { release(); }

  void release();
  std::uint64_t bytes() const { return bytes_; }
  Tier tier() const { return tier_; }
  StateKind kind() const { return kind_; }
  explicit operator bool() const { return owner_ != nullptr; }

 private:
  friend class TierAllocator;
  std::shared_ptr<detail::TierLedger> owner_;
  Tier tier_ = Tier::kCompute;
  StateKind kind_ = StateKind::kParams;
  std::uint64_t bytes_ = 0;
  std::string holder_;
};

class TierAllocator {
 public:
  explicit TierAllocator(plan::TierBytes budgets = {0, 0, 0});
  TierAllocator(const TierAllocator&) = delete;
  TierAllocator& operator=(const TierAllocator&) = delete;

  Result<Reservation> reserve(Tier tier, std::uint64_t bytes, StateKind kind, std::string holder);
  // Sets the budgets before anything is reserved (owners built before their budget is known).
  void set_budgets(plan::TierBytes budgets);

  std::uint64_t budget(Tier t) const;
  std::uint64_t used(Tier t) const;
  std::uint64_t peak(Tier t) const;
  // Of one kind: held now, and the high-water mark since reset_peak().
  std::uint64_t used(Tier t, StateKind k) const;
  std::uint64_t peak(Tier t, StateKind k) const;
  void reset_peak();
  // The `n` largest holders of a tier, largest first.
  std::vector<std::pair<std::string, std::uint64_t>> holders(Tier t, std::size_t n) const;

 private:
  std::shared_ptr<detail::TierLedger> ledger_ = std::make_shared<detail::TierLedger>();
};

}  // namespace strata::tiers
