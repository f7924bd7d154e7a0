// FaultInjector: a test-only hook that makes I/O fail on purpose.
//
//   auto faults = std::make_shared<io::FaultInjector>();
//   opts.faults = faults;                                   // EngineOptions or SwapStoreOptions
//   faults->fail_next(EIO, 1, io::FaultTarget::kRead, /*skip=*/5);  // 6th read piece: EIO
//   faults->corrupt_next_read(/*byte_index=*/123);          // flips a byte of the next read
//   faults->shorten_next(2);                                // two short transfers (resubmitted)
//   faults->fail_next(EAGAIN, 3);                           // retried; the op still succeeds
//
// The engine consults the injector once per completed piece (a block_size part of an
// op), after the kernel or pread/pwrite returned, and may replace the result. So an
// injected EIO in piece 5 of a 64-piece read hits "mid-transfer": other pieces are
// already in flight, and the op must still wait for them before it completes. Both
// backends share this path, so injected faults exercise the same code on either.
// Production code never creates one; with a null injector the cost is one branch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>

namespace strata::io {

enum class FaultTarget : std::uint8_t { kAny, kRead, kWrite };

class FaultInjector {
 public:
  // The next `count` pieces matching `target`, after `skip` matching pieces pass
  // untouched, complete with -err (EIO, ENOSPC, EINTR, EAGAIN, ...).
  void fail_next(int err, int count = 1, FaultTarget target = FaultTarget::kAny, int skip = 0);
  // The next `count` matching pieces of more than 4 KiB report half their bytes (rounded
  // down to 4 KiB), as a short transfer; the engine must resubmit the rest.
  void shorten_next(int count = 1, FaultTarget target = FaultTarget::kAny);
  // Flips the bits of one byte in the buffer of the next completed read piece; the
  // byte is `byte_index` modulo the piece length.
  void corrupt_next_read(std::size_t byte_index = 0);
  // Drops every pending fault.
  void clear();

  std::uint64_t failures_injected() const;
  std::uint64_t shorts_injected() const;
  std::uint64_t corruptions_injected() const;

  // Called by the engine for every completed piece: `res` is the byte count or
  // -errno; returns the result the engine should act on. May modify `buf`.
  int on_complete(bool write, int res, std::byte* buf, std::size_t length);

 private:
  struct Rule {
    enum class Kind : std::uint8_t { kFail, kShort, kCorrupt } kind;
    FaultTarget target;
    int err = 0;
    int skip = 0;
    int count = 0;
    std::size_t byte_index = 0;
  };
  static bool matches(FaultTarget t, bool write);

  mutable std::mutex mu_;
  std::deque<Rule> rules_;
  std::uint64_t failures_ = 0, shorts_ = 0, corruptions_ = 0;
};

}  // namespace strata::io
