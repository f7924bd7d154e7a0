#include "strata/base/aligned.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "strata/base/units.h"

namespace strata {

Result<AlignedBuffer> AlignedBuffer::allocate(std::size_t bytes, std::size_t alignment, Pages pages) {
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "alignment must be a power of two >= {}, got {}", sizeof(void*), alignment);
  }
  AlignedBuffer buf;
  if (pages == Pages::kHuge) alignment = std::max(alignment, kHugePage);
  buf.alignment_ = alignment;
  if (bytes == 0) return buf;
  void* p = nullptr;
  if (int rc = ::posix_memalign(&p, alignment, round_up(bytes, alignment)); rc != 0) {
    return make_error(ErrorCode::kResourceExhausted, "cannot allocate {} aligned to {}: {}",
                      format_bytes(bytes), alignment, std::strerror(rc));
  }
  // Advice only: where THP is off the buffer works on small pages.
  if (pages == Pages::kHuge) (void)::madvise(p, round_up(bytes, alignment), MADV_HUGEPAGE);
  buf.data_ = static_cast<std::byte*>(p);
  buf.size_ = bytes;
  return buf;
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

void AlignedBuffer::zero() {
  if (size_ != 0) std::memset(data_, 0, size_);
}

}  // namespace strata
