// Helpers for the kernel tests: run a body once per SIMD target this machine can run,
// make arrays at unaligned offsets, fill them with random values, compare bits.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "strata/base/aligned.h"
#include "strata/kernels/dispatch.h"
#include "strata/kernels/dtype.h"

namespace strata::kernels::testing {

// Every element type of the kernels' arrays.
inline constexpr DType kAllDTypes[] = {DType::kF32, DType::kBF16, DType::kF16};

// Every target compiled in and supported here, by name (AVX3_DL, AVX3, AVX2, SSE4, SSSE3, EMU128).
inline std::vector<std::string> all_targets() {
  reset_target();
  std::vector<std::string> names;
  for (const Target& t : available_targets()) names.push_back(t.name);
  return names;
}

// Forces one target for its lifetime, and checks that the kernels really run it.
class ScopedTarget {
 public:
  explicit ScopedTarget(const std::string& name) {
    auto st = force_target(name);
    EXPECT_TRUE(st) << st.error();
    EXPECT_EQ(kernel_target().name, name);
  }
  ~ScopedTarget() { reset_target(); }
  ScopedTarget(const ScopedTarget&) = delete;
  ScopedTarget& operator=(const ScopedTarget&) = delete;
};

// Widest vector of fp32 lanes of any target here (AVX-512: 16). Tails are tested up to 2x.
constexpr std::size_t kMaxLanes = 16;

// n elements of `dtype` starting `offset` elements past a 64-byte boundary.
class TestArray {
 public:
  TestArray(DType dtype, std::size_t n, std::size_t offset) : dtype_(dtype), n_(n), offset_(offset) {
    auto buf = AlignedBuffer::allocate((n + offset + 1) * dtype_size(dtype), 64);
    EXPECT_TRUE(buf);
    buf_ = std::move(*buf);
    buf_.zero();
  }
  void* data() { return buf_.data() + offset_ * dtype_size(dtype_); }
  const void* data() const { return buf_.data() + offset_ * dtype_size(dtype_); }
  float* f32() { return static_cast<float*>(data()); }
  std::uint16_t* u16() { return static_cast<std::uint16_t*>(data()); }
  DType dtype() const { return dtype_; }
  std::size_t size() const { return n_; }
  std::size_t bytes() const { return n_ * dtype_size(dtype_); }

  // Values from the distribution, stored in this dtype (rounded RNE).
  template <class Dist>
  void fill(std::mt19937& rng, Dist dist) {
    for (std::size_t i = 0; i < n_; ++i) set(i, static_cast<float>(dist(rng)));
  }
  void set(std::size_t i, float v) {
    if (dtype_ == DType::kF32) f32()[i] = v;
    else u16()[i] = dtype_ == DType::kBF16 ? bf16_from_f32(v) : f16_from_f32(v);
  }
  float get(std::size_t i) const {
    if (dtype_ == DType::kF32) return static_cast<const float*>(data())[i];
    const std::uint16_t b = static_cast<const std::uint16_t*>(data())[i];
    return dtype_ == DType::kBF16 ? f32_from_bf16(b) : f32_from_f16(b);
  }
  std::uint32_t raw(std::size_t i) const {
    if (dtype_ == DType::kF32) return std::bit_cast<std::uint32_t>(static_cast<const float*>(data())[i]);
    return static_cast<const std::uint16_t*>(data())[i];
  }
  // A copy with the same dtype, size and offset.
  TestArray clone() const {
    TestArray c(dtype_, n_, offset_);
    if (n_) std::memcpy(c.data(), data(), bytes());
    return c;
  }
  // Bit-for-bit equality; on mismatch, a message naming the first differing element.
  ::testing::AssertionResult same_bits(const TestArray& o, const char* what) const {
    for (std::size_t i = 0; i < n_; ++i) {
      const auto* a = static_cast<const unsigned char*>(data()) + i * dtype_size(dtype_);
      const auto* b = static_cast<const unsigned char*>(o.data()) + i * dtype_size(dtype_);
      if (std::memcmp(a, b, dtype_size(dtype_)) != 0) {
        return ::testing::AssertionFailure() << what << " differs at " << i << " of " << n_ << ": " << get(i)
                                             << " (0x" << std::hex << raw(i) << ") vs reference " << o.get(i)
                                             << " (0x" << o.raw(i) << ")" << std::dec;
      }
    }
    return ::testing::AssertionSuccess();
  }

 private:
  DType dtype_;
  std::size_t n_, offset_;
  AlignedBuffer buf_;
};

// Sizes that cover empty, every tail length of every target up to 2 vectors, and a few
// multi-vector ranges.
inline std::vector<std::size_t> tail_sizes() {
  std::vector<std::size_t> s;
  for (std::size_t n = 0; n <= 2 * kMaxLanes + 1; ++n) s.push_back(n);
  s.push_back(100);
  s.push_back(1037);
  return s;
}

}  // namespace strata::kernels::testing
