#include "strata/tiers/memory_probe.h"

#include <algorithm>
#include <atomic>
#include <mutex>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

namespace strata::tiers {
namespace {

std::atomic<std::uint64_t> g_live{0};
std::atomic<std::uint64_t> g_peak{0};
std::atomic<bool> g_installed{false};

// What a counted allocation carries to its deleter: the inner allocation and its size.
struct Counted {
  c10::DataPtr inner;
  std::size_t bytes;
};

void counted_delete(void* ctx) {
  auto* c = static_cast<Counted*>(ctx);
  g_live.fetch_sub(c->bytes, std::memory_order_relaxed);
  delete c;  // frees the inner allocation through its own deleter
}

class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* inner) : inner_(inner) {}
  c10::DataPtr allocate(std::size_t n) const override {
    c10::DataPtr d = inner_->allocate(n);
    void* data = d.get();
    const c10::Device dev = d.device();
    const std::uint64_t now = g_live.fetch_add(n, std::memory_order_relaxed) + n;
    std::uint64_t peak = g_peak.load(std::memory_order_relaxed);
    while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
    return {data, new Counted{std::move(d), n}, &counted_delete, dev};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

 private:
  c10::Allocator* inner_;
};

}  // namespace

void MemoryProbe::install() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Never destroyed: tensors allocated through it may outlive any scope.
    static auto* counting = new CountingAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(counting, /*priority=*/100);
    g_installed = true;
  });
}

bool MemoryProbe::installed() { return g_installed.load(); }
std::uint64_t MemoryProbe::live_bytes() { return g_live.load(std::memory_order_relaxed); }
std::uint64_t MemoryProbe::peak_bytes() { return g_peak.load(std::memory_order_relaxed); }
void MemoryProbe::reset_peak() { g_peak.store(g_live.load()); }

}  // namespace strata::tiers
