// Whether the kernel may back an address with transparent huge pages: the
// "THPeligible" line of the /proc/self/smaps entry that holds it. With THP in
// "madvise" mode it is 1 exactly for ranges advised MADV_HUGEPAGE.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

namespace strata::testing {

// "always", "madvise" or "never": the bracketed word of THP's mode; empty if unknown.
inline std::string thp_mode() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string s((std::istreambuf_iterator<char>(in)), {});
  const auto open = s.find('['), close = s.find(']');
  return open == std::string::npos || close == std::string::npos ? "" : s.substr(open + 1, close - open - 1);
}

// Whether glibc's malloc advises huge pages itself (GLIBC_TUNABLES=glibc.malloc.hugetlb=1,
// which scripts/test sets for speed): then every large malloc is advised, and a buffer
// strata did not advise cannot be told apart by its mapping.
inline bool malloc_advises_huge_pages() {
  const char* t = std::getenv("GLIBC_TUNABLES");
  return t != nullptr && std::string(t).find("glibc.malloc.hugetlb=") != std::string::npos &&
         std::string(t).find("glibc.malloc.hugetlb=0") == std::string::npos;
}

// nullopt when no mapping holds `p` or the kernel does not report the field.
inline std::optional<bool> thp_eligible(const void* p) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  std::ifstream in("/proc/self/smaps");
  bool inside = false;
  for (std::string line; std::getline(in, line);) {
    std::uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {  // a mapping's first line
      inside = lo <= addr && addr < hi;
      continue;
    }
    if (inside && line.rfind("THPeligible:", 0) == 0) return line.find('1') != std::string::npos;
  }
  return std::nullopt;
}

}  // namespace strata::testing
