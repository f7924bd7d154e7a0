#include "strata/tiers/memory_probe.h"

#include <algorithm>
#include <atomic>
#include <mutex>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include "strata/comm/torch_compat.h"

namespace strata::tiers {
namespace {

std::atomic<std::uint64_t> g_live{0};
std::atomic<std::uint64_t> g_peak{0};
std::atomic<bool> g_installed{false};

// Note [counted allocations]: every allocation carries its size in a 64-byte header in
// front of the data, so the deleter can count it down without a side table, and the
// data pointer is its own context — which c10's raw_allocate (used by oneDNN) requires.
constexpr std::size_t kHeader = 64;  // keeps the data 64-byte aligned, as c10 does

void count_up(std::uint64_t n) {
  const std::uint64_t now = g_live.fetch_add(n, std::memory_order_relaxed) + n;
  std::uint64_t peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

void counted_free(void* data) {
  if (data == nullptr) return;
  auto* base = static_cast<char*>(data) - kHeader;
  const std::size_t n = *reinterpret_cast<std::size_t*>(base);
  g_live.fetch_sub(n, std::memory_order_relaxed);
  c10::free_cpu(base);
}

class CountingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t n) STRATA_ALLOCATE_CONST override {
    if (n == 0) return {nullptr, nullptr, &counted_free, c10::Device(c10::kCPU)};
    auto* base = static_cast<char*>(c10::alloc_cpu(n + kHeader));
    *reinterpret_cast<std::size_t*>(base) = n;
    void* data = base + kHeader;
    count_up(n);
    return {data, data, &counted_free, c10::Device(c10::kCPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &counted_free; }
  STRATA_ALLOCATOR_COPY_DATA
};

}  // namespace

void MemoryProbe::install() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Never destroyed: tensors allocated through it may outlive any scope.
    static auto* counting = new CountingAllocator();
    c10::SetCPUAllocator(counting, /*priority=*/100);
    g_installed = true;
  });
}

bool MemoryProbe::installed() { return g_installed.load(); }
std::uint64_t MemoryProbe::live_bytes() { return g_live.load(std::memory_order_relaxed); }
void MemoryProbe::add_external(std::uint64_t bytes) { count_up(bytes); }
void MemoryProbe::remove_external(std::uint64_t bytes) { g_live.fetch_sub(bytes, std::memory_order_relaxed); }
std::uint64_t MemoryProbe::peak_bytes() { return g_peak.load(std::memory_order_relaxed); }
void MemoryProbe::reset_peak() { g_peak.store(g_live.load()); }

}  // namespace strata::tiers
