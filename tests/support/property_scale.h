// The property tests draw kPropertyScale times fewer random cases under ASan+UBSan,
// which is about ten times slower: the same kinds of case, fewer of each.
#pragma once

namespace strata::testing {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr int kPropertyScale = 4;
#else
inline constexpr int kPropertyScale = 1;
#endif

}  // namespace strata::testing
