#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

#include <fmt/format.h>

#include "strata/tiers/copy_stream.h"
#include "strata/tiers/device.h"
#include "strata/tiers/host_heap.h"
#include "strata/tiers/memory_probe.h"
#include "strata/tiers/tier_allocator.h"

namespace strata::tiers {
namespace {

TEST(TierAllocator, AccountsReservationsAndPeaks) {
  TierAllocator a({100, 0, 0});
  {
    auto r1 = a.reserve(Tier::kCompute, 60, StateKind::kParams, "chunk 1");
    ASSERT_TRUE(r1);
    EXPECT_EQ(a.used(Tier::kCompute), 60u);
    auto r2 = a.reserve(Tier::kCompute, 40, StateKind::kGrads, "chunk 2");
    ASSERT_TRUE(r2);
    Reservation moved = std::move(*r2);
    EXPECT_EQ(a.used(Tier::kCompute), 100u);
    EXPECT_EQ(moved.kind(), StateKind::kGrads);
    EXPECT_EQ(a.used(Tier::kCompute, StateKind::kParams), 60u);
    EXPECT_EQ(a.used(Tier::kCompute, StateKind::kGrads), 40u);
    moved.release();
    EXPECT_EQ(a.used(Tier::kCompute), 60u);
    EXPECT_EQ(a.used(Tier::kCompute, StateKind::kGrads), 0u);
    auto host = a.reserve(Tier::kHost, 1ull << 40, StateKind::kOptimizer, "unlimited");
    EXPECT_TRUE(host);
  }
  EXPECT_EQ(a.used(Tier::kCompute), 0u);
  EXPECT_EQ(a.peak(Tier::kCompute), 100u);
  EXPECT_EQ(a.peak(Tier::kCompute, StateKind::kGrads), 40u);
  EXPECT_EQ(a.peak(Tier::kHost, StateKind::kOptimizer), 1ull << 40);
  a.reset_peak();
  EXPECT_EQ(a.peak(Tier::kCompute), 0u);
  EXPECT_EQ(a.peak(Tier::kCompute, StateKind::kGrads), 0u);
}

TEST(TierAllocator, OverBudgetNamesNeedBudgetAndHolders) {
  TierAllocator a({1 << 20, 0, 0});
  auto big = a.reserve(Tier::kCompute, 768 << 10, StateKind::kParams, "gathered chunk 2");
  auto small = a.reserve(Tier::kCompute, 128 << 10, StateKind::kParams, "persistent chunk 0");
  ASSERT_TRUE(big && small);
  auto fail = a.reserve(Tier::kCompute, 256 << 10, StateKind::kParams, "gathered chunk 5");
  ASSERT_FALSE(fail);
  EXPECT_EQ(fail.error().code(), ErrorCode::kResourceExhausted);
  EXPECT_EQ(fail.error().message(),
            "cannot fit: need 256.0 KiB in compute for gathered chunk 5, budget 1.0 MiB, 896.0 KiB in use, held by: "
            "gathered chunk 2 (768.0 KiB), persistent chunk 0 (128.0 KiB)");
  auto h = a.holders(Tier::kCompute, 1);
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].first, "gathered chunk 2");
  // Past the four largest, the rest are counted: what fills the tier adds up.
  std::vector<Reservation> grads;
  for (int c = 10; c < 14; ++c) {
    grads.push_back(*a.reserve(Tier::kCompute, 16 << 10, StateKind::kGrads, fmt::format("grad buffer chunk {}", c)));
  }
  auto more = a.reserve(Tier::kCompute, 256 << 10, StateKind::kParams, "gathered chunk 6");
  ASSERT_FALSE(more);
  EXPECT_NE(more.error().message().find("persistent chunk 0 (128.0 KiB), grad buffer chunk 10 (16.0 KiB), grad buffer "
                                        "chunk 11 (16.0 KiB) and 2 more (32.0 KiB)"),
            std::string::npos)
      << more.error().message();
}

// Owners do not always control the order their members die in: ZeRO-3's engine once
// destroyed its allocator before the chunks' reservations (a crash at exit). A
// reservation released after its allocator died must touch nothing else, even a new
// allocator built at the same address.
TEST(TierAllocator, ReservationMayOutliveItsAllocator) {
  alignas(TierAllocator) std::byte storage[sizeof(TierAllocator)];
  auto* a = new (storage) TierAllocator({1 << 20, 0, 0});
  auto old_res = a->reserve(Tier::kCompute, 300 << 10, StateKind::kParams, "chunk of the old engine");
  ASSERT_TRUE(old_res);
  a->~TierAllocator();
  a = new (storage) TierAllocator({1 << 20, 0, 0});  // the same address
  auto new_res = a->reserve(Tier::kCompute, 100 << 10, StateKind::kParams, "chunk of the new engine");
  ASSERT_TRUE(new_res);
  old_res->release();
  EXPECT_FALSE(*old_res);
  EXPECT_EQ(a->used(Tier::kCompute), 100u << 10);
  EXPECT_EQ(a->holders(Tier::kCompute, 4).size(), 1u);
  new_res->release();
  EXPECT_EQ(a->used(Tier::kCompute), 0u);
  a->~TierAllocator();
}

TEST(MemoryProbe, CountsTensorAllocations) {
  MemoryProbe::install();
  ASSERT_TRUE(MemoryProbe::installed());
  const std::uint64_t before = MemoryProbe::live_bytes();
  {
    at::Tensor t = at::empty({1 << 20}, at::kFloat);
    EXPECT_GE(MemoryProbe::live_bytes(), before + (4u << 20));
  }
  EXPECT_EQ(MemoryProbe::live_bytes(), before);
  // oneDNN allocates through raw_allocate, which needs the data pointer as context.
  c10::Allocator* a = c10::GetCPUAllocator();
  void* raw = a->raw_allocate(1000);
  EXPECT_EQ(MemoryProbe::live_bytes(), before + 1000);
  a->raw_deallocate(raw);
  EXPECT_EQ(MemoryProbe::live_bytes(), before);
  at::Tensor bf = at::randn({64, 64}).to(at::kBFloat16);
  EXPECT_EQ(at::matmul(bf, bf).size(0), 64);  // a oneDNN matmul
}

// Only a GPU compute device pins a buffer pool's arena, and only in a build with the GPU
// tier (gpu_test.cpp pins one on the GPU).
TEST(PinHooks, NothingIsPinnedForTheCpu) {
  EXPECT_FALSE(pin_hooks_for(c10::Device(c10::kCPU)).active());
  EXPECT_EQ(pin_hooks_for(c10::Device(c10::kCUDA, 0)).active(), detect_device().built_with_cuda);
  auto pool = io::BufferPool::create({.budget_bytes = 1 << 20, .pin = pin_hooks_for(c10::Device(c10::kCPU))});
  ASSERT_TRUE(pool) << pool.error().to_string();
  EXPECT_FALSE(pool->stats().pinned);
}

// Note [copy stream]: for the CPU the copy stream is inert: the copy runs there and then,
// and there is no event to wait for (gpu_test.cpp runs it on a GPU).
// LibTorch packs NCCL's version as major << 32 | minor << 16 | patch; decoding it as
// NCCL's own 10000 * major + ... printed 2.28.9 as "859176.96.9" on the H200.
TEST(DeviceInfo, NcclVersionIsDecodedAsLibTorchPacksIt) {
  EXPECT_EQ(nccl_version_string(8591769609ULL), "2.28.9");
  EXPECT_EQ(nccl_version_string((std::uint64_t{2} << 32) | (std::uint64_t{14} << 16) | 3), "2.14.3");
}

TEST(CopyStream, IsInertForTheCpu) {
  CopyStream copies(c10::Device(c10::kCPU));
  EXPECT_FALSE(copies.active());
  at::Tensor src = at::arange(1000, at::kFloat), dst = at::zeros({1000});
  EXPECT_FALSE(copies.run([&] { dst.copy_(src, /*non_blocking=*/true); }).has_value());
  EXPECT_TRUE(at::equal(dst, src));
  EXPECT_FALSE(CopyStream().active());
}

// Note [host heap]: a step's frees go back to the system once; a step that frees the same
// bytes again keeps them (the next step reuses them), and a heap that keeps growing is
// trimmed again.
TEST(HeapTrimPolicy, TrimsTheFirstLargeFreesAndAGrowingHeapButNotASteadyOne) {
  HeapTrimPolicy fresh;
  EXPECT_FALSE(fresh.should_trim(0));
  EXPECT_FALSE(fresh.should_trim(HeapTrimPolicy::kSlack));
  EXPECT_TRUE(fresh.should_trim(HeapTrimPolicy::kSlack + 1));

  // What a step does to glibc's heap: many buffers under the mmap threshold allocated
  // and freed, with something allocated after them still alive (`guards`).
  std::vector<void*> guards;
  auto step = [&guards](std::size_t bytes) {
    constexpr std::size_t kBlock = 64 << 10;
    std::vector<void*> blocks;
    for (std::size_t b = 0; b < bytes; b += kBlock) {
      blocks.push_back(std::malloc(kBlock));
      static_cast<volatile char*>(blocks.back())[0] = 1;
    }
    guards.push_back(blocks.back());  // the last block sits above the others: they stay in the heap
    blocks.pop_back();
    for (void* p : blocks) std::free(p);
  };
  HeapTrimPolicy policy;
  const std::uint64_t trims0 = heap_trims();
  step(std::size_t{256} << 20);
  EXPECT_GE(free_heap_bytes(), std::uint64_t{255} << 20);  // all but the last block, each with its header
  EXPECT_TRUE(policy.after_step()) << free_heap_bytes();
  EXPECT_EQ(heap_trims(), trims0 + 1);
  for (int s = 0; s < 3; ++s) {  // the same step again: its bytes come from the freed chunks
    step(std::size_t{256} << 20);
    EXPECT_FALSE(policy.after_step()) << "step " << s << ": " << free_heap_bytes() << " bytes free";
  }
  EXPECT_EQ(heap_trims(), trims0 + 1);
  step(std::size_t{768} << 20);  // a step that needs three times as much: the heap grew
  EXPECT_TRUE(policy.after_step()) << free_heap_bytes();
  EXPECT_EQ(heap_trims(), trims0 + 2);
  for (void* g : guards) std::free(g);
}

}  // namespace
}  // namespace strata::tiers
