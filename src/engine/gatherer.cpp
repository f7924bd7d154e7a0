#include "gatherer.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "io_tensor.h"
#include "strata/tiers/device.h"

namespace strata::engine {

Gatherer::Gatherer(EngineCore& core, std::function<Status()> make_room, MasterOf master, Edits edits)
    : core_(core),
      make_room_(std::move(make_room)),
      master_(std::move(master)),
      edits_(std::move(edits)),
      g_(core.chunks->size()),
      copies_(core.chunks->store().options().device) {}

Gatherer::~Gatherer() {
  // Collectives, copies and reads in flight write into storage: let them finish first.
  wait_copies();
  for (GatherRt& g : g_) {
    if (g.pending) (void)g.pending->handle.wait();
    if (g.staged) (void)g.staged->io.wait();
  }
  for (auto& h : refreshing_) (void)h.wait();
}

Status Gatherer::setup_staging() {
  const auto& o = core_.opt.param_staging;
  const std::int64_t largest =
      core_.chunks->largest_shard_elems([](const ChunkRt& k) { return k.shard_tier == Tier::kNvme; });
  if (largest == 0) return ok();
  if (largest > o.buffer_elems) {
    return make_error(ErrorCode::kInvalidArgument,
                      "zero_optimization.offload_param.buffer_size {} is smaller than the largest nvme parameter shard "
                      "({} elements): raise buffer_size, or lower strata.chunk_size",
                      o.buffer_elems, largest);
  }
  buffer_bytes_ = (static_cast<std::uint64_t>(largest) * c10::elementSize(core_.opt.compute_dtype) + kIoAlignBytes - 1) /
                  kIoAlignBytes * kIoAlignBytes;
  const auto total = buffer_bytes_ * static_cast<std::uint64_t>(o.buffer_count);
  STRATA_ASSIGN_OR_RETURN(staging_res_,
                          core_.tiers.reserve(Tier::kHost, total, StateKind::kBuffers, "nvme parameter staging pool"));
  // A GPU copies the shards out of these buffers: pinned (Note [pinned host tensors]).
  STRATA_ASSIGN_OR_RETURN(staging_, io::BufferPool::create({.budget_bytes = total,
                                                             .acquire_timeout = std::chrono::milliseconds(0),
                                                             .pin = tiers::pin_hooks_for(core_.chunks->store().options().device)}));
  return ok();
}

Status Gatherer::load(std::uint32_t c) {
  const ChunkRt& k = (*core_.chunks)[c];
  GatherRt& g = g_[c];
  if (k.shard_tier != Tier::kNvme || k.sm.gathered() || g.staged) return ok();
  reap_copies();  // a finished copy's staging buffer may be the one this read needs
  auto buf = staging_.try_acquire(buffer_bytes_);
  if (!buf) return ok();  // every buffer taken: the gather reads it (Note [nvme parameter staging])
  const std::uint64_t bytes = core_.chunks->shard_bytes(c);
  Staged s;
  s.buf = std::move(*buf);
  s.values = at::from_blob(s.buf.data(), {core_.chunks->store().shard_elems(c)}, core_.opt.compute_dtype);
  s.io = core_.swap->get_async(param_key(c), bytes_of(s.values));
  core_.account(Tier::kNvme, Tier::kHost, bytes);
  g.staged = std::move(s);
  return ok();
}

Result<tiers::Reservation> Gatherer::reserve_compute(std::uint32_t c) {
  const std::uint64_t bytes = core_.chunks->full_bytes(c);
  auto r = core_.chunks->reserve(Tier::kCompute, bytes, StateKind::kParams, c, "gathered");
  if (r) return r;
  STRATA_RETURN_IF_ERROR(make_room_());
  return core_.chunks->reserve(Tier::kCompute, bytes, StateKind::kParams, c, "gathered");
}

// Note [shard into slice].
Status Gatherer::fill_slice(std::uint32_t c, const at::Tensor& slice) {
  ChunkRt& k = (*core_.chunks)[c];
  GatherRt& g = g_[c];
  const std::uint64_t bytes = core_.chunks->shard_bytes(c);
  const auto t0 = Clock::now();
  if (k.shard_tier == Tier::kNvme) {
    if (g.staged) {
      STRATA_RETURN_IF_ERROR(g.staged->io.wait());
      Staged s = std::move(*g.staged);
      g.staged.reset();
      const at::Tensor values = s.values;
      copy_in(g, slice, values, std::move(s));
    } else {
      STRATA_RETURN_IF_ERROR(core_.chunks->load_shard(c, slice));
      core_.account(Tier::kNvme, Tier::kHost, bytes);
    }
    core_.account(Tier::kHost, Tier::kCompute, bytes);
  } else if (k.shard_from_master) {
    // Note [shard from master]: RNE, as the step's cast. With a copy stream the host
    // casts into pinned memory and the copy stream takes it from there: a copy from the
    // pageable fp32 master would block the host and cast on the device in a temporary.
    if (copies_.active()) {
      at::Tensor cast = host_empty_for(slice.device(), slice.numel(), slice.scalar_type());
      cast.copy_(master_(c));
      copy_in(g, slice, cast, std::nullopt);  // the copy holds `cast` until it has ended
    } else {
      slice.copy_(master_(c));
    }
    core_.account(k.shard_tier, Tier::kCompute, bytes);
  } else {
    copy_in(g, slice, k.shard, std::nullopt);
    core_.account(k.shard_tier, Tier::kCompute, bytes);
  }
  if (k.shard_tier != Tier::kCompute) core_.trace.add(StepTrace::kCopy, "shard->compute " + core_.chunks->name(c), t0, Clock::now());
  return ok();
}

// Note [copy stream].
void Gatherer::copy_in(GatherRt& g, const at::Tensor& slice, const at::Tensor& src, std::optional<Staged> source) {
  if (!copies_.active() || !src.is_cpu()) {  // no copy stream (the CPU), or device to device
    slice.copy_(src);
    return;
  }
  if (g.copy) {  // gathered again before the host saw its last copy end
    tiers::CopyStream::host_waits(g.copy->done);
    g.copy.reset();
  }
  std::optional<c10::Event> done = copies_.run([&] { slice.copy_(src, /*non_blocking=*/true); });
  g.copy.emplace(Copy{.done = std::move(*done), .src = src, .source = std::move(source)});
  copying_.push_back(static_cast<std::uint32_t>(&g - g_.data()));
}

void Gatherer::compute_waits(GatherRt& g) {
  if (!g.copy || g.copy->compute_waited) return;
  copies_.compute_waits(g.copy->done);
  g.copy->compute_waited = true;
}

void Gatherer::reap_copies() {
  while (!copying_.empty()) {
    std::optional<Copy>& copy = g_[copying_.front()].copy;
    if (copy && !(copy->compute_waited && copy->done.query())) return;
    copy.reset();
    copying_.pop_front();
  }
}

void Gatherer::wait_copies() {
  if (copying_.empty()) return;  // every copy is listed there
  for (GatherRt& g : g_) {
    if (!g.copy) continue;
    tiers::CopyStream::host_waits(g.copy->done);
    g.copy.reset();
  }
  copying_.clear();
}

Status Gatherer::gather(std::uint32_t c, bool prefetch) {
  ChunkRt& k = (*core_.chunks)[c];
  if (k.always_gathered() || k.sm.gathered()) return ok();
  GatherRt& g = g_[c];
  STRATA_ASSIGN_OR_RETURN(k.gathered_res, reserve_compute(c));
  core_.chunks->alloc_full(c);
  const at::Tensor& full = core_.chunks->store().full(c);
  const at::Tensor slice = core_.chunks->store().shard(full, c);
  STRATA_RETURN_IF_ERROR(fill_slice(c, slice));
  const int world = core_.comm.world();
  if (world > 1) {
    // The all-gather is queued on the compute stream, after the copy of this rank's
    // slice: with more than one rank, the copy overlaps only what was queued before.
    compute_waits(g);
    g.pending = Pending{.handle = core_.comm.all_gather(slice, full), .issued = Clock::now()};
    core_.cur.moved.net_gather += core_.chunks->shard_bytes(c) * static_cast<std::uint64_t>(world - 1);
  }
  g.prefetched = prefetch;
  g.awaiting_use = true;
  k.sm.to(ChunkState::kHold);
  if (k.residency != Residency::kPersistent) ++core_.cur.gathers;
  gathered_bytes_ += core_.chunks->full_bytes(c);
  core_.cur.peak_gathered_bytes = std::max(core_.cur.peak_gathered_bytes, gathered_bytes_);
  return ok();
}

Status Gatherer::wait(std::uint32_t c) {
  GatherRt& g = g_[c];
  // A gather issued ahead of use is a hit if its data is there when the access needs it.
  const bool ready = (!g.pending || g.pending->handle.done()) && (!g.copy || g.copy->done.query());
  compute_waits(g);
  if (g.awaiting_use) {
    g.awaiting_use = false;
    if (g.prefetched && ready && (*core_.chunks)[c].residency != Residency::kPersistent) ++core_.cur.prefetch_hits;
  }
  if (!g.pending) return ok();
  const auto t0 = Clock::now();
  Pending p = std::move(*g.pending);
  g.pending.reset();
  STRATA_RETURN_IF_ERROR(p.handle.wait());
  const auto t1 = Clock::now();
  core_.cur.gather_wait_s += std::chrono::duration<double>(t1 - t0).count();
  core_.trace.add(StepTrace::kGather, "gather " + core_.chunks->name(c), p.issued, t1);
  return ok();
}

Status Gatherer::ensure(const std::vector<std::uint32_t>& chunks) {
  for (std::uint32_t c : chunks) STRATA_RETURN_IF_ERROR(gather(c, false));
  for (std::uint32_t c : chunks) STRATA_RETURN_IF_ERROR(wait(c));
  return ok();
}

Status Gatherer::release(std::uint32_t c, bool persistent_too) {
  ChunkRt& k = (*core_.chunks)[c];
  if (!k.sm.gathered() || k.always_gathered() || k.sm.users() > 0) return ok();
  if (k.residency == Residency::kPersistent && !persistent_too) return ok();
  GatherRt& g = g_[c];
  if (g.pending) {  // never free storage under a running collective
    Pending p = std::move(*g.pending);
    g.pending.reset();
    STRATA_RETURN_IF_ERROR(p.handle.wait());
  }
  compute_waits(g);  // the storage's next user, on the compute stream, comes after the copy
  g.awaiting_use = false;
  STRATA_RETURN_IF_ERROR(take_edits(c));
  core_.chunks->free_full(c);
  gathered_bytes_ -= k.gathered_res.bytes();
  k.gathered_res.release();
  k.sm.to(ChunkState::kFree);
  return ok();
}

Status Gatherer::take_edits(std::uint32_t c) {
  if (!edits_.any || !edits_.any(c)) return ok();
  GatherRt& g = g_[c];
  if (g.staged) {  // it read the shard as it was: the next gather reads it again
    Staged s = std::move(*g.staged);
    g.staged.reset();
    STRATA_RETURN_IF_ERROR(s.io.wait());
  }
  const at::Tensor& full = core_.chunks->store().full(c);
  return edits_.take(c, core_.chunks->store().shard(full, c));
}

Status Gatherer::release_all(bool and_persistent) {
  wait_copies();  // the step may rewrite the host shards the copies read
  for (std::uint32_t c = 0; c < g_.size(); ++c) {
    if (g_[c].staged) {  // Note [nvme parameter staging]: a read no gather took
      Staged s = std::move(*g_[c].staged);
      g_[c].staged.reset();
      STRATA_RETURN_IF_ERROR(s.io.wait());
    }
    STRATA_RETURN_IF_ERROR(release(c, and_persistent));
  }
  return ok();
}

void Gatherer::refresh(std::uint32_t c) {
  const at::Tensor& full = core_.chunks->store().full(c);
  refreshing_.push_back(core_.comm.all_gather(core_.chunks->store().shard(full, c), full));
  core_.cur.moved.net_gather += core_.chunks->shard_bytes(c) * static_cast<std::uint64_t>(core_.comm.world() - 1);
}

Status Gatherer::finish_refresh() {
  Status first = ok();
  for (auto& h : refreshing_)
    if (Status st = h.wait(); !st && first) first = std::move(st);
  refreshing_.clear();
  return first;
}

}  // namespace strata::engine
