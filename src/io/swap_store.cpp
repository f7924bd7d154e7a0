// Swap store lifecycle: open (directory, lock, stale files, engine, pool, file
// headers), reserve (slots and fallocate), info, close. put/get are in swap_ops.cpp.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <set>

#include "strata/base/log.h"
#include "strata/base/units.h"
#include "swap_store_impl.h"

namespace strata::io {

std::string_view to_string(SwapKind k) { return k == SwapKind::kParams ? "params" : "optimizer"; }

std::string SwapKey::to_string() const {
  return fmt::format("{}/chunk{}/tensor{}", io::to_string(kind), chunk, tensor);
}

std::size_t SwapKeyHash::operator()(const SwapKey& k) const noexcept {
  std::uint64_t h = k.chunk * 0x9E3779B97F4A7C15ull;
  h ^= (static_cast<std::uint64_t>(k.tensor) << 8 | static_cast<std::uint64_t>(k.kind)) + 0x632BE59BD9B4E019ull +
       (h << 6) + (h >> 2);
  return static_cast<std::size_t>(h);
}

SwapStoreOptions SwapStoreOptions::from_config(const Config& cfg, int rank, std::string nvme_path) {
  SwapStoreOptions o;
  o.nvme_path = std::move(nvme_path);
  o.job_name = cfg.strata.job_name;
  o.rank = rank;
  o.min_io_bytes = cfg.strata.min_io_bytes;
  o.nvme_budget_bytes = cfg.strata.nvme_budget;
  o.aio = cfg.aio;
  return o;
}

namespace detail {

// Note [default job name]: without strata.job_name a store's directory is named after its
// process. Two stores alive at once in one process (a GAN's generator and discriminator,
// each an engine offloading to the same nvme_path) would then share one directory, and
// the second would find its lock held as if by another run. Each store takes the lowest
// number no live store of the process holds: "pid<pid>" for the first, "pid<pid>.2" for
// a second alive at the same time; a process that builds engines one after another
// keeps "pid<pid>".
namespace {
std::mutex job_slots_mu;
std::set<int> job_slots_taken;
}  // namespace

JobNameSlot JobNameSlot::take() {
  std::lock_guard lock(job_slots_mu);
  int n = 1;
  while (job_slots_taken.contains(n)) ++n;
  job_slots_taken.insert(n);
  return JobNameSlot(n);
}

void JobNameSlot::give_back() {
  if (n_ == 0) return;
  std::lock_guard lock(job_slots_mu);
  job_slots_taken.erase(std::exchange(n_, 0));
}

JobNameSlot& JobNameSlot::operator=(JobNameSlot&& o) noexcept {
  if (this != &o) {
    give_back();
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

JobNameSlot::~JobNameSlot() { give_back(); }

std::string JobNameSlot::name() const {
  return n_ <= 1 ? fmt::format("pid{}", ::getpid()) : fmt::format("pid{}.{}", ::getpid(), n_);
}

Result<std::unique_ptr<SwapStoreImpl>> SwapStoreImpl::open(const SwapStoreOptions& options) {
  auto s = std::make_unique<SwapStoreImpl>();
  s->options = options;
  if (s->options.job_name.empty()) {
    s->job_slot = JobNameSlot::take();
    s->options.job_name = s->job_slot.name();
  }
  // The run id ties every header to this run (Note [record verification], check 2).
  std::random_device rd;
  s->run_id = (static_cast<std::uint64_t>(rd()) << 32 | rd()) ^
              static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  STRATA_ASSIGN_OR_RETURN(s->dir, RankDir::open(options.nvme_path, s->options.job_name, options.rank, s->run_id,
                                                &s->stale));

  EngineOptions eo;
  eo.aio = options.aio;
  eo.backend = options.backend;
  eo.probe_dir = s->dir.path();
  eo.faults = options.faults;
  STRATA_ASSIGN_OR_RETURN(FileEngine engine, FileEngine::create(eo));
  s->engine.emplace(std::move(engine));

  BufferPoolOptions po;
  po.budget_bytes = options.pool_bytes;
  po.acquire_timeout = options.pool_timeout;
  po.engine = options.register_pool ? &*s->engine : nullptr;
  po.huge_pages = options.pool_huge_pages;
  STRATA_ASSIGN_OR_RETURN(s->pool, BufferPool::create(po));

  for (int k = 0; k < kSwapKinds; ++k) {
    const auto kind = static_cast<SwapKind>(k);
    s->paths[k] = s->dir.file(std::string(to_string(kind)) + ".swp");
    STRATA_ASSIGN_OR_RETURN(s->files[k], s->engine->open(s->paths[k], {OpenMode::kTruncate}));
    STRATA_RETURN_IF_ERROR(s->write_file_header(kind));
    s->file_end_[k] = kBlock;
  }
  log::debug("swap store {}: {} backend ({}), run {:016x}", s->dir.path(), to_string(s->engine->backend()),
             s->engine->backend_reason(), s->run_id);
  return s;
}

Status SwapStoreImpl::write_file_header(SwapKind kind) {
  const int k = static_cast<int>(kind);
  FileHeader h{};
  std::memcpy(h.magic, kFileMagic, sizeof h.magic);
  h.version = kSwapFormatVersion;
  h.header_bytes = kBlock;
  h.run_id = run_id;
  h.created_unix_ns = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  h.pid = static_cast<std::uint32_t>(::getpid());
  h.rank = options.rank;
  h.kind = static_cast<std::uint8_t>(kind);
  // NUL padded; a name of 64 bytes or more is cut (the header only reports it).
  std::memcpy(h.job, options.job_name.data(), std::min(options.job_name.size(), sizeof h.job));
  STRATA_ASSIGN_OR_RETURN(PooledBuffer block, pool.acquire(kBlock));
  encode(h, block.padded_span());
  STRATA_RETURN_IF_ERROR(files[k].allocate(0, kBlock));
  return engine->write(files[k], 0, block.padded_span()).wait();
}

SwapStoreImpl::~SwapStoreImpl() {
  if (auto st = close(); !st) log::error("closing the swap store: {}", st.error());
}

Status SwapStoreImpl::close() {
  std::vector<std::shared_ptr<SwapOp>> pending;
  {
    std::lock_guard lock(mu_);
    if (closed_) return ok();
    closed_ = true;
    for (auto& [key, r] : records_) {
      if (r->writer) pending.push_back(r->writer);
      for (auto& g : r->readers) pending.push_back(g);
    }
  }
  for (auto& op : pending) op->wait_io();  // their handles still verify and report
  if (dir.path().empty()) return ok();      // open failed before it owned a directory
  for (File& f : files) f = File{};
  pool = BufferPool{};  // buffers still held elsewhere keep the arena alive
  engine.reset();       // drains and stops the workers
  std::vector<std::string> names(std::begin(paths), std::end(paths));
  return dir.remove(names);
}

Result<Record*> SwapStoreImpl::find(const SwapKey& key) {
  auto it = records_.find(key);
  if (it == records_.end()) {
    return make_error(ErrorCode::kNotFound, "swap record {} was never reserved", key.to_string());
  }
  return it->second.get();
}

Result<Record*> SwapStoreImpl::find_open(const SwapKey& key) {
  std::lock_guard lock(mu_);
  if (closed_) return make_error(ErrorCode::kFailedPrecondition, "swap store is closed");
  return find(key);
}

void SwapStoreImpl::fold(Record& r) {
  if (r.writer && r.writer->io_ready()) {
    const auto st = r.writer->pieced      ? r.writer->pieced_status
                    : r.writer->io.valid() ? r.writer->io.wait()
                                           : Status(ok());
    if (st) {
      r.generation = r.writer->generation;
      r.length = r.writer->length;
      r.lost.reset();
      bytes_written_ += r.writer->length;
    } else {
      r.lost = st.error();
    }
    r.writer.reset();
  }
  std::erase_if(r.readers, [](const std::shared_ptr<SwapOp>& op) { return op->io_ready(); });
}

void SwapStoreImpl::wait_for_conflicts(std::unique_lock<std::mutex>& lock, Record& r, bool for_put) {
  // Note [per-key order]: a put conflicts with every op on its key, a get with a put.
  // The waits run without the lock, so other keys proceed meanwhile.
  for (;;) {
    fold(r);
    std::vector<std::shared_ptr<SwapOp>> busy;
    if (r.writer) busy.push_back(r.writer);
    if (for_put) busy.insert(busy.end(), r.readers.begin(), r.readers.end());
    if (busy.empty()) return;
    lock.unlock();
    for (auto& op : busy) op->wait_io();
    lock.lock();
  }
}

Status SwapStoreImpl::reserve(std::span<const SwapReservation> records) {
  std::lock_guard lock(mu_);
  if (closed_) return make_error(ErrorCode::kFailedPrecondition, "swap store is closed");
  std::vector<const SwapReservation*> fresh;
  std::unordered_map<SwapKey, std::uint64_t, SwapKeyHash> seen;
  for (const SwapReservation& r : records) {
    if (r.bytes == 0) return make_error(ErrorCode::kInvalidArgument, "reserving 0 bytes for {}", r.key.to_string());
    if (auto [it, inserted] = seen.emplace(r.key, r.bytes); !inserted) {
      if (it->second != r.bytes) {
        return make_error(ErrorCode::kInvalidArgument, "{} reserved twice with different sizes", r.key.to_string());
      }
      continue;
    }
    if (auto it = records_.find(r.key); it != records_.end()) {
      if (it->second->capacity != r.bytes) {
        return make_error(ErrorCode::kInvalidArgument, "{} is already reserved with {} bytes, not {}",
                          r.key.to_string(), it->second->capacity, r.bytes);
      }
      continue;  // same size: already there
    }
    fresh.push_back(&r);
  }
  // Slots at each file's end, in the order given.
  std::uint64_t end[kSwapKinds];
  std::copy(std::begin(file_end_), std::end(file_end_), end);
  std::vector<std::unique_ptr<Record>> made;
  std::uint64_t host_bytes = 0;
  for (const SwapReservation* r : fresh) {
    auto rec = std::make_unique<Record>();
    rec->key = r->key;
    rec->capacity = r->bytes;
    rec->on_disk = r->bytes >= options.min_io_bytes;
    if (rec->on_disk) {
      const int k = static_cast<int>(r->key.kind);
      rec->offset = end[k];
      end[k] += slot_bytes(r->bytes);
    } else {
      STRATA_ASSIGN_OR_RETURN(rec->host, AlignedBuffer::allocate(r->bytes, 64));
      host_bytes += r->bytes;
    }
    made.push_back(std::move(rec));
  }
  const std::uint64_t total = end[0] + end[1];
  if (options.nvme_budget_bytes != 0 && total > options.nvme_budget_bytes) {
    return make_error(ErrorCode::kResourceExhausted, "swap files would need {}, over the nvme budget of {}",
                      format_bytes(total), format_bytes(options.nvme_budget_bytes))
        .with_path(dir.path())
        .with_length(total - file_end_[0] - file_end_[1]);
  }
  // One fallocate per file, all or nothing: on failure the files shrink back, so no
  // half-reserved state stays behind and the store remains usable.
  for (int k = 0; k < kSwapKinds; ++k) {
    if (end[k] == file_end_[k]) continue;
    if (auto st = files[k].allocate(file_end_[k], end[k] - file_end_[k]); !st) {
      for (int j = 0; j <= k; ++j) (void)files[j].truncate(file_end_[j]);
      return make_error(std::move(st).error().with_note(
          fmt::format("reserving {} for {} swap records", format_bytes(end[k] - file_end_[k]),
                      to_string(static_cast<SwapKind>(k)))));
    }
  }
  for (int k = 0; k < kSwapKinds; ++k) {
    stats_.reserved_file_bytes[k] += end[k] - file_end_[k];
    file_end_[k] = end[k];
  }
  for (auto& rec : made) {
    ++(rec->on_disk ? stats_.disk_records : stats_.host_records);
    records_.emplace(rec->key, std::move(rec));
  }
  stats_.reserved_host_bytes += host_bytes;
  return ok();
}

Result<SwapRecordInfo> SwapStoreImpl::info(const SwapKey& key) {
  std::lock_guard lock(mu_);
  STRATA_ASSIGN_OR_RETURN(Record * r, find(key));
  fold(*r);
  SwapRecordInfo i;
  i.key = key;
  i.capacity = r->capacity;
  i.on_disk = r->on_disk;
  i.offset = r->offset;
  i.lost = r->lost.has_value();
  if (r->on_disk) {
    i.length = r->length;
    i.generation = r->generation;
  } else {
    std::lock_guard hl(r->host_mu);
    i.length = r->length;
    i.generation = r->generation;
  }
  return i;
}

SwapStore::Stats SwapStoreImpl::stats() {
  std::lock_guard lock(mu_);
  for (auto& [key, r] : records_) fold(*r);  // count puts that completed since the last op on their key
  SwapStore::Stats s = stats_;
  s.puts = puts_;
  s.gets = gets_;
  s.bytes_written = bytes_written_;
  s.bytes_read = *bytes_read_;
  s.verify_failures = *verify_failures_;
  return s;
}

}  // namespace detail

// ---- SwapStore forwarding -----------------------------------------------------------

SwapStore::SwapStore(std::unique_ptr<detail::SwapStoreImpl> impl) : impl_(std::move(impl)) {}
SwapStore::~SwapStore() = default;

Result<std::unique_ptr<SwapStore>> SwapStore::open(const SwapStoreOptions& options) {
  STRATA_ASSIGN_OR_RETURN(auto impl, detail::SwapStoreImpl::open(options));
  return std::unique_ptr<SwapStore>(new SwapStore(std::move(impl)));
}

Status SwapStore::reserve(std::span<const SwapReservation> records) { return impl_->reserve(records); }
SwapHandle SwapStore::put_async(const SwapKey& key, std::span<const std::byte> src) {
  return impl_->put_async(key, src);
}
SwapHandle SwapStore::get_async(const SwapKey& key, std::span<std::byte> dst) { return impl_->get_async(key, dst); }
Result<SwapRecordInfo> SwapStore::info(const SwapKey& key) const { return impl_->info(key); }
SwapStore::Stats SwapStore::stats() const { return impl_->stats(); }
Status SwapStore::close() { return impl_->close(); }
const std::vector<StaleFile>& SwapStore::stale_files() const { return impl_->stale; }
const std::string& SwapStore::rank_dir() const { return impl_->dir.path(); }
std::string SwapStore::path(SwapKind kind) const { return impl_->paths[static_cast<int>(kind)]; }
bool SwapStore::direct_io() const {
  for (const File& f : impl_->files)
    if (!f.valid() || !f.direct()) return false;
  return true;
}
FileEngine& SwapStore::engine() { return *impl_->engine; }
BufferPool& SwapStore::pool() { return impl_->pool; }
std::uint64_t SwapStore::run_id() const { return impl_->run_id; }

}  // namespace strata::io
