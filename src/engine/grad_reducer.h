// GradReducer: turns the gradients autograd accumulates into the gradient shards the
// step reads, for every stage. Internal to src/engine.
//
// Each chunk has one full-size gradient buffer in the compute dtype; every trainable
// parameter's .grad is a view of it (Note [gathered storage]). AccumulateGrad hooks on
// every trainable parameter drive the reduction:
//   pre-hook   the chunk's buffer must have bytes before autograd writes into it
//   post-hook  the parameter's gradient is in; when all of a chunk's are, it is ready
// Two modes, by stage:
//   all-reduce (stages 0-1)       buffers live for good and accumulate across
//       micro-steps; in the boundary micro-step each ready chunk is all-reduced (avg),
//       the rest when backward ends. The step reads this rank's slice of the buffer, or
//       a copy of it (the gradient shard dtype) where the step runs when that is not
//       compute.
//   reduce-scatter (stages 2-3)   a buffer gets its bytes at the chunk's first gradient
//       and loses them once reduced: every micro-step, a ready chunk is reduce-scattered
//       (avg) and the result added to this rank's gradient shard (fp32, or bf16 with
//       strata.gradient_shard_dtype), which lives where the chunk's step runs. At most
//       reduce_bucket_size elements of buffers are alive at once (Note [gradient bytes
//       in flight]).
//       On a budgeted compute tier a buffer that does not fit first waits for the
//       reductions in flight; if it still does not fit, that is a "cannot fit" error.
//
// Note [reductions in one order]: ranks pair their collectives by issue order only, and
// chunks' reductions are often the same size, so two ranks that issue them in different
// orders average one chunk's gradients with another's and nothing fails. The order in
// which chunks become ready is autograd's, which depends on the rank's own data when
// control flow does (a mixture of experts routes each rank's tokens to other experts; a
// branch taken on one rank only). So at stages 0-1, and at stage 2 with more than one
// rank, a ready chunk is reduced only after every chunk before it in one fixed order,
// rank 0's, broadcast: in the first backward that reduces, the trainable chunks in the
// reverse of the order its forward first used them (backward makes them ready in about
// that order), then the unused ones, last first; from then on, the order its chunks
// became ready in that backward (as DDP launches its buckets in one order, rebuilt from
// its first iteration's). For a model that runs the same modules on every rank no
// reduction then waits, so overlap and memory are as in readiness order; a chunk whose
// parameters got no gradient on this rank holds the later ones until backward ends. Then
// every trainable chunk is reduced, at stage 2 with a buffer of zeros for one that got no
// gradient here. What the order rules out at stage 2 are a rank's own early reductions:
// the bucket cap only waits for reductions in flight (the cap may be exceeded while a
// chunk waits for one before it in the order), a compute budget that cannot hold the
// buffers as they come is an error, and the schedule's reduce points are not used.
// Stage 3 with more than one rank reduces at access ends (below); with one rank, in
// readiness order, with those early reductions.
//
// Note [reductions at access ends]: at stage 3 gathers and reductions share one sequence
// of collectives, so with more than one rank not only the order of the reductions but
// the points where they are issued must be every rank's. Every rank runs the same unit
// accesses (the trace hash says so: docs/distributed.md), but what runs inside a unit
// may differ: a mixture of experts inside one unit (a fully_shard'ed block, a leaf
// module: Note [covered units], access_driver.h) gives gradients only to the experts
// its rank's tokens chose, so which chunks become ready, and when, differs across ranks
// (reduced as they became ready, the ranks issued an all-gather against a
// reduce-scatter). So a chunk is reduced at a point of the access sequence: when the
// backward access of the last unit holding it ends (every forward call of those units
// in this step has had its backward; the schedule's reduce point is the same), and
// every trainable chunk not reduced by then at the end of backward, in chunk order,
// with a buffer of zeros where this rank has no gradient; as FSDP2 reduce-scatters a
// module's gradients when its backward ends. Readiness launches nothing, and a rank's
// own early reductions (the bucket cap, Note [partial buffers make room]) are off: a
// compute budget must hold the gradient buffers until their units' backward accesses
// end.
//
// Note [gradients on nvme]: at stages 2-3, a chunk whose optimizer state is on nvme
// (with nvme_gradients, the default) keeps no gradient shard in host memory between
// backward and step: at 4B parameters the fp32 shards alone would be 16 GB. Its shard
// exists in host memory only from the chunk's first reduction in a backward until the
// chunk is complete for that backward (all of its gradients reduced: at the last
// reduction when every parameter had one, else when backward ends); then it is written,
// asynchronously, to the chunk's gradient record, in the layout the step reads, and
// freed once written (at most kSpillsInFlight writes at once). In a later micro-step of
// the same accumulation window the record is read back and added to first; so is it
// when a gradient comes after the chunk was complete in the same backward (a tied weight
// inside a reentrant checkpoint is accumulated twice: nested backward, then outer). In the
// boundary micro-step the prologue's partials (inf/NaN, norms) are taken from the
// complete shard just before it is written, so clipping and loss scaling see exactly
// the gradient the step will read; the step reads the record with the chunk's
// optimizer state (OptimStateHolder). The cost is 4 bytes per parameter written and
// read per step (2 with bf16 shards), next to the 24 the optimizer state moves.
//
// Note [gradients to host]: on a GPU, a reduced shard whose step runs in host memory
// comes to the host on a copy stream (Note [copy stream]): the copy waits on the device
// for the reduction, the compute stream waits on the device for the copy before the
// gradient buffer's memory can be used again, and the host does not block. The copy
// lands in a pinned temporary that is added into the shard once its event has
// passed: at the next poll() that finds it done, when more than kLandingsInFlight are
// waiting, before an nvme chunk's shard is written, and at the end of backward, in the
// order the reductions completed (the same sums as adding each at once). For the CPU
// the shard is added at once. At stages 0-1 the boundary's reduced slice is copied
// straight into its pinned shard on the copy stream, as soon as the chunk is final
// (its all-reduce completed; with one rank, its last gradient in), and finish() waits
// for those copies once, instead of copying chunk by chunk at the end.
//
// Note [gradients kept on compute]: with strata.gradient_shards_on_compute, at stages
// 2-3, a chunk whose step runs on the host (optimizer state on host or nvme) keeps its
// gradient shard in compute memory, where the reduction lands, until the step; the step
// copies it to a host staging buffer just before it steps the chunk (StepDriver). On a
// GPU the host (or nvme) then holds no gradient bytes: 2 or 4 a parameter move to GPU
// memory, which at these sizes has room to spare once the model state is off it (the
// largest model strata trains on one machine: docs/gpu.md). The price is one
// device-to-host copy of the shard per step, as before, but at the step instead of
// during backward, and the host waits for it (the GPU has finished backward by then).
// The prologue's partials (inf/NaN, norms) are taken on compute, by tensor ops. It takes
// precedence over nvme_gradients: the shard is in neither host memory nor a record.
//
// Reductions are launched in the order chunks become ready (with one rank), in one fixed
// order (stages 0-2 with more: Note [reductions in one order]), or at the ends of
// backward accesses (stage 3 with more: Note [reductions at access ends]); with
// overlap_comm off, all at the end of backward in chunk order. Chunks whose parameters
// did not all get a gradient are reduced at the end of backward (the missing ones are
// zero), or when the schedule says their last use has passed (reduce_now).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "engine_core.h"
#include "staging_cache.h"
#include "strata/kernels/dtype.h"
#include "strata/kernels/grad_prologue.h"
#include "strata/tiers/copy_stream.h"

namespace torch::autograd {
struct Node;
}

namespace strata::engine {

class GradReducer {
 public:
  explicit GradReducer(EngineCore& core);
  ~GradReducer();

  // Reserves what lives for good (stage 0-1 buffers, gradient shards) and installs the
  // hooks. `on_activity` runs at the start of every hook (the engine opens its backward
  // session there).
  Status setup(std::function<void()> on_activity);

  // inv_scale: 1 / the loss scale of this backward (Note [gradients on nvme]). May
  // broadcast the order of reductions (Note [reductions in one order]).
  Status begin_backward(bool boundary, double inv_scale);
  // Note [reductions at access ends].
  bool at_access_ends() const { return core_.stage() == 3 && core_.comm.world() > 1; }
  // A forward used a unit's chunks (Note [reductions in one order]).
  void note_forward_use(const std::vector<std::uint32_t>& chunks);
  // Hooks (errors are raised through core.errors).
  void ensure_buffer(std::uint32_t c);
  std::uint32_t chunk_of(std::uint32_t param) const;
  // Note [the engine's gradients]: param's .grad is its view of the buffer again.
  void bind_grad(std::uint32_t param);
  void on_grad_ready(std::uint32_t param);
  // The schedule's ReduceScatter op, or the access driver at an access's end (Note
  // [reductions at access ends]): chunk c's last use in backward has passed.
  Status reduce_now(std::uint32_t c);
  // Finishes the reductions that have completed (frees their buffers).
  Status poll();
  // When backward ends: launches what is left; in reduce-scatter mode also waits for
  // every reduction, so the buffers are gone before the next forward.
  Status end_backward();
  // Waits for every reduction in flight (their buffers free their room).
  Status drain();
  // At the boundary, before the step: every gradient shard is final.
  Status finish();
  // The gradient shard the step reads for chunk c (grad_shard_dtype, or the compute
  // dtype when it is a slice of a stage 0-1 buffer). Undefined for a chunk whose
  // gradients are on nvme: the step reads them with the optimizer state.
  const at::Tensor& grad_shard(std::uint32_t c) const { return grads_[c].shard; }
  // At the boundary, after finish(): the prologue's partials over chunk c's gradient
  // shard, unscaled by inv_scale.
  Result<kernels::GradStats> local_stats(std::uint32_t c, double inv_scale) const;
  // The same as partials on the shard's device (tensor_grad_partials), for a shard whose
  // figures are tensor ops (on a GPU, or host_step), so that the step copies every
  // chunk's at once (Note [one copy for the gradient norm]); nullopt for the others.
  std::optional<at::Tensor> tensor_partials(std::uint32_t c) const;
  // Which parameters received a gradient on this rank, ever.
  const std::vector<std::uint8_t>& had_grad() const { return had_grad_; }
  // After the step: zero the accumulators.
  void after_step();
  // Without a step (Note [zero_grad], engine.cpp): lets what is in flight land, then
  // zeroes the accumulators. Issues no collective.
  Status discard();

 private:
  void unbind_grads(std::uint32_t c);  // chunk c's parameters have no .grad
  struct InFlight {
    comm::Handle handle;
    at::Tensor out;  // reduce-scatter: this rank's slice of the buffer, the result
    Clock::time_point issued;
  };
  struct ChunkGrads {
    std::int64_t expected = 0;  // trainable parameters in the chunk
    std::int64_t pending = 0;   // of those, not yet accumulated in this backward
    bool live = false;          // the full buffer has bytes
    bool ready = false;         // every gradient of this backward is in
    bool launched = false;      // ready to reduce in this backward (in one fixed order)
    tiers::Reservation buffer_res;
    at::Tensor shard;           // what the step reads (see grad_shard)
    tiers::Reservation shard_res;
    at::Tensor shard_full;      // nvme: the reused buffer under `shard` (Note [reused staging])
    std::optional<InFlight> op;
    // Note [gradients on nvme]
    bool complete = false;      // this backward's gradients are all in the shard
    bool in_record = false;     // the record holds this window's sum so far
    tiers::Reservation record_res;  // the record's nvme bytes
    std::optional<kernels::GradStats> stats;  // the boundary's, taken before writing
    std::optional<c10::Event> sliced;  // all-reduce mode on a GPU: the slice's copy into `shard`
  };
  // A reduced shard on its way to the host (Note [gradients to host]).
  struct Landing {
    std::uint32_t chunk = 0;
    at::Tensor host;  // pinned, the compute dtype
    c10::Event done;
  };
  static constexpr std::size_t kLandingsInFlight = 4;
  // A gradient shard being written to its record; freed once written.
  struct Spill {
    std::uint32_t chunk = 0;
    at::Tensor shard, full;  // full: the reused buffer, back to spill_buffers_ once written
    tiers::Reservation res;
    std::vector<io::SwapHandle> io;  // one write per optimizer sub-group
  };
  static constexpr std::size_t kSpillsInFlight = 2;
  bool scatter_mode() const { return core_.stage() >= 2; }
  Result<kernels::GradStats> shard_stats(const at::Tensor& shard, double inv_scale) const;
  bool stats_by_tensor_ops(const at::Tensor& shard) const;
  Status reserve_buffer(std::uint32_t c);
  // Reduce-scatter mode: the oldest buffer with bytes and no reduction on its way.
  std::optional<std::uint32_t> oldest_unreduced() const;
  // Chunk c is ready to reduce: issued now, or in one fixed order after the chunks before it.
  Status launch(std::uint32_t c);
  bool in_fixed_order() const;  // Note [reductions in one order]
  // Reduce-scatter mode: a rank may reduce a buffer early, on its own (the bucket cap,
  // Note [partial buffers make room]); not when the ranks' readiness may differ.
  bool reduces_early() const { return scatter_mode() && !in_fixed_order() && !at_access_ends(); }
  Status all_reduce(std::uint32_t c);
  // Reduce-scatter mode: issues chunk c's reduction if its buffer has bytes (or, with
  // even_if_empty, of zeros: a chunk that got no gradient on this rank).
  Status scatter(std::uint32_t c, bool even_if_empty = false);
  Status reduce_the_rest();  // end_backward's reductions
  // Note [reductions in one order]: before the first backward that reduces, from the
  // forward; after it, from the order chunks became ready; each rank 0's, broadcast.
  Status predict_order();
  Status learn_order();
  Status adopt_rank0_order(std::vector<std::uint32_t> order);
  Status complete(std::uint32_t c);  // waits for c's reduction and lands it
  Status complete_oldest();
  // Note [gradients to host]: start the copy; add the ones that have landed (all: `every`).
  void land_on_host(std::uint32_t c, const at::Tensor& out);
  void add_landed(bool every);
  void slice_to_host(std::uint32_t c);  // all-reduce mode: chunk c is final, its slice starts
  void wait_slices();                   // ... and every slice is in its shard (or copied now)
  // Note [gradients on nvme]
  Status ensure_shard(std::uint32_t c);  // the host shard exists (zeroed)
  Status spill(std::uint32_t c);         // chunk c is complete: to its record
  Status wait_spills(std::size_t keep);  // until at most `keep` writes are in flight

  EngineCore& core_;
  std::vector<ChunkGrads> grads_;
  std::vector<std::uint8_t> had_grad_;
  std::deque<std::uint32_t> order_;        // reductions in flight, in launch order
  std::vector<std::uint32_t> fixed_order_;  // Note [reductions in one order]
  std::size_t next_in_order_ = 0;          // ... its first chunk not issued yet
  std::vector<std::uint32_t> ready_order_;  // this backward's chunks, as they became ready
  std::vector<std::uint32_t> forward_order_;  // chunks as the forwards first used them ...
  std::vector<std::uint8_t> forward_used_;    // ... until the order is predicted
  bool order_predicted_ = false;  // fixed_order_ is from rank 0's forward
  bool order_learned_ = false;    // ... from rank 0's first readiness order
  std::deque<std::uint32_t> live_order_;   // reduce-scatter mode: buffers with bytes, oldest first
  std::uint64_t live_buffer_bytes_ = 0;    // reduce-scatter mode: buffers with bytes
  bool boundary_ = false;
  double inv_scale_ = 1.0;
  std::deque<Spill> spills_;
  StagingCache spill_buffers_;  // nvme chunks' host shards (Note [reused staging])
  tiers::CopyStream copies_;    // Note [gradients to host]
  std::deque<Landing> landings_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
};

}  // namespace strata::engine
