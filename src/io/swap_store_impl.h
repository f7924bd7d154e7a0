// Internals of the swap store: records, in-flight ops, and the implementation class.
// swap_store.cpp has the lifecycle (open, reserve, close); swap_ops.cpp has put/get.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "strata/base/aligned.h"
#include "strata/io/swap_store.h"
#include "swap_dir.h"
#include "swap_format.h"

namespace strata::io::detail {

// One put or get. Shared by its SwapHandle and, while it may still be in flight, by its
// record (so later ops on the key can wait for it, Note [per-key order]).
struct SwapOp {
  bool is_get = false;
  IoHandle io;            // invalid for host records and ops that failed before I/O
  PooledBuffer scratch;   // record header block, then (if any) the payload's tail block
  PooledBuffer bounce;    // whole padded payload, for spans that are not 4 KiB aligned
  std::span<std::byte> dst;
  std::uint64_t length = 0;
  std::uint64_t aligned_length = 0;  // bytes read straight into dst (zero-copy path)
  std::uint64_t generation = 0;

  // What a get must find on disk (Note [record verification]).
  SwapKey key;
  std::uint64_t run_id = 0;
  std::string path;
  std::uint64_t slot_offset = 0;
  std::uint64_t slot_length = 0;
  std::shared_ptr<std::atomic<std::uint64_t>> verify_failures;
  std::shared_ptr<std::atomic<std::uint64_t>> bytes_done;

  std::mutex mu;
  bool finished = false;
  Status result = ok();

  // Note [pieced transfer]: an op whose pieces its caller drives; until `driving` is
  // false, other ops on the key wait for it. pieced_status is its outcome after that.
  bool pieced = false;
  Status pieced_status = ok();
  mutable std::mutex drive_mu;
  mutable std::condition_variable drive_cv;
  bool driving = false;  // guarded by drive_mu

  // Waits for the I/O only (other ops on the same key call this).
  void wait_io() const {
    if (pieced) {
      std::unique_lock l(drive_mu);
      drive_cv.wait(l, [this] { return !driving; });
      return;
    }
    if (io.valid()) (void)io.wait();
  }
  bool io_ready() const {
    if (pieced) {
      std::lock_guard l(drive_mu);
      return !driving;
    }
    return !io.valid() || io.ready();
  }
  // A pieced op is done: record its outcome and wake the ops waiting on its key.
  void end_pieces(Status st) {
    pieced_status = st;
    finished = true;
    result = std::move(st);
    {
      std::lock_guard l(drive_mu);
      driving = false;
    }
    drive_cv.notify_all();
  }
  // Waits, verifies a get, releases the buffers; once. Returns the op's Status.
  Status finish();
  // For a handle dropped without wait(): waits for the I/O and releases the buffers,
  // but never touches the caller's span again.
  void abandon();
  Status verify();

  static std::shared_ptr<SwapOp> done(Status st) {
    auto op = std::make_shared<SwapOp>();
    op->finished = true;
    op->result = std::move(st);
    return op;
  }
};

struct Record {
  SwapKey key;
  std::uint64_t capacity = 0;
  bool on_disk = false;
  std::uint64_t offset = 0;  // the slot, for disk records

  // Host records (below min_io_bytes): the bytes, guarded by host_mu.
  std::mutex host_mu;
  AlignedBuffer host;

  // Guarded by the store mutex.
  std::uint64_t length = 0;      // of the last successful put
  std::uint64_t generation = 0;  // of the last successful put; 0 = never written
  std::uint64_t next_generation = 0;
  std::optional<Error> lost;     // the last put failed
  std::shared_ptr<SwapOp> writer;               // the last put, until folded
  std::vector<std::shared_ptr<SwapOp>> readers;  // gets that may be in flight
};

// Note [default job name] (swap_store.cpp): one of the process's "pid<pid>" directory
// names, held while the store that took it lives.
class JobNameSlot {
 public:
  JobNameSlot() = default;
  static JobNameSlot take();
  JobNameSlot(JobNameSlot&& o) noexcept : n_(std::exchange(o.n_, 0)) {}
  JobNameSlot& operator=(JobNameSlot&& o) noexcept;
  ~JobNameSlot();
  std::string name() const;  // "pid<pid>", then "pid<pid>.2", ...

 private:
  explicit JobNameSlot(int n) : n_(n) {}
  void give_back();
  int n_ = 0;  // 0: none taken
};

class SwapStoreImpl {
 public:
  static Result<std::unique_ptr<SwapStoreImpl>> open(const SwapStoreOptions& options);
  ~SwapStoreImpl();

  Status reserve(std::span<const SwapReservation> records);
  SwapHandle put_async(const SwapKey& key, std::span<const std::byte> src);
  SwapHandle get_async(const SwapKey& key, std::span<std::byte> dst);
  Result<SwapRecordInfo> info(const SwapKey& key);
  SwapStore::Stats stats();
  Status close();

  SwapStoreOptions options;
  std::uint64_t run_id = 0;
  std::vector<StaleFile> stale;
  JobNameSlot job_slot;  // before dir: given back only after dir lets go of its lock
  RankDir dir;
  std::optional<FileEngine> engine;
  BufferPool pool;
  File files[kSwapKinds];
  std::string paths[kSwapKinds];

 private:
  // Note [per-key order]: folds a finished put into the record (generation, length or
  // lost) and forgets finished gets. Needs the store mutex.
  void fold(Record& r);
  // Waits, without the mutex, until no op conflicting with a new put (any op) or get
  // (a put) is in flight on `r`; returns with the lock held and `r` folded.
  void wait_for_conflicts(std::unique_lock<std::mutex>& lock, Record& r, bool for_put);
  Result<Record*> find(const SwapKey& key);
  // Note [pieced transfer]: an unaligned payload larger than piece_bytes() moves through
  // bounce buffers of that size, two in flight, driven by the calling thread.
  std::uint64_t piece_bytes() const;
  // The record header of a put of `length` bytes into r, encoded into scratch's first block.
  void encode_header(const Record& r, std::uint64_t generation, std::uint64_t length, std::uint64_t checksum,
                     const PooledBuffer& scratch) const;
  // A get of op.length bytes may read r (not lost, written, same length): op takes what
  // verify() checks (generation, path, slot). Needs the store mutex.
  Status bind_get(const Record& r, SwapOp& op) const;
  SwapHandle put_pieced(const SwapKey& key, Record& r, std::span<const std::byte> src);
  SwapHandle get_pieced(const SwapKey& key, Record& r, std::span<std::byte> dst);
  // find() under the store mutex, failing once the store is closed. Records are never
  // erased while open, so the pointer stays valid after the lock is dropped.
  Result<Record*> find_open(const SwapKey& key);
  Status write_file_header(SwapKind kind);

  mutable std::mutex mu_;
  bool closed_ = false;
  std::unordered_map<SwapKey, std::unique_ptr<Record>, SwapKeyHash> records_;
  std::uint64_t file_end_[kSwapKinds] = {};  // next free slot offset
  SwapStore::Stats stats_;                   // reservation part, guarded by mu_
  std::shared_ptr<std::atomic<std::uint64_t>> verify_failures_ = std::make_shared<std::atomic<std::uint64_t>>(0);
  std::shared_ptr<std::atomic<std::uint64_t>> bytes_read_ = std::make_shared<std::atomic<std::uint64_t>>(0);
  std::atomic<std::uint64_t> puts_{0}, gets_{0}, bytes_written_{0};
};

}  // namespace strata::io::detail
