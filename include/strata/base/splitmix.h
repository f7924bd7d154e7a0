#pragma once
// splitmix64's finalizer: a fixed, platform-independent 64-bit mix. Data splits, sample
// positions and parameter seeds are derived with it so that they are the same on every
// platform and standard library (std::hash and the std distributions are not).

#include <cstdint>

namespace strata {

constexpr std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace strata
