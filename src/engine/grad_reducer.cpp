#include "grad_reducer.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "strata/base/log.h"

namespace strata::engine {
namespace {

// Runs after AccumulateGrad has added this backward's gradient into param.grad (a view
// of the chunk's gradient buffer).
class ReadyHook : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(GradReducer* reducer, std::uint32_t param) : reducer_(reducer), param_(param) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    reducer_->on_grad_ready(param_);
    return outputs;
  }

 private:
  GradReducer* reducer_;
  std::uint32_t param_;
};

}  // namespace

GradReducer::GradReducer(ChunkStore& store, comm::Communicator& comm, int stage, std::uint64_t bucket_elems,
                         bool overlap)
    : store_(store), comm_(comm), stage_(stage), overlap_(overlap) {
  const std::size_t n_chunks = store.num_chunks();
  had_grad_.assign(store.params().size(), 0);
  reported_.assign(store.params().size(), 0);
  pending_.assign(n_chunks, 0);
  bucket_of_.assign(n_chunks, 0);
  for (std::size_t c = 0; c < n_chunks; ++c) {
    grad_shards_.push_back(stage == 2 ? at::zeros({store.shard_elems(c)}, store.grad(c).options())
                                      : store.shard(store.grad(c), c));
  }
  if (stage != 2) return;
  // Backward finishes the last chunks first, so buckets run from the last chunk down.
  for (std::size_t i = n_chunks; i-- > 0;) {
    const auto elems = store.chunk_elems(i);
    if (buckets_.empty() || buckets_.back().elems + elems > static_cast<std::int64_t>(bucket_elems)) {
      buckets_.emplace_back();
    }
    buckets_.back().chunks.push_back(i);
    buckets_.back().elems += elems;
    bucket_of_[i] = buckets_.size() - 1;
  }
  for (Bucket& b : buckets_) {
    if (b.chunks.size() < 2) continue;
    b.staging_in = at::empty({b.elems}, store.grad(b.chunks[0]).options());
    b.staging_out = at::empty({b.elems / comm.world()}, store.grad(b.chunks[0]).options());
  }
}

GradReducer::~GradReducer() = default;

void GradReducer::install_hooks() {
  for (std::size_t i = 0; i < store_.params().size(); ++i) {
    // The accumulator is held only weakly by the parameter; keep it alive so the hook
    // stays installed for the life of the optimizer.
    auto acc = torch::autograd::impl::grad_accumulator(store_.params()[i]);
    acc->add_post_hook(std::make_unique<ReadyHook>(this, static_cast<std::uint32_t>(i)));
    accumulators_.push_back(std::move(acc));
  }
}

void GradReducer::begin_backward(bool boundary) {
  boundary_ = boundary;
  callback_queued_ = false;
  std::fill(reported_.begin(), reported_.end(), 0);
  for (std::size_t c = 0; c < store_.num_chunks(); ++c) {
    pending_[c] = static_cast<std::int64_t>(store_.chunk(c).params.size());
  }
}

void GradReducer::on_grad_ready(std::uint32_t param) {
  if (!callback_queued_) {
    callback_queued_ = true;
    torch::autograd::Engine::get_default_engine().queue_callback([this] { on_backward_end(); });
  }
  had_grad_[param] = 1;
  if (reported_[param]) return;
  reported_[param] = 1;
  const std::size_t c = store_.layout().where[param].chunk;
  if (--pending_[c] == 0 && stage_ == 2 && boundary_ && overlap_) launch_ready_buckets(false);
}

void GradReducer::on_backward_end() {
  if (stage_ == 2 && boundary_) launch_ready_buckets(true);
}

void GradReducer::launch_ready_buckets(bool force) {
  while (next_bucket_ < buckets_.size()) {
    Bucket& b = buckets_[next_bucket_];
    if (!force) {
      for (std::size_t c : b.chunks)
        if (pending_[c] != 0) return;
    }
    launch(b);
    ++next_bucket_;
  }
}

void GradReducer::launch(Bucket& b) {
  b.launched = true;
  if (b.chunks.size() == 1) {
    const std::size_t c = b.chunks[0];
    b.handle = comm_.reduce_scatter(store_.grad(c), grad_shards_[c], comm::ReduceOp::kAvg);
    return;
  }
  // Rank-major staging: rank r's part of the bucket is the r-th shard of every chunk.
  std::int64_t pos = 0;
  for (int r = 0; r < comm_.world(); ++r) {
    for (std::size_t c : b.chunks) {
      const std::int64_t n = store_.shard_elems(c);
      b.staging_in.narrow(0, pos, n).copy_(store_.grad(c).narrow(0, r * n, n));
      pos += n;
    }
  }
  b.handle = comm_.reduce_scatter(b.staging_in, b.staging_out, comm::ReduceOp::kAvg);
}

Status GradReducer::finish() {
  if (finished_) return ok();
  finished_ = true;
  if (stage_ < 2) {  // stages 0 and 1: all-reduce, then read this rank's slice
    for (std::size_t c = 0; c < store_.num_chunks(); ++c) {
      allreduces_.push_back(comm_.all_reduce(store_.grad(c), comm::ReduceOp::kAvg));
    }
    Status first = ok();
    for (auto& h : allreduces_) {
      auto st = h.wait();
      if (!st && first) first = std::move(st);
    }
    allreduces_.clear();
    return first;
  }
  launch_ready_buckets(true);
  Status first = ok();
  for (Bucket& b : buckets_) {
    auto st = b.handle.wait();
    if (!st) {
      if (first) first = std::move(st);
      continue;
    }
    if (b.chunks.size() < 2) continue;
    std::int64_t pos = 0;
    for (std::size_t c : b.chunks) {
      const std::int64_t n = store_.shard_elems(c);
      grad_shards_[c].copy_(b.staging_out.narrow(0, pos, n));
      pos += n;
    }
  }
  return first;
}

void GradReducer::reset() {
  store_.zero_grads();
  if (stage_ == 2) {
    for (auto& g : grad_shards_) g.zero_();
  }
  for (Bucket& b : buckets_) b.launched = false;
  next_bucket_ = 0;
  finished_ = false;
}

}  // namespace strata::engine
