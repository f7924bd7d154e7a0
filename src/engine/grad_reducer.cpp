#include "grad_reducer.h"

#include <algorithm>

#include "io_tensor.h"
#include "strata/base/units.h"
#include "shard_state.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

namespace strata::engine {
namespace {

// Before AccumulateGrad writes into param.grad (a view of the chunk's buffer).
class BufferHook : public torch::autograd::FunctionPreHook {
 public:
  BufferHook(std::function<void()> activity, GradReducer* r, std::uint32_t param)
      : activity_(std::move(activity)), r_(r), param_(param) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    activity_();
    r_->ensure_buffer(r_->chunk_of(param_));
    r_->bind_grad(param_);
    return grads;
  }

 private:
  std::function<void()> activity_;
  GradReducer* r_;
  std::uint32_t param_;
};

// After AccumulateGrad has added this backward's gradient into param.grad.
class ReadyHook : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(GradReducer* r, std::uint32_t param) : r_(r), param_(param) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    r_->on_grad_ready(param_);
    return outputs;
  }

 private:
  GradReducer* r_;
  std::uint32_t param_;
};

}  // namespace

GradReducer::GradReducer(EngineCore& core) : core_(core), copies_(core.chunks->store().options().device) {
  const ChunkStore& store = core.chunks->store();
  grads_.resize(core.chunks->size());
  had_grad_.assign(store.params().size(), 0);
  for (std::uint32_t i = 0; i < store.params().size(); ++i)
    if (store.params()[i].requires_grad()) ++grads_[store.layout().where[i].chunk].expected;
  // Note [reductions in one order]: the trainable chunks, last first.
  for (std::uint32_t c = static_cast<std::uint32_t>(grads_.size()); c-- > 0;)
    if (grads_[c].expected > 0) fixed_order_.push_back(c);
}

GradReducer::~GradReducer() {
  // Reductions, copies and writes still in flight use buffers this object owns: wait for them.
  for (std::uint32_t c : order_) (void)grads_[c].op->handle.wait();
  for (const Landing& l : landings_) tiers::CopyStream::host_waits(l.done);
  for (Spill& s : spills_)
    for (auto& h : s.io) (void)h.wait();
}

Status GradReducer::setup(std::function<void()> on_activity) {
  ChunkRuntime& chunks = *core_.chunks;
  ChunkStore& store = chunks.store();
  // Note [reused staging]: the nvme chunks' host shards, one at a time being completed
  // and kSpillsInFlight being written, plus the read-back of an earlier micro-step.
  const at::ScalarType dtype = core_.opt.grad_shard_dtype;  // strata.gradient_shard_dtype
  const std::uint64_t elem_bytes = c10::elementSize(dtype);
  spill_buffers_.configure(chunks.largest_shard_elems([](const ChunkRt& k) { return k.grads_on_nvme; }), dtype,
                           host_memory_for(store.options().device), kSpillsInFlight + 2, [this](std::uint64_t bytes) {
    return core_.tiers.reserve(Tier::kHost, bytes, StateKind::kGrads, "grad shard");
  });
  for (std::uint32_t c = 0; c < chunks.size(); ++c) {
    if (!chunks[c].trainable) continue;
    ChunkGrads& g = grads_[c];
    if (chunks[c].grads_on_nvme) {  // the record holds it; the host shard is made per backward
      const std::uint64_t record_bytes = static_cast<std::uint64_t>(store.shard_elems(c)) * elem_bytes;
      STRATA_ASSIGN_OR_RETURN(g.record_res, chunks.reserve(Tier::kNvme, record_bytes, StateKind::kGrads, c, "grad record"));
      continue;
    }
    const Tier step = chunks.step_tier(c);
    // Note [gradients kept on compute]: the shard stays where the reduction lands.
    const Tier home = chunks[c].grads_on_compute ? Tier::kCompute : step;
    const std::int64_t n = store.shard_elems(c);
    if (!scatter_mode()) {
      // The buffer lives for good; stage 0-1 gradients accumulate in it.
      STRATA_RETURN_IF_ERROR(reserve_buffer(c));
      if (step == Tier::kCompute) {
        g.shard = store.shard(store.grad(c), c);
        continue;
      }
    }
    // fp32 by default: micro-steps accumulate in it without rounding, and the kernels
    // read it as the optimizer's own precision. bf16 halves it (grad_shard_dtype).
    STRATA_ASSIGN_OR_RETURN(g.shard_res, chunks.reserve(home, static_cast<std::uint64_t>(n) * elem_bytes,
                                                        StateKind::kGrads, c, "grad shard"));
    // Off the compute tier, a GPU's gradients come to it: pinned (Note [pinned host tensors]).
    g.shard = home == Tier::kCompute ? at::zeros({n}, at::TensorOptions(dtype).device(chunks.device_of(home)))
                                     : host_empty_for(store.options().device, n, dtype).zero_();
  }
  for (std::uint32_t i = 0; i < store.params().size(); ++i) {
    const at::Tensor& p = store.params()[i];
    if (!p.requires_grad()) continue;
    auto acc = torch::autograd::impl::grad_accumulator(p);
    acc->add_pre_hook(std::make_unique<BufferHook>(on_activity, this, i));
    acc->add_post_hook(std::make_unique<ReadyHook>(this, i));
    accumulators_.push_back(std::move(acc));  // the parameter holds it only weakly
  }
  // Stages 2-3: no buffer has bytes until its chunk's first gradient (Note [the engine's
  // gradients]).
  if (scatter_mode())
    for (std::uint32_t c = 0; c < chunks.size(); ++c) unbind_grads(c);
  return ok();
}

std::optional<std::uint32_t> GradReducer::oldest_unreduced() const {
  auto it = std::find_if(live_order_.begin(), live_order_.end(), [&](std::uint32_t b) { return !grads_[b].op; });
  return it == live_order_.end() ? std::nullopt : std::optional<std::uint32_t>(*it);
}

Status GradReducer::reserve_buffer(std::uint32_t c) {
  ChunkGrads& g = grads_[c];
  const std::uint64_t bytes = core_.chunks->full_bytes(c);
  auto r = core_.chunks->reserve(Tier::kCompute, bytes, StateKind::kGrads, c, "grad buffer");
  if (!r) {
    // Buffers whose reductions are in flight free their room once they land; the
    // storage cache gives back what it keeps.
    STRATA_RETURN_IF_ERROR(drain());
    core_.storage.release_all();
    r = core_.chunks->reserve(Tier::kCompute, bytes, StateKind::kGrads, c, "grad buffer");
  }
  // Note [partial buffers make room]: buffers still waiting for some of their gradients
  // (two forwards before one backward: a chunk's parameters get theirs when the first
  // forward's backward reaches them) are reduced now with what they hold, oldest first,
  // as the bucket cap does (Note [gradient bytes in flight]); the rest of their
  // gradients land in fresh buffers, reduced again later. With one rank only: with more,
  // in one fixed order (stage 2, Note [reductions in one order]) or at access ends (stage
  // 3), an early reduction would be this rank's own decision, so the budget must hold the
  // buffers as they come.
  while (!r && reduces_early()) {
    const std::optional<std::uint32_t> oldest = oldest_unreduced();
    if (!oldest) break;
    STRATA_RETURN_IF_ERROR(launch(*oldest));
    STRATA_RETURN_IF_ERROR(drain());
    r = core_.chunks->reserve(Tier::kCompute, bytes, StateKind::kGrads, c, "grad buffer");
  }
  if (!r && at_access_ends() && live_buffer_bytes_ > 0) {
    // Say why the buffers pile up: the holders listed are only the largest few.
    return std::unexpected(std::move(r).error().with_note(fmt::format(
        "{} of gradient buffers wait for the last backward of the units that hold their chunks (at stage 3 with {} "
        "ranks every rank reduces a chunk there: Note [reductions at access ends]; modules called again before the "
        "backward, as in two forwards before one backward, keep them until then); raise the compute budget",
        format_bytes(live_buffer_bytes_), core_.comm.world())));
  }
  if (!r) return std::unexpected(std::move(r).error());
  g.buffer_res = std::move(*r);
  const at::Tensor& buf = core_.chunks->store().grad(c);
  core_.storage.alloc(buf);
  buf.zero_();
  g.live = true;
  live_buffer_bytes_ += bytes;
  if (scatter_mode()) live_order_.push_back(c);
  return ok();
}

Status GradReducer::begin_backward(bool boundary, double inv_scale) {
  boundary_ = boundary;
  inv_scale_ = inv_scale;
  for (ChunkGrads& g : grads_) {
    g.pending = g.expected;
    g.launched = false;
    g.ready = false;
    g.complete = false;
  }
  next_in_order_ = 0;
  ready_order_.clear();
  return predict_order();
}

// Note [the engine's gradients]: each trainable parameter's .grad is a view of its
// chunk's gradient buffer, which AccumulateGrad adds into. The caller's code may drop it
// (model.zero_grad(), whose set_to_none is torch 2's default, or p.grad = None) or replace
// it; the next gradient would then land in a tensor of autograd's own that no reduction
// reads, and the engine would step without it. So the view is bound again just before
// every accumulation, starting from what the caller left, as autograd would add into it:
// a tensor the caller set is copied in; a dropped gradient starts from zero at stages
// 0-1, where the buffer holds this rank's sum so far (as torch, and as zero_grad(False)
// zeroing the view in place). At stages 2-3 a buffer loses its bytes once reduced, its
// sum gone to the shards: the chunk's parameters then have no .grad (None, as under
// DeepSpeed's ZeRO-2/3), never a view of freed memory, which any read (p.grad.zero_(), a
// norm) would have touched at address 0; dropping it changes nothing. The engine clears
// its gradients at each step, and Engine::zero_grad discards uncounted backwards.
std::uint32_t GradReducer::chunk_of(std::uint32_t param) const {
  return core_.chunks->store().layout().where[param].chunk;
}

void GradReducer::bind_grad(std::uint32_t param) {
  const ChunkStore& store = core_.chunks->store();
  const at::Tensor& p = store.params()[param];
  const at::Tensor& buf = store.grad(chunk_of(param));
  const at::Tensor& g = p.grad();
  const bool bound = g.defined() && g.storage().unsafeGetStorageImpl() == buf.storage().unsafeGetStorageImpl() &&
                     g.storage_offset() == static_cast<std::int64_t>(store.layout().where[param].offset_elems);
  if (bound) return;
  at::Tensor view = store.param_view(buf, param);
  if (g.defined()) view.copy_(g);
  else if (!scatter_mode()) view.zero_();
  p.mutable_grad() = view;
}

void GradReducer::unbind_grads(std::uint32_t c) {
  const ChunkStore& store = core_.chunks->store();
  for (const plan::ParamSlot& slot : store.chunk(c).params) store.params()[slot.param].mutable_grad() = at::Tensor();
}

void GradReducer::ensure_buffer(std::uint32_t c) {
  // Note [late gradients]: a gradient for a chunk whose reduction is already on its way
  // (reduced early by the bucket cap below, or when a unit's backward ended while an
  // enclosing unit that shares the chunk still runs) must not land in the buffer being
  // reduced. That reduction lands first, then the gradient starts a fresh buffer, reduced
  // again later. Waiting here, instead of taking a fresh buffer only if the reduction
  // happened to have landed already, keeps every rank's collectives in the same order.
  while (grads_[c].live && grads_[c].op) core_.errors.check(complete_oldest());
  if (grads_[c].live) return;
  core_.errors.check(poll());  // buffers whose reductions have landed go first
  // Note [gradient bytes in flight]: the buffers alive at once stay within
  // reduce_bucket_size elements (a single chunk larger than that excepted). First the
  // oldest reductions land; if none is in flight, the oldest buffer is reduced now with
  // the gradients it has, and the rest of its gradients land in a fresh buffer that is
  // reduced again later (a reduction is linear, so the sum is the same).
  // With more than one rank at stages 2-3 only the first (Note [reductions in one
  // order], Note [reductions at access ends]): a reduction out of that order or off those
  // points would be this rank's alone, so the cap may be exceeded while a chunk waits for
  // its turn.
  const std::uint64_t cap = core_.opt.reduce_bucket_size * c10::elementSize(core_.opt.compute_dtype);
  while (live_buffer_bytes_ + core_.chunks->full_bytes(c) > cap) {
    if (!order_.empty()) {
      core_.errors.check(complete_oldest());
      continue;
    }
    if (!reduces_early()) break;
    const std::optional<std::uint32_t> oldest = oldest_unreduced();
    if (!oldest) break;
    core_.errors.check(launch(*oldest));
  }
  core_.errors.check(reserve_buffer(c));
}

void GradReducer::on_grad_ready(std::uint32_t param) {
  had_grad_[param] = 1;
  const std::uint32_t c = core_.chunks->store().layout().where[param].chunk;
  if (--grads_[c].pending > 0) return;
  if (!grads_[c].ready) ready_order_.push_back(c);
  grads_[c].ready = true;
  if (!core_.opt.overlap_comm || at_access_ends()) return;  // Note [reductions at access ends]
  if (scatter_mode() || boundary_) core_.errors.check(launch(c));
}

// In one fixed order (stage 2) a chunk is reduced when it is ready or backward ends: the
// schedule's point is this rank's trace's.
Status GradReducer::reduce_now(std::uint32_t c) { return scatter_mode() && !in_fixed_order() ? launch(c) : ok(); }

Status GradReducer::launch(std::uint32_t c) {
  ChunkGrads& g = grads_[c];
  if (at_access_ends()) {  // Note [reductions at access ends]: once in a backward, zeros if need be
    if (g.launched || g.expected == 0) return ok();
    g.launched = true;
    return scatter(c, /*even_if_empty=*/true);
  }
  if (!in_fixed_order()) return scatter(c);
  if (g.launched) return ok();
  g.launched = true;
  if (!scatter_mode() && core_.comm.world() == 1) {
    slice_to_host(c);
    return ok();
  }
  // Note [reductions in one order]
  while (next_in_order_ < fixed_order_.size() && grads_[fixed_order_[next_in_order_]].launched) {
    const std::uint32_t k = fixed_order_[next_in_order_++];
    STRATA_RETURN_IF_ERROR(scatter_mode() ? scatter(k, /*even_if_empty=*/true) : all_reduce(k));
  }
  return ok();
}

Status GradReducer::all_reduce(std::uint32_t c) {
  const std::uint64_t world = static_cast<std::uint64_t>(core_.comm.world());
  grads_[c].op = InFlight{.handle = core_.comm.all_reduce(core_.chunks->store().grad(c), comm::ReduceOp::kAvg),
                          .issued = Clock::now()};
  order_.push_back(c);
  core_.cur.moved.net_all_reduce += core_.chunks->full_bytes(c) * 2 * (world - 1) / world;
  return ok();
}

Status GradReducer::scatter(std::uint32_t c, bool even_if_empty) {
  ChunkGrads& g = grads_[c];
  if (g.op) return ok();  // already on its way
  // A chunk none of whose parameters got a gradient on this rank, in one fixed order:
  // other ranks' may have, and they reduce it now, so this rank adds zeros.
  if (!g.live && even_if_empty) STRATA_RETURN_IF_ERROR(reserve_buffer(c));
  if (!g.live) return ok();  // nothing accumulated
  const at::Tensor& buf = core_.chunks->store().grad(c);
  const int world = core_.comm.world();
  ChunkStateMachine& sm = (*core_.chunks)[c].sm;
  if (sm.state() == ChunkState::kHoldAfterBwd) sm.to(ChunkState::kReadyForReduce);
  // In place: the result lands in this rank's own slice of the buffer (with one rank,
  // the buffer is that slice), so a reduction needs no memory beyond the buffer.
  InFlight f{.out = core_.chunks->store().shard(buf, c), .issued = Clock::now()};
  if (world > 1) {
    f.handle = core_.comm.reduce_scatter(buf, f.out, comm::ReduceOp::kAvg);
    core_.cur.moved.net_reduce_scatter += core_.chunks->shard_bytes(c) * static_cast<std::uint64_t>(world - 1);
  }
  g.op = std::move(f);
  order_.push_back(c);
  return ok();
}

Status GradReducer::complete(std::uint32_t c) {
  ChunkGrads& g = grads_[c];
  InFlight f = std::move(*g.op);
  g.op.reset();
  STRATA_RETURN_IF_ERROR(f.handle.wait());
  const auto t1 = Clock::now();
  core_.trace.add(StepTrace::kReduceScatter,
                  fmt::format("{} {}", scatter_mode() ? "reduce-scatter" : "all-reduce", core_.chunks->name(c)),
                  f.issued, t1);
  if (!scatter_mode()) {
    slice_to_host(c);
    return ok();
  }
  // Land it in the shard where the step runs: a compute->host copy when the
  // optimizer state is off the compute tier (from a GPU, a copy into pinned host memory
  // first, Note [pinned host tensors]: add_ does not mix devices).
  STRATA_RETURN_IF_ERROR(ensure_shard(c));
  if (f.out.device() == g.shard.device()) g.shard.add_(f.out);
  else land_on_host(c, f.out);
  // Kept on compute, it goes to the host at the step (Note [gradients kept on compute]).
  if (!(*core_.chunks)[c].grads_on_compute) {
    core_.account(Tier::kCompute, core_.chunks->step_tier(c), core_.chunks->shard_bytes(c));
  }
  f.out = at::Tensor();
  core_.storage.free(core_.chunks->store().grad(c));
  unbind_grads(c);  // Note [the engine's gradients]
  g.buffer_res.release();
  g.live = false;
  live_buffer_bytes_ -= core_.chunks->full_bytes(c);
  std::erase(live_order_, c);
  ChunkStateMachine& sm = (*core_.chunks)[c].sm;
  if (sm.state() == ChunkState::kReadyForReduce) sm.to(ChunkState::kHoldAfterBwd);
  // Every gradient of the chunk is in: an nvme chunk's shard goes to its record now
  // (again, after a parameter's second accumulation: Note [gradients on nvme]).
  if (g.pending <= 0 && (*core_.chunks)[c].grads_on_nvme) return spill(c);
  return ok();
}

// Note [gradients on nvme].
Status GradReducer::ensure_shard(std::uint32_t c) {
  ChunkGrads& g = grads_[c];
  if (g.shard.defined()) return ok();
  STRATA_ASSIGN_OR_RETURN(StagingCache::Buffer b, spill_buffers_.take());
  g.shard = b.view(core_.chunks->store().shard_elems(c)).zero_();
  g.shard_full = std::move(b.full);
  g.shard_res = std::move(b.res);
  return ok();
}

Status GradReducer::spill(std::uint32_t c) {
  ChunkGrads& g = grads_[c];
  if (g.complete && !g.shard.defined()) return ok();  // written, and nothing came since
  if (g.complete) {
    // A gradient after the chunk was complete: a parameter whose AccumulateGrad ran twice
    // in this backward (a tied weight used inside a reentrant checkpoint accumulates in
    // the checkpoint's nested backward and again in the outer one). The sum so far is in
    // the record, maybe still being written: it is read back and added, as an earlier
    // micro-step's is.
    STRATA_RETURN_IF_ERROR(wait_spills(0));
  }
  g.complete = true;
  add_landed(true);  // Note [gradients to host]: its shard must be whole before it is written
  STRATA_RETURN_IF_ERROR(ensure_shard(c));  // a chunk that got no gradient: zeros
  const std::uint64_t bytes = bytes_of(g.shard).size();
  // One record per optimizer sub-group, in the layout the step reads (Note [optimizer
  // sub-groups] in shard_state.h).
  const std::vector<ElemRange> groups = sub_groups(g.shard.numel(), core_.opt.optim_pipeline.sub_group_elems);
  auto part = [&groups](const at::Tensor& t, std::size_t i) { return t.narrow(0, groups[i].begin, groups[i].size()); };
  if (g.in_record) {  // an earlier micro-step of this window: add its sum
    STRATA_ASSIGN_OR_RETURN(StagingCache::Buffer read_back, spill_buffers_.take());
    const at::Tensor before = read_back.view(g.shard.numel());
    std::vector<io::SwapHandle> reads;
    for (std::size_t i = 0; i < groups.size(); ++i)
      reads.push_back(core_.swap->get_async(grad_key(c, static_cast<std::uint32_t>(i)), bytes_of(part(before, i))));
    for (auto& h : reads)
      if (Status st = h.wait(); !st)
        return make_error(std::move(st).error().with_note("the gradient shard of " + core_.chunks->name(c)));
    core_.account(Tier::kNvme, Tier::kHost, bytes);
    g.shard.add_(before);
    spill_buffers_.give(std::move(read_back));
  }
  if (boundary_) {
    STRATA_ASSIGN_OR_RETURN(g.stats, shard_stats(g.shard, inv_scale_));
  }
  STRATA_RETURN_IF_ERROR(wait_spills(kSpillsInFlight - 1));
  Spill sp{.chunk = c, .shard = std::move(g.shard), .full = std::move(g.shard_full), .res = std::move(g.shard_res)};
  g.shard = at::Tensor();
  g.shard_full = at::Tensor();
  for (std::size_t i = 0; i < groups.size(); ++i)
    sp.io.push_back(core_.swap->put_async(grad_key(c, static_cast<std::uint32_t>(i)), bytes_of(part(sp.shard, i))));
  core_.account(Tier::kHost, Tier::kNvme, bytes);
  spills_.push_back(std::move(sp));
  g.in_record = true;
  return ok();
}

Status GradReducer::wait_spills(std::size_t keep) {
  while (spills_.size() > keep) {
    Spill sp = std::move(spills_.front());
    spills_.pop_front();
    for (auto& h : sp.io)
      if (Status st = h.wait(); !st)
        return make_error(std::move(st).error().with_note("the gradient shard of " + core_.chunks->name(sp.chunk)));
    spill_buffers_.give({.full = std::move(sp.full), .res = std::move(sp.res)});
  }
  return ok();
}

Result<kernels::GradStats> GradReducer::local_stats(std::uint32_t c, double inv_scale) const {
  const ChunkGrads& g = grads_[c];
  if ((*core_.chunks)[c].grads_on_nvme) {
    if (!g.stats) {
      return make_error(ErrorCode::kFailedPrecondition, "step at an accumulation boundary without a backward ({})",
                        core_.chunks->name(c));
    }
    return *g.stats;
  }
  return shard_stats(g.shard, inv_scale);
}

std::optional<at::Tensor> GradReducer::tensor_partials(std::uint32_t c) const {
  const ChunkGrads& g = grads_[c];
  if ((*core_.chunks)[c].grads_on_nvme || !g.shard.defined() || !stats_by_tensor_ops(g.shard)) return std::nullopt;
  return tensor_grad_partials(g.shard);
}

// The fused prologue over a shard in host memory; tensor ops where the step takes them
// (a shard on a GPU, or EngineOptions::host_step).
bool GradReducer::stats_by_tensor_ops(const at::Tensor& shard) const {
  return !shard.device().is_cpu() || core_.opt.host_step == EngineOptions::StepKernels::kTensorOps;
}

Result<kernels::GradStats> GradReducer::shard_stats(const at::Tensor& shard, double inv_scale) const {
  if (stats_by_tensor_ops(shard)) return tensor_grad_stats(shard, inv_scale);
  STRATA_ASSIGN_OR_RETURN(kernels::DType dt, kernel_dtype(shard.scalar_type()));
  return kernels::grad_prologue(shard.data_ptr(), dt, static_cast<std::size_t>(shard.numel()), inv_scale,
                                core_.pool.get());
}

// Note [gradients to host].
void GradReducer::land_on_host(std::uint32_t c, const at::Tensor& out) {
  at::Tensor host = host_empty_for(out.device(), out.numel(), out.scalar_type());
  std::optional<c10::Event> done = copies_.run([&] { host.copy_(out, /*non_blocking=*/true); });
  if (!done) {  // no copy stream: the copy has run
    grads_[c].shard.add_(host);
    return;
  }
  copies_.compute_waits(*done);  // the buffer's memory is used again on the compute stream
  landings_.push_back({.chunk = c, .host = std::move(host), .done = std::move(*done)});
  add_landed(false);
}

void GradReducer::add_landed(bool every) {
  while (!landings_.empty()) {
    Landing& l = landings_.front();
    if (!every && landings_.size() <= kLandingsInFlight && !l.done.query()) return;
    tiers::CopyStream::host_waits(l.done);
    grads_[l.chunk].shard.add_(l.host);
    landings_.pop_front();
  }
}

Status GradReducer::complete_oldest() {
  const std::uint32_t c = order_.front();
  order_.pop_front();
  return complete(c);
}

Status GradReducer::poll() {
  while (!order_.empty() && grads_[order_.front()].op->handle.done()) STRATA_RETURN_IF_ERROR(complete_oldest());
  add_landed(false);
  return ok();
}

Status GradReducer::end_backward() {
  STRATA_RETURN_IF_ERROR(reduce_the_rest());
  return learn_order();
}

Status GradReducer::reduce_the_rest() {
  if (scatter_mode()) {
    if (in_fixed_order())
      for (std::uint32_t c : fixed_order_) STRATA_RETURN_IF_ERROR(launch(c));
    if (at_access_ends())
      for (std::uint32_t c = 0; c < grads_.size(); ++c) STRATA_RETURN_IF_ERROR(launch(c));
    // What is left: in one fixed order or at access ends, gradients that came after
    // their chunk's reduction in this backward (Note [late gradients]).
    for (std::uint32_t c = 0; c < grads_.size(); ++c) STRATA_RETURN_IF_ERROR(scatter(c));
    STRATA_RETURN_IF_ERROR(drain());
    add_landed(true);  // Note [gradients to host]: every shard is whole
    // nvme chunks whose parameters did not all get a gradient are complete now.
    for (std::uint32_t c = 0; c < grads_.size(); ++c)
      if ((*core_.chunks)[c].grads_on_nvme) STRATA_RETURN_IF_ERROR(spill(c));
    return ok();
  }
  if (boundary_) {
    for (std::uint32_t c = 0; c < grads_.size(); ++c)
      if (grads_[c].expected > 0) STRATA_RETURN_IF_ERROR(launch(c));
    // The parameters' .grad hold the average once backward returns, as under DDP, for
    // code that reads them before the step (a norm; torch's clip_grad_norm_).
    return drain();
  }
  return ok();
}

Status GradReducer::drain() {
  while (!order_.empty()) STRATA_RETURN_IF_ERROR(complete_oldest());
  return ok();
}

Status GradReducer::finish() {
  if (scatter_mode()) {
    STRATA_RETURN_IF_ERROR(drain());
    add_landed(true);
    return wait_spills(0);
  }
  for (std::uint32_t c = 0; c < grads_.size(); ++c)
    if (grads_[c].expected > 0) STRATA_RETURN_IF_ERROR(launch(c));
  STRATA_RETURN_IF_ERROR(drain());
  wait_slices();
  return ok();
}

// Note [gradients to host], stages 0-1. The compute stream waits for the copy before
// after_step() zeroes the buffer; the host waits in wait_slices().
void GradReducer::slice_to_host(std::uint32_t c) {
  ChunkGrads& g = grads_[c];
  if (!copies_.active() || g.expected == 0 || core_.chunks->step_tier(c) == Tier::kCompute) return;
  ChunkStore& store = core_.chunks->store();
  const at::Tensor slice = store.shard(store.grad(c), c);
  g.sliced = copies_.run([&] { g.shard.copy_(slice, /*non_blocking=*/true); });
  copies_.compute_waits(*g.sliced);
}

// The step runs off compute: it reads a copy of this rank's slice (the shard dtype).
void GradReducer::wait_slices() {
  ChunkStore& store = core_.chunks->store();
  for (std::uint32_t c = 0; c < grads_.size(); ++c) {
    ChunkGrads& g = grads_[c];
    if (g.expected == 0 || core_.chunks->step_tier(c) == Tier::kCompute) continue;
    if (g.sliced) tiers::CopyStream::host_waits(*g.sliced);
    else g.shard.copy_(store.shard(store.grad(c), c));
    g.sliced.reset();
    core_.account(Tier::kCompute, core_.chunks->step_tier(c), core_.chunks->shard_bytes(c));
  }
}

Status GradReducer::discard() {
  STRATA_RETURN_IF_ERROR(drain());
  if (scatter_mode()) {
    add_landed(true);
    STRATA_RETURN_IF_ERROR(wait_spills(0));  // a record being written is forgotten only once written
  } else {
    wait_slices();  // copies that would land in a shard after it was zeroed
  }
  after_step();
  return ok();
}

void GradReducer::after_step() {
  for (std::uint32_t c = 0; c < grads_.size(); ++c) {
    ChunkGrads& g = grads_[c];
    if (g.expected == 0) continue;
    g.in_record = false;
    g.stats.reset();
    if (!scatter_mode()) core_.chunks->store().grad(c).zero_();
    if (g.shard.defined() && (scatter_mode() || core_.chunks->step_tier(c) != Tier::kCompute)) g.shard.zero_();
  }
}

}  // namespace strata::engine
