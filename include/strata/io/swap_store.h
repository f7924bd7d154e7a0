// SwapStore: a keyed, checksummed store of tensor and chunk shards on NVMe.
//
//   io::SwapStoreOptions o = io::SwapStoreOptions::from_config(cfg, rank, nvme_path);
//   STRATA_ASSIGN_OR_RETURN(auto store, io::SwapStore::open(o));   // unique_ptr
//   const io::SwapKey m{io::SwapKind::kOptimizer, /*tensor=*/1, /*chunk=*/7};
//   const io::SwapKey next_m{io::SwapKind::kOptimizer, 1, 8};
//   STRATA_RETURN_IF_ERROR(store->reserve({{m, n}, {next_m, n}}));  // fallocate: ENOSPC here
//   STRATA_ASSIGN_OR_RETURN(io::PooledBuffer next_buf, store->pool().acquire(n));
//   io::SwapHandle w = store->put_async(m, m_buf);                  // write back
//   io::SwapHandle r = store->get_async(next_m, next_buf.span());   // read ahead
//   STRATA_RETURN_IF_ERROR(r.wait());                               // checksum verified
//   ...                                                             // ~SwapStore removes the files
//
// Layout. Files live in `nvme_path/strata-<job>/rank<k>/`, one per kind (params.swp,
// optimizer.swp). Each record owns a fixed slot, reserved up front and preallocated
// with fallocate, so a full disk shows up in reserve(), before any state is written.
// Records whose reserved size is below `min_io_bytes` stay in host memory instead. The
// format, checks and lifecycle are described in docs/architecture.md ("Swap store"),
// Note [swap file layout] and Note [record verification] in src/io/swap_format.h.
//
// Ordering. Ops on one key take effect in the order they are submitted: a put waits
// (in put_async, without holding the store) for earlier ops on its key to finish their
// I/O, and a get waits for an earlier put. Ops on different keys run concurrently, up
// to the engine's queue depth. Every method is thread-safe.
//
// Buffers. put_async reads `src` and get_async writes `dst`; both must stay valid until
// wait() returns or the handle is destroyed. A 4 KiB-aligned span is transferred in place
// (zero-copy, the fast path); any other span goes through a pool buffer and a copy, in
// pieces of a quarter of the pool when it is larger than that (Note [pieced transfer] in
// src/io/swap_ops.cpp: synchronous in the caller, two pieces in flight). Every transfer
// is cut into aio.block_size pieces on the way to the disk.
// get's data is checked when wait() returns ok — not before.
//
// Errors. A failed put (EIO, ENOSPC, ...) marks the record lost: gets fail with
// kDataLoss until the next successful put. A failed get (I/O error, end of file,
// checksum, stale generation) leaves the record as it was. Either way every other
// record, and the store, stay usable.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "strata/base/config.h"
#include "strata/base/status.h"
#include "strata/io/buffer_pool.h"
#include "strata/io/file_engine.h"

namespace strata::io {

// One swap file per kind and rank.
enum class SwapKind : std::uint8_t { kParams = 0, kOptimizer = 1 };
inline constexpr int kSwapKinds = 2;
std::string_view to_string(SwapKind k);

// A record's name: cheap to copy and hash. `tensor` says which tensor of the chunk the
// caller means (e.g. 0 = fp32 master, 1 = exp_avg, 2 = exp_avg_sq); strata only
// compares it.
struct SwapKey {
  SwapKind kind = SwapKind::kOptimizer;
  std::uint32_t tensor = 0;
  std::uint64_t chunk = 0;

  bool operator==(const SwapKey&) const = default;
  std::string to_string() const;  // "optimizer/chunk7/tensor1"
};

struct SwapKeyHash {
  std::size_t operator()(const SwapKey& k) const noexcept;
};

struct SwapReservation {
  SwapKey key;
  std::uint64_t bytes = 0;  // the most a put of this key may write
};

// A file that a previous, crashed run left in the rank directory.
struct StaleFile {
  std::string path;
  std::uint64_t bytes = 0;
  std::string owner;  // what its header or the lock said about the writer
  bool removed = false;
};

struct SwapStoreOptions {
  std::string nvme_path;  // the store uses nvme_path/strata-<job>/rank<rank>/
  std::string job_name;   // empty: "pid<pid>" (Note [default job name])
  int rank = 0;
  std::uint64_t min_io_bytes = 1 << 20;  // smaller records stay in host memory
  std::uint64_t nvme_budget_bytes = 0;   // cap on reserved file bytes; 0 = none
  AioConfig aio;
  Backend backend = Backend::kAuto;
  // Staging buffers: record headers, and spans that are not 4 KiB aligned. The engine
  // also takes its swap-in buffers from store.pool(); see buffer_pool.h on sizing.
  std::size_t pool_bytes = std::size_t{64} << 20;
  std::chrono::milliseconds pool_timeout{30'000};
  bool register_pool = true;  // make the pool an io_uring fixed buffer
  bool pool_huge_pages = true;  // Note [huge pages] in buffer_pool.h
  std::shared_ptr<FaultInjector> faults;  // tests only

  // aio, min_io_bytes, nvme_budget and job_name from the config.
  static SwapStoreOptions from_config(const Config& cfg, int rank, std::string nvme_path);
};

struct SwapRecordInfo {
  SwapKey key;
  std::uint64_t capacity = 0;
  std::uint64_t length = 0;      // bytes of the last successful put
  std::uint64_t generation = 0;  // 0: never written
  bool on_disk = false;          // false: kept in host memory (below min_io_bytes)
  std::uint64_t offset = 0;      // the slot's offset in its file
  bool lost = false;             // the last put failed
};

namespace detail {
struct SwapOp;
class SwapStoreImpl;
}  // namespace detail

// The completion of one put or get. Move-only. Destroying it while the I/O is in
// flight waits for the I/O (the buffers are still in use).
class SwapHandle {
 public:
  SwapHandle() = default;
  SwapHandle(SwapHandle&&) noexcept = default;
  SwapHandle& operator=(SwapHandle&& other) noexcept;
  SwapHandle(const SwapHandle&) = delete;
  SwapHandle& operator=(const SwapHandle&) = delete;
  ~SwapHandle();

  bool valid() const { return op_ != nullptr; }
  // The disk part is done; wait() will not block on I/O (a get still verifies).
  bool ready() const;
  // Waits, then for a get checks the record (Note [record verification]) and copies
  // staged bytes into the caller's span. Idempotent: later calls return the same.
  // A handle destroyed without wait() only waits for its I/O: an unchecked get
  // leaves `dst` undefined.
  Status wait();

 private:
  friend class detail::SwapStoreImpl;
  explicit SwapHandle(std::shared_ptr<detail::SwapOp> op) : op_(std::move(op)) {}
  std::shared_ptr<detail::SwapOp> op_;
};

class SwapStore {
 public:
  struct Stats {
    std::size_t disk_records = 0, host_records = 0;
    std::uint64_t reserved_file_bytes[kSwapKinds] = {};  // including headers and padding
    std::uint64_t reserved_host_bytes = 0;
    std::uint64_t puts = 0, gets = 0;                 // ops submitted
    std::uint64_t bytes_written = 0, bytes_read = 0;  // payload bytes of successful ops
    std::uint64_t verify_failures = 0;                // gets rejected by a check
  };

  // Creates the rank directory, takes its lock, reports and clears stale files, starts
  // the engine (backend from options, probed in the directory) and the pool, and
  // writes both files' headers.
  static Result<std::unique_ptr<SwapStore>> open(const SwapStoreOptions& options);
  ~SwapStore();  // close(), logging an error if it fails

  // Reserves a slot per key: all or nothing. Disk records are preallocated with one
  // fallocate per file; on ENOSPC (or over nvme_budget) nothing is reserved and the
  // error names the file, offset and length. Re-reserving a key with its current size
  // is a no-op; with another size it is an error.
  Status reserve(std::span<const SwapReservation> records);
  Status reserve(std::initializer_list<SwapReservation> records) { return reserve({records.begin(), records.size()}); }
  Status reserve(const SwapKey& key, std::uint64_t bytes) { return reserve({SwapReservation{key, bytes}}); }

  // src.size() <= the reserved bytes.
  SwapHandle put_async(const SwapKey& key, std::span<const std::byte> src);
  // dst.size() == the length of the last put.
  SwapHandle get_async(const SwapKey& key, std::span<std::byte> dst);
  Status put(const SwapKey& key, std::span<const std::byte> src) { return put_async(key, src).wait(); }
  Status get(const SwapKey& key, std::span<std::byte> dst) { return get_async(key, dst).wait(); }

  Result<SwapRecordInfo> info(const SwapKey& key) const;
  Stats stats() const;

  // Waits for every op in flight, stops the engine and removes the files, the lock and
  // the directories (the job directory once no rank uses it). Later calls fail.
  Status close();

  const std::vector<StaleFile>& stale_files() const;
  const std::string& rank_dir() const;
  std::string path(SwapKind kind) const;
  // True when both files bypass the page cache (O_DIRECT); false where the filesystem
  // refused it and the store fell back to buffered I/O (logged at open).
  bool direct_io() const;
  FileEngine& engine();
  BufferPool& pool();
  std::uint64_t run_id() const;

 private:
  explicit SwapStore(std::unique_ptr<detail::SwapStoreImpl> impl);
  std::unique_ptr<detail::SwapStoreImpl> impl_;
};

// Removes what ranks that died without shutting down left under
// nvme_path/strata-<job>/: each rank directory whose lock no live process holds (Note
// [swap directory lock]) loses its swap files, its lock and itself, and the job
// directory goes once empty. A live rank's directory is left alone. strata train's
// launcher calls this after its ranks have exited, so a killed rank leaves nothing
// behind. Returns the files removed.
Result<std::vector<StaleFile>> remove_abandoned_swap(const std::string& nvme_path, const std::string& job);

}  // namespace strata::io
