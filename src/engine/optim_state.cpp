#include "optim_state.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace strata::engine {

OptimStateHolder::OptimStateHolder(EngineCore& core, const StepKernel& kernel)
    : core_(core), kernel_(kernel), mem_(core.chunks->size()), res_(core.chunks->size()) {}

OptimStateHolder::~OptimStateHolder() {
  // Reads and writes in flight write into or read from buffers held here: finish them.
  for (auto& [c, s] : reading_)
    for (auto& h : s->io) (void)h.wait();
  for (auto& s : writing_)
    for (auto& h : s->io) (void)h.wait();
}

bool OptimStateHolder::on_nvme(std::uint32_t c) const { return (*core_.chunks)[c].optim_tier == Tier::kNvme; }

std::vector<at::Tensor*> OptimStateHolder::tensors(ShardState& s) const {
  std::vector<at::Tensor*> ts{&s.master};
  for (auto& t : s.states) ts.push_back(&t);
  return ts;
}

std::vector<ElemRange> OptimStateHolder::groups(std::uint32_t c) const {
  const std::int64_t n = core_.chunks->store().shard_elems(c);
  if (!on_nvme(c)) return {{0, n}};
  return sub_groups(n, core_.opt.optim_pipeline.sub_group_elems);
}

int OptimStateHolder::read_ahead_depth() const {
  const auto& p = core_.opt.optim_pipeline;
  return p.read_ahead ? p.buffer_count - p.needed() + 1 : 0;
}

void OptimStateHolder::add_records(std::uint32_t c, std::vector<io::SwapReservation>& out) const {
  if (!(*core_.chunks)[c].trainable || !on_nvme(c)) return;
  const std::vector<ElemRange> gs = groups(c);
  for (std::uint32_t g = 0; g < gs.size(); ++g)
    for (std::uint32_t t = 0; t <= kernel_.state_names().size(); ++t)
      out.push_back({optim_key(c, t, g), static_cast<std::uint64_t>(gs[g].size()) * elem_bytes(t)});
}

void OptimStateHolder::get_groups(std::uint32_t c, std::uint32_t t, const at::Tensor& whole,
                                  std::vector<io::SwapHandle>& io) {
  const std::vector<ElemRange> gs = groups(c);
  for (std::uint32_t g = 0; g < gs.size(); ++g)
    io.push_back(core_.swap->get_async(optim_key(c, t, g), bytes_of(whole.narrow(0, gs[g].begin, gs[g].size()))));
}

Status OptimStateHolder::put_groups(std::uint32_t c, std::uint32_t t, const at::Tensor& whole) {
  const std::vector<ElemRange> gs = groups(c);
  for (std::uint32_t g = 0; g < gs.size(); ++g)
    STRATA_RETURN_IF_ERROR(core_.swap->put(optim_key(c, t, g), bytes_of(whole.narrow(0, gs[g].begin, gs[g].size()))));
  return ok();
}

Status OptimStateHolder::materialize(std::uint32_t c) {
  const ChunkRt& k = (*core_.chunks)[c];
  if (!k.trainable) {
    mem_[c] = ShardState{};  // nothing to step: no state
    return ok();
  }
  ShardState& s = mem_[c];
  if (!s.master.defined()) s = ShardState::make(core_.chunks->store().shard_elems(c), kernel_);
  const std::uint64_t bytes = s.bytes();
  // State on the compute tier of a GPU lives in its memory and is stepped there.
  s = s.to(core_.chunks->device_of(k.optim_tier));
  if (on_nvme(c)) {
    const auto ts = tensors(s);
    for (std::uint32_t t = 0; t < ts.size(); ++t) STRATA_RETURN_IF_ERROR(put_groups(c, t, *ts[t]));
    s = ShardState{};  // the swap store holds it now
  }
  STRATA_ASSIGN_OR_RETURN(res_[c], core_.chunks->reserve(k.optim_tier, bytes, StateKind::kOptimizer, c, "optimizer state"));
  return ok();
}

std::uint64_t OptimStateHolder::bytes() const {
  std::uint64_t b = 0;
  for (const auto& r : res_) b += r.bytes();
  return b;
}

namespace {
constexpr std::uint64_t round_io(std::uint64_t b) { return (b + kIoAlignBytes - 1) / kIoAlignBytes * kIoAlignBytes; }
}  // namespace

std::uint64_t OptimStateHolder::elem_bytes(std::uint32_t t) const {
  return t == 0 ? 4 : c10::elementSize(kernel_.state_dtype());
}

// Master, states and (when on nvme) the gradient of one sub-group, each starting on a
// 4 KiB boundary.
std::uint64_t OptimStateHolder::staging_bytes(std::uint32_t c, const ElemRange& r) const {
  const auto n = static_cast<std::uint64_t>(r.size());
  std::uint64_t b = (*core_.chunks)[c].grads_on_nvme ? round_io(n * c10::elementSize(core_.opt.grad_shard_dtype)) : 0;
  for (std::uint32_t t = 0; t <= kernel_.state_names().size(); ++t) b += round_io(n * elem_bytes(t));
  return b;
}

Status OptimStateHolder::setup_staging() {
  for (std::uint32_t c = 0; c < core_.chunks->size(); ++c)
    if ((*core_.chunks)[c].trainable && on_nvme(c))
      for (const ElemRange& r : groups(c)) buffer_bytes_ = std::max(buffer_bytes_, staging_bytes(c, r));
  if (buffer_bytes_ == 0) return ok();
  const auto count = static_cast<std::uint64_t>(core_.opt.optim_pipeline.buffer_count);
  STRATA_ASSIGN_OR_RETURN(staging_res_, core_.tiers.reserve(Tier::kHost, count * buffer_bytes_, StateKind::kBuffers,
                                                            "nvme optimizer staging pool"));
  // No waiting: the pipeline takes a buffer only when one is free.
  STRATA_ASSIGN_OR_RETURN(staging_, io::BufferPool::create({.budget_bytes = count * buffer_bytes_,
                                                             .acquire_timeout = std::chrono::milliseconds(0)}));
  return ok();
}

Result<std::unique_ptr<OptimStateHolder::Swap>> OptimStateHolder::start_read(std::uint32_t c, std::uint32_t g) {
  auto s = std::make_unique<Swap>();
  s->chunk = c;
  s->group = g;
  const std::int64_t n = groups(c)[g].size();
  const bool grad = (*core_.chunks)[c].grads_on_nvme && with_grads_;
  while (reading_.size() + writing_.size() >= static_cast<std::size_t>(core_.opt.optim_pipeline.buffer_count)) {
    STRATA_RETURN_IF_ERROR(wait_oldest_write());
  }
  STRATA_ASSIGN_OR_RETURN(s->buf, staging_.try_acquire(buffer_bytes_));
  std::uint64_t at = 0;
  auto next = [&](at::ScalarType dtype) {
    at::Tensor t = at::from_blob(s->buf.data() + at, {n}, dtype);
    at += round_io(static_cast<std::uint64_t>(n) * c10::elementSize(dtype));
    return t;
  };
  s->state.master = next(at::kFloat);
  for (std::size_t i = 0; i < kernel_.state_names().size(); ++i) s->state.states.push_back(next(kernel_.state_dtype()));
  if (grad) s->grad = next(core_.opt.grad_shard_dtype);
  const auto ts = tensors(s->state);
  for (std::uint32_t t = 0; t < ts.size(); ++t) s->io.push_back(core_.swap->get_async(optim_key(c, t, g), bytes_of(*ts[t])));
  if (grad && in_step_) request_grad(*s);
  return s;
}

// Issued after the record's write (the boundary backward's spill): the swap store orders
// the read after it.
void OptimStateHolder::request_grad(Swap& s) {
  s.io.push_back(core_.swap->get_async(grad_key(s.chunk, s.group), bytes_of(s.grad)));
  s.grad_requested = true;
}

void OptimStateHolder::begin_step(bool with_grads) {
  in_step_ = true;
  with_grads_ = with_grads;
  for (auto& [_, s] : reading_)
    if (s->grad.defined() && !s->grad_requested) request_grad(*s);
}

int OptimStateHolder::early_reads() const {
  return core_.opt.optim_pipeline.read_ahead ? core_.opt.optim_pipeline.buffer_count : 0;
}

Status OptimStateHolder::drop_reads(std::uint32_t c) {
  Status first = ok();
  for (auto it = reading_.begin(); it != reading_.end();) {
    if (it->second->chunk != c) {
      ++it;
      continue;
    }
    if (Status st = wait_all(*it->second); !st && first) first = std::move(st);
    it = reading_.erase(it);
  }
  return first;
}

Status OptimStateHolder::wait_all(Swap& s) {
  for (std::size_t i = 0; i < s.io.size(); ++i) {
    Status st = s.io[i].wait();
    if (st) continue;
    const std::string what = i == 0                                ? std::string("fp32 master")
                             : i <= kernel_.state_names().size() ? kernel_.state_names()[i - 1]
                                                                   : std::string("fp32 gradient shard");
    return make_error(std::move(st).error().with_note(
        fmt::format("the {} of {}, optimizer sub-group {}", what, core_.chunks->name(s.chunk), s.group)));
  }
  s.io.clear();
  return ok();
}

Status OptimStateHolder::wait_oldest_write() {
  TORCH_INTERNAL_ASSERT(!writing_.empty(), "the nvme optimizer pipeline holds more buffers than buffer_count");
  std::unique_ptr<Swap> s = std::move(writing_.front());
  writing_.erase(writing_.begin());
  return wait_all(*s);
}

Status OptimStateHolder::prefetch(std::uint32_t c, std::uint32_t g) {
  if (!on_nvme(c) || reading_.contains(id(c, g)) || !core_.opt.optim_pipeline.read_ahead) return ok();
  STRATA_ASSIGN_OR_RETURN(reading_[id(c, g)], start_read(c, g));
  return ok();
}

Result<ShardState*> OptimStateHolder::acquire(std::uint32_t c, std::uint32_t g) {
  if (!on_nvme(c)) return &mem_[c];
  if (!reading_.contains(id(c, g))) {
    STRATA_ASSIGN_OR_RETURN(reading_[id(c, g)], start_read(c, g));
  }
  Swap& s = *reading_.at(id(c, g));
  if (s.grad.defined() && !s.grad_requested) request_grad(s);
  STRATA_RETURN_IF_ERROR(wait_all(s));
  core_.account(Tier::kNvme, Tier::kHost, s.state.bytes() + (s.grad.defined() ? bytes_of(s.grad).size() : 0));
  return &s.state;
}

const at::Tensor& OptimStateHolder::grad(std::uint32_t c, std::uint32_t g) const {
  const Swap& s = *reading_.at(id(c, g));
  TORCH_INTERNAL_ASSERT(s.grad.defined(), "no gradient read for ", core_.chunks->name(c));
  return s.grad;
}

Status OptimStateHolder::release(std::uint32_t c, std::uint32_t g, Changed changed) {
  if (!on_nvme(c)) return ok();
  auto it = reading_.find(id(c, g));
  if (it == reading_.end()) return ok();
  std::unique_ptr<Swap> s = std::move(it->second);
  reading_.erase(it);
  s->grad = at::Tensor();  // stepped: the gradient is spent
  const auto ts = tensors(s->state);
  std::uint64_t written = 0;
  for (std::uint32_t t = 0; t < ts.size(); ++t) {
    if (!(changed & (t == 0 ? kMaster : kStates))) continue;
    s->io.push_back(core_.swap->put_async(optim_key(c, t, g), bytes_of(*ts[t])));
    written += bytes_of(*ts[t]).size();
  }
  core_.account(Tier::kHost, Tier::kNvme, written);
  writing_.push_back(std::move(s));
  if (!core_.opt.optim_pipeline.write_behind) return wait_oldest_write();
  return ok();
}

Status OptimStateHolder::flush() {
  in_step_ = false;
  with_grads_ = true;
  Status first = ok();
  for (auto& s : writing_)
    if (Status st = wait_all(*s); !st && first) first = std::move(st);
  writing_.clear();
  return first;
}

Result<ShardState> OptimStateHolder::read(std::uint32_t c) { return end_read(begin_read(c)); }

OptimStateHolder::PendingRead OptimStateHolder::begin_read(std::uint32_t c) {
  // Host state: the tensors themselves; state on a GPU: a host copy.
  if (!on_nvme(c)) return {.chunk = c, .state = mem_[c].to(c10::kCPU)};
  PendingRead r{.chunk = c, .state = ShardState::uninitialized(core_.chunks->store().shard_elems(c), kernel_)};
  const auto ts = tensors(r.state);
  for (std::uint32_t t = 0; t < ts.size(); ++t) get_groups(c, t, *ts[t], r.io);
  return r;
}

Result<ShardState> OptimStateHolder::end_read(PendingRead&& r) {
  for (auto& h : r.io) STRATA_RETURN_IF_ERROR(h.wait());
  // Reads are fp32 whatever the state's dtype: checkpoints and torch::optim hold fp32.
  for (at::Tensor& t : r.state.states)
    if (t.scalar_type() != at::kFloat) t = t.to(at::kFloat);
  return std::move(r.state);
}

Status OptimStateHolder::write(std::uint32_t c, const ShardState& s) {
  if (!on_nvme(c)) {  // copy_ rounds fp32 values to bf16 state
    // read() may have given the tensors themselves (fp32 state in host memory).
    auto same = [](const at::Tensor& a, const at::Tensor& b) { return a.data_ptr() == b.data_ptr(); };
    if (!same(s.master, mem_[c].master)) mem_[c].master.copy_(s.master);
    for (std::size_t t = 0; t < s.states.size(); ++t)
      if (!same(s.states[t], mem_[c].states[t])) mem_[c].states[t].copy_(s.states[t]);
    return ok();
  }
  // Reads started early hold the records' old contents.
  STRATA_RETURN_IF_ERROR(drop_reads(c));
  ShardState copy = s;
  const auto ts = tensors(copy);
  for (std::uint32_t t = 0; t < ts.size(); ++t) {
    // The records move in place only from 4 KiB-aligned memory (io_tensor.h), and hold
    // the state's dtype.
    const at::ScalarType dtype = t == 0 ? at::kFloat : kernel_.state_dtype();
    at::Tensor src = io_aligned(*ts[t]) && ts[t]->scalar_type() == dtype
                         ? *ts[t]
                         : aligned_empty(ts[t]->numel(), dtype).copy_(*ts[t]);
    STRATA_RETURN_IF_ERROR(put_groups(c, t, src));
  }
  return ok();
}

}  // namespace strata::engine
