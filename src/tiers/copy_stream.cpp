#include "strata/tiers/copy_stream.h"

#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "strata/comm/torch_compat.h"

namespace strata::tiers {

CopyStream::CopyStream(c10::Device compute) : device_(compute) {
  if (compute.is_cpu()) return;
  c10::impl::VirtualGuardImpl impl(compute.type());
  if (!device_.has_index()) device_ = impl.getDevice();  // "cuda": the current one
  stream_ = impl.getStreamFromGlobalPool(device_, /*isHighPriority=*/false);
}

c10::Stream CopyStream::compute_stream() const { return c10::impl::VirtualGuardImpl(device_.type()).getStream(device_); }

std::optional<c10::Event> CopyStream::run(const std::function<void()>& copy) const {
  if (!stream_) {
    copy();
    return std::nullopt;
  }
  c10::Event queued(device_.type());
  queued.record(compute_stream());
  queued.block(*stream_);
  {
    c10::StreamGuard on_copy_stream(*stream_);
    copy();
  }
  c10::Event done(device_.type());
  done.record(*stream_);
  return done;
}

void CopyStream::compute_waits(const c10::Event& done) const { done.block(compute_stream()); }

void CopyStream::host_waits(const c10::Event& done) { torch_compat::synchronize_event(done); }

}  // namespace strata::tiers
