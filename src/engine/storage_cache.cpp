#include "storage_cache.h"

#include <c10/core/StorageImpl.h>

namespace strata::engine {

void StorageCache::alloc(const at::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  const std::size_t bytes = static_cast<std::size_t>(t.numel()) * t.element_size();
  if (s->nbytes() == bytes) return;
  if (auto it = free_.find(bytes); it != free_.end()) {
    s->set_data_ptr_noswap(std::move(it->second.data));
    cached_ -= bytes;
    free_.erase(it);  // its reservation goes with it
  } else {
    s->set_data_ptr_noswap(s->allocator()->allocate(bytes));
  }
  s->set_nbytes(bytes);
  in_use_ += bytes;
  peak_in_use_ = std::max(peak_in_use_, in_use_);
}

void StorageCache::free(const at::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  const std::size_t bytes = s->nbytes();
  if (bytes == 0) return;
  in_use_ -= std::min<std::uint64_t>(in_use_, bytes);
  at::DataPtr data = s->set_data_ptr(at::DataPtr(nullptr, s->device()));
  s->set_nbytes(0);
  if (cached_ + bytes > cap_) return;  // `data` frees the bytes
  auto res = tiers_.reserve(plan::Tier::kCompute, bytes, plan::StateKind::kBuffers, "storage cache");
  if (!res) return;  // the budget has no room for it
  free_.emplace(bytes, Entry{std::move(data), std::move(*res)});
  cached_ += bytes;
}

void StorageCache::release_all() {
  free_.clear();
  cached_ = 0;
}

void StorageCache::end_step() {
  cap_ = peak_in_use_;
  peak_in_use_ = in_use_;
  while (cached_ > cap_ && !free_.empty()) {
    auto largest = std::prev(free_.end());
    cached_ -= largest->first;
    free_.erase(largest);
  }
}

}  // namespace strata::engine
