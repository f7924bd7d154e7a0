#include "strata/tiers/tier_allocator.h"

#include <algorithm>

#include "strata/base/units.h"

namespace strata::tiers {

Reservation& Reservation::operator=(Reservation&& o) noexcept {
  if (this != &o) {
    release();
    owner_ = std::exchange(o.owner_, nullptr);
    tier_ = o.tier_;
    bytes_ = std::exchange(o.bytes_, 0);
    holder_ = std::move(o.holder_);
  }
  return *this;
}

void Reservation::release() {
  if (owner_ != nullptr) owner_->give_back(tier_, bytes_, holder_);
  owner_ = nullptr;
  bytes_ = 0;
}

TierAllocator::TierAllocator(plan::TierBytes budgets) : budgets_(budgets) {}

void TierAllocator::set_budgets(plan::TierBytes budgets) {
  std::lock_guard lock(mu_);
  budgets_ = budgets;
}

Result<Reservation> TierAllocator::reserve(Tier tier, std::uint64_t bytes, std::string holder) {
  std::lock_guard lock(mu_);
  const std::size_t t = plan::tier_index(tier);
  if (budgets_[t] != 0 && used_[t] + bytes > budgets_[t]) {
    std::vector<std::pair<std::string, std::uint64_t>> top(held_[t].begin(), held_[t].end());
    std::sort(top.begin(), top.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    std::string who;
    for (std::size_t i = 0; i < std::min<std::size_t>(top.size(), 4); ++i) {
      who += fmt::format("{}{} ({})", i ? ", " : "", top[i].first, format_bytes(top[i].second));
    }
    return make_error(ErrorCode::kResourceExhausted, "cannot fit: need {} in {} for {}, budget {}, {} in use, held by: {}",
                      format_bytes(bytes), plan::to_string(tier), holder, format_bytes(budgets_[t]),
                      format_bytes(used_[t]), who.empty() ? "nothing" : who);
  }
  used_[t] += bytes;
  peak_[t] = std::max(peak_[t], used_[t]);
  held_[t][holder] += bytes;
  Reservation r;
  r.owner_ = this;
  r.tier_ = tier;
  r.bytes_ = bytes;
  r.holder_ = std::move(holder);
  return r;
}

void TierAllocator::give_back(Tier tier, std::uint64_t bytes, const std::string& holder) {
  std::lock_guard lock(mu_);
  const std::size_t t = plan::tier_index(tier);
  used_[t] -= bytes;
  auto it = held_[t].find(holder);
  if (it != held_[t].end() && (it->second -= bytes) == 0) held_[t].erase(it);
}

std::uint64_t TierAllocator::used(Tier t) const {
  std::lock_guard lock(mu_);
  return used_[plan::tier_index(t)];
}

std::uint64_t TierAllocator::peak(Tier t) const {
  std::lock_guard lock(mu_);
  return peak_[plan::tier_index(t)];
}

void TierAllocator::reset_peak() {
  std::lock_guard lock(mu_);
  peak_ = used_;
}

std::vector<std::pair<std::string, std::uint64_t>> TierAllocator::holders(Tier t, std::size_t n) const {
  std::lock_guard lock(mu_);
  std::vector<std::pair<std::string, std::uint64_t>> out(held_[plan::tier_index(t)].begin(),
                                                         held_[plan::tier_index(t)].end());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  if (out.size() > n) out.resize(n);
  return out;
}

}  // namespace strata::tiers
