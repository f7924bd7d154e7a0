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
  // Huge: whole 4 KiB pages, not whole huge pages. The partial last huge page is then
  // not advised and stays on small pages, instead of faulting in up to 2 MiB unused.
  const std::size_t size = round_up(bytes, pages == Pages::kHuge ? std::size_t{4096} : alignment);
  void* p = nullptr;
  if (int rc = ::posix_memalign(&p, alignment, size); rc != 0) {
    return make_error(ErrorCode::kResourceExhausted, "cannot allocate {} aligned to {}: {}",
                      format_bytes(bytes), alignment, std::strerror(rc));
  }
  // Advice only: where THP is off the buffer works on small pages.
  if (pages == Pages::kHuge) (void)::madvise(p, size, MADV_HUGEPAGE);
  buf.data_ = static_cast<std::byte*>(p);
  buf.size_ = bytes;
  return buf;
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

void AlignedBuffer::zero() {
  if (size_ != 0) std::memset(data_, 0, size_);
}

}  // namespace strata
