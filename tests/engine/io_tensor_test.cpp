// aligned_empty: every swap payload starts on a 4 KiB boundary, and large ones ask for
// transparent huge pages (O_DIRECT into 4 KiB pages ran at half the speed here).
#include "engine/io_tensor.h"

#include <gtest/gtest.h>

#include "strata/tiers/memory_probe.h"
#include "support/smaps.h"

namespace strata::engine {
namespace {

TEST(AlignedEmpty, SmallTensorsAreIoAlignedViews) {
  at::Tensor t = aligned_empty(1000, at::kBFloat16);
  EXPECT_TRUE(io_aligned(t));
  EXPECT_EQ(t.numel(), 1000);
  EXPECT_EQ(t.scalar_type(), at::kBFloat16);
  t.fill_(1.5);
  EXPECT_EQ(t.to(at::kFloat).sum().item<float>(), 1500.0f);
}

TEST(AlignedEmpty, LargeTensorsSitOnHugePagesAndFreeTheirMemory) {
  const std::int64_t n = static_cast<std::int64_t>(kHugeTensorBytes / 4) + 3;  // not a whole 2 MiB
  for (int round = 0; round < 3; ++round) {  // freed each round (ASan checks the deleter)
    at::Tensor t = aligned_empty(n, at::kFloat);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data_ptr()) % AlignedBuffer::kHugePage, 0u);
    EXPECT_EQ(t.numel(), n);
    t.fill_(2.0f);
    EXPECT_EQ(t[n - 1].item<float>(), 2.0f);
    at::Tensor view = t.narrow(0, 5, 10);  // a view keeps the storage alive
    t.reset();
    EXPECT_EQ(view.sum().item<float>(), 20.0f);
    if (testing::thp_mode() == "madvise") {
      EXPECT_EQ(testing::thp_eligible(view.data_ptr()), std::optional<bool>(true));
    }
  }
  at::Tensor small = aligned_empty(1 << 10, at::kFloat);
  if (testing::thp_mode() == "madvise" && !testing::malloc_advises_huge_pages()) {
    EXPECT_NE(testing::thp_eligible(small.data_ptr()), std::optional<bool>(true));
  }
}

// The auto placement takes non-model bytes as the probe's count minus the tiers' bytes:
// a tensor on strata's own huge-page buffer must be counted like any other.
TEST(AlignedEmpty, HugePageTensorsAreCountedByTheMemoryProbe) {
  tiers::MemoryProbe::install();
  const std::int64_t n = static_cast<std::int64_t>(kHugeTensorBytes / 4) + 1000;
  const std::uint64_t before = tiers::MemoryProbe::live_bytes();
  at::Tensor t = aligned_empty(n, at::kFloat);
  EXPECT_EQ(tiers::MemoryProbe::live_bytes() - before, static_cast<std::uint64_t>(n) * 4);
  EXPECT_GE(tiers::MemoryProbe::peak_bytes(), before + static_cast<std::uint64_t>(n) * 4);
  t.reset();
  EXPECT_EQ(tiers::MemoryProbe::live_bytes(), before);
}

// Note [pinned host tensors]: only a compute device off the CPU asks for pinned host
// tensors (a CPU-only LibTorch throws on pinning); the pinned allocation itself is a
// gpu test (gpu_test.cpp).
TEST(AlignedEmpty, OnlyAComputeDeviceOffTheCpuPinsHostTensors) {
  EXPECT_EQ(host_memory_for(c10::Device(c10::kCPU)), HostMemory::kPageable);
  EXPECT_EQ(host_memory_for(c10::Device(c10::kCUDA, 0)), HostMemory::kPinned);
  at::Tensor t = aligned_empty(1000, at::kFloat, host_memory_for(c10::Device(c10::kCPU)));
  EXPECT_TRUE(io_aligned(t));
  EXPECT_FALSE(t.is_pinned());
}

}  // namespace
}  // namespace strata::engine
