// CopyStream: a side stream of the compute device for copies between tiers, and the
// events that order it against the compute stream.
//
//   tiers::CopyStream copies(device);   // inert for the CPU
//   std::optional<c10::Event> done = copies.run([&] { slice.copy_(host, /*non_blocking=*/true); });
//   if (done) copies.compute_waits(*done);  // before the compute stream reads `slice`
//   if (done) tiers::CopyStream::host_waits(*done);  // before the host rewrites `host`
//
// Note [copy stream]: a host-to-device copy queued on the compute stream runs after every
// kernel queued before it, so a prefetch issued while a unit computes would wait for
// that unit instead of overlapping it. On the copy stream it runs beside the compute:
// run() makes the copy stream wait for what the compute stream has queued so far (the
// destination may be memory the compute stream just released), queues the copy, and
// returns an event at its end. The compute stream waits for that event on the device,
// before the first kernel that reads the destination; the host waits for it only before
// it rewrites the source (the optimizer step, a staging buffer going back to its pool).
// Nothing here blocks the host on the hot path. Everything is LibTorch's device-generic
// c10::Stream, c10::Event and VirtualGuardImpl, so any device with streams works; the
// source must be pinned for the copy to be asynchronous (Note [pinned host tensors] in
// src/engine/io_tensor.h).
//
// For the CPU the stream is inert: run() copies synchronously and returns no event.
#pragma once

#include <functional>
#include <optional>

#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

namespace strata::tiers {

class CopyStream {
 public:
  CopyStream() = default;  // inert
  // A stream from the device's pool for a compute device off the CPU.
  explicit CopyStream(c10::Device compute);

  bool active() const { return stream_.has_value(); }
  // Runs `copy` with the copy stream current, after the work queued on the compute stream
  // so far; the event marks its end. Inert: runs `copy` and returns no event.
  std::optional<c10::Event> run(const std::function<void()>& copy) const;
  // The compute stream waits for `done` on the device (the host does not block).
  void compute_waits(const c10::Event& done) const;
  // The host waits until `done` has happened.
  static void host_waits(const c10::Event& done);

 private:
  c10::Stream compute_stream() const;

  c10::Device device_{c10::kCPU};
  std::optional<c10::Stream> stream_;
};

}  // namespace strata::tiers
