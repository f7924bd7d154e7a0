#include "strata/tiers/host_heap.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace strata::tiers {

void release_free_heap() {
#if defined(__GLIBC__)
  malloc_trim(0);  // Note [host heap]
#endif
}

}  // namespace strata::tiers
