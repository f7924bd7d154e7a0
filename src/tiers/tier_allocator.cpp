#include "strata/tiers/tier_allocator.h"

#include <algorithm>

#include "strata/base/units.h"

namespace strata::tiers {

Reservation& Reservation::operator=(Reservation&& o) noexcept {
  if (this != &o) {
    release();
    owner_ = std::exchange(o.owner_, nullptr);
    tier_ = o.tier_;
    kind_ = o.kind_;
    bytes_ = std::exchange(o.bytes_, 0);
    holder_ = std::move(o.holder_);
  }
  return *this;
}

void Reservation::release() {
  if (owner_ != nullptr) owner_->give_back(tier_, kind_, bytes_, holder_);
  owner_ = nullptr;
  bytes_ = 0;
}

namespace detail {
void TierLedger::give_back(Tier tier, StateKind kind, std::uint64_t bytes, const std::string& holder) {
  std::lock_guard lock(mu);
  const std::size_t t = plan::tier_index(tier);
  used[t] -= bytes;
  kind_used[t][plan::kind_index(kind)] -= bytes;
  auto it = held[t].find(holder);
  if (it != held[t].end() && (it->second -= bytes) == 0) held[t].erase(it);
}
}  // namespace detail

TierAllocator::TierAllocator(plan::TierBytes budgets) { ledger_->budgets = budgets; }

void TierAllocator::set_budgets(plan::TierBytes budgets) {
  std::lock_guard lock(ledger_->mu);
  ledger_->budgets = budgets;
}

std::uint64_t TierAllocator::budget(Tier t) const {
  std::lock_guard lock(ledger_->mu);
  return ledger_->budgets[plan::tier_index(t)];
}

Result<Reservation> TierAllocator::reserve(Tier tier, std::uint64_t bytes, StateKind kind, std::string holder) {
  detail::TierLedger& l = *ledger_;
  std::lock_guard lock(l.mu);
  const std::size_t t = plan::tier_index(tier);
  if (l.budgets[t] != 0 && l.used[t] + bytes > l.budgets[t]) {
    std::vector<std::pair<std::string, std::uint64_t>> top(l.held[t].begin(), l.held[t].end());
    // Ties keep the ledger's name order, so a message names the same holders every time.
    std::stable_sort(top.begin(), top.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    std::string who;
    constexpr std::size_t kNamed = 4;
    std::uint64_t rest = 0;
    for (std::size_t i = 0; i < top.size(); ++i) {
      if (i < kNamed) who += fmt::format("{}{} ({})", i ? ", " : "", top[i].first, format_bytes(top[i].second));
      else rest += top[i].second;
    }
    if (top.size() > kNamed) who += fmt::format(" and {} more ({})", top.size() - kNamed, format_bytes(rest));
    return make_error(ErrorCode::kResourceExhausted, "cannot fit: need {} in {} for {}, budget {}, {} in use, held by: {}",
                      format_bytes(bytes), plan::to_string(tier), holder, format_bytes(l.budgets[t]),
                      format_bytes(l.used[t]), who.empty() ? "nothing" : who);
  }
  l.used[t] += bytes;
  l.peak[t] = std::max(l.peak[t], l.used[t]);
  std::uint64_t& ku = l.kind_used[t][plan::kind_index(kind)];
  ku += bytes;
  l.kind_peak[t][plan::kind_index(kind)] = std::max(l.kind_peak[t][plan::kind_index(kind)], ku);
  l.held[t][holder] += bytes;
  Reservation r;
  r.owner_ = ledger_;
  r.tier_ = tier;
  r.kind_ = kind;
  r.bytes_ = bytes;
  r.holder_ = std::move(holder);
  return r;
}

std::uint64_t TierAllocator::used(Tier t) const {
  std::lock_guard lock(ledger_->mu);
  return ledger_->used[plan::tier_index(t)];
}

std::uint64_t TierAllocator::peak(Tier t) const {
  std::lock_guard lock(ledger_->mu);
  return ledger_->peak[plan::tier_index(t)];
}

std::uint64_t TierAllocator::used(Tier t, StateKind k) const {
  std::lock_guard lock(ledger_->mu);
  return ledger_->kind_used[plan::tier_index(t)][plan::kind_index(k)];
}

std::uint64_t TierAllocator::peak(Tier t, StateKind k) const {
  std::lock_guard lock(ledger_->mu);
  return ledger_->kind_peak[plan::tier_index(t)][plan::kind_index(k)];
}

void TierAllocator::reset_peak() {
  std::lock_guard lock(ledger_->mu);
  ledger_->peak = ledger_->used;
  ledger_->kind_peak = ledger_->kind_used;
}

std::vector<std::pair<std::string, std::uint64_t>> TierAllocator::holders(Tier t, std::size_t n) const {
  std::lock_guard lock(ledger_->mu);
  const auto& held = ledger_->held[plan::tier_index(t)];
  std::vector<std::pair<std::string, std::uint64_t>> out(held.begin(), held.end());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  if (out.size() > n) out.resize(n);
  return out;
}

}  // namespace strata::tiers
