// OptimStateHolder: each chunk's fp32 master and optimizer state (m, v, ...), in the
// tier placement chose for it. Internal to src/engine.
//
// Compute and host state are tensors that live for good (compute state on a GPU lives in
// its memory: reads for checkpoints and consolidation come to the host as copies). nvme state lives in the swap
// store between steps, one record per tensor (optim_key(c, t): t = 0 the master, then
// StepKernel::state_names() order), and comes into host memory only around its step.
//
// Note [nvme optimizer state]: the step pipelines the records sub-group by sub-group
// (Note [optimizer sub-groups] in chunk_runtime.h; a chunk is one sub-group unless
// zero_optimization.sub_group_size is smaller than its shard), with the sub-group's
// gradient record when gradients are on nvme (Note [gradients on nvme]). While sub-group
// k is stepped, the next ones are being read (pipeline_read: as many as the buffers
// left over allow) and older ones written back (pipeline_write). Every record the step
// reads lands in a staging buffer of a pool the holder owns: buffer_count buffers, each
// the size of the largest sub-group's records, one 2 MiB-aligned arena advised for huge
// pages (reads into it ran at 2.68 GB/s against 1.63 GB/s into 4 KiB pages on the
// development disk). A sub-group holds one buffer from its read until its write-back
// finishes, and a read starts only when a buffer is free (the oldest write-back is
// waited for first), so the pipeline never waits on the pool and never holds more than
// buffer_count sub-groups' state in host memory. The arena is reserved in the host tier
// as "buffers" at setup.
//
// Note [early state reads]: the records of the first sub-groups the step will take
// (as many as the pool has buffers) do not change between steps, so their reads start
// when the boundary micro-step's backward begins: the disk, which backward uses only
// for gradient records (and, at stage 3 with parameters on nvme, their Loads), brings
// them in while backward computes, and the step starts with its pipeline full. Their
// gradient records are still being written then, so a sub-group read early gets its
// gradient read only when the step begins (begin_step); a step skipped for overflow
// leaves the early reads in place for the next one, and writing a chunk's state
// (loading a state dict) drops them.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "engine_core.h"
#include "shard_state.h"
#include "strata/io/swap_store.h"

namespace strata::engine {

class OptimStateHolder {
 public:
  OptimStateHolder(EngineCore& core, const StepKernel& kernel);
  ~OptimStateHolder();

  // Setup: chunk c's state in host memory, its master filled with the parameters' values.
  void set_initial(std::uint32_t c, ShardState s) { mem_[c] = std::move(s); }
  // Moves chunk c's initial state to its tier and reserves it there (nvme: written to
  // its records, then dropped from memory).
  Status materialize(std::uint32_t c);
  // The swap records nvme state needs, for SwapStore::reserve().
  void add_records(std::uint32_t c, std::vector<io::SwapReservation>& out) const;
  // After placement: the staging pool, sized for the largest nvme sub-group (Note [nvme
  // optimizer state]); nothing when no state is on nvme.
  Status setup_staging();
  // Master + state bytes this rank holds, all tiers.
  std::uint64_t bytes() const;

  // The step pipeline (Note [nvme optimizer state]), by sub-group g of chunk c. State in
  // memory is one sub-group, the whole shard.
  std::vector<ElemRange> groups(std::uint32_t c) const;
  // Sub-groups the pipeline may read ahead of the one being stepped (0: no read ahead).
  int read_ahead_depth() const;
  Status prefetch(std::uint32_t c, std::uint32_t g = 0);  // nvme: start reading the records
  // The step begins (Note [early state reads]): sub-groups read early get their
  // gradient records read now; until flush(), every read takes its gradient with it.
  // Without gradients: a pass that reads none (Lamb's second, Note [Lamb's two passes]
  // in step_driver.h), after a flush(), when nothing is read ahead.
  void begin_step(bool with_grads = true);
  // Note [early state reads]: how many sub-groups may be read ahead of the step.
  int early_reads() const;
  // The sub-group's state in memory (waits for its read); its tensors start at the
  // sub-group's first element.
  Result<ShardState*> acquire(std::uint32_t c, std::uint32_t g = 0);
  const at::Tensor& grad(std::uint32_t c, std::uint32_t g) const;  // after acquire: its gradient read from nvme
  // After its step: nvme: start writing back. `changed`: what the step wrote, the master
  // and (in StepKernel::state_names() order) the states; records of the others are
  // left as they are (Lamb's first pass changes only the states, its second only the
  // master: Note [Lamb's two passes]).
  enum Changed : std::uint8_t { kMaster = 1, kStates = 2, kAll = kMaster | kStates };
  Status release(std::uint32_t c, std::uint32_t g, Changed changed = kAll);
  Status flush();                                    // every write-back finished; the step is over

  // Chunk c's master when its state lives in memory (Note [shard from master]).
  const at::Tensor& memory_master(std::uint32_t c) const { return mem_[c].master; }
  const ShardState& memory_state(std::uint32_t c) const { return mem_[c]; }
  // Outside the step (consolidation, loading a state dict): c's state in host memory
  // and in fp32, read from any tier (for fp32 state in host memory, the tensors
  // themselves; bf16 states widened), and back (rounded to the state's dtype).
  Result<ShardState> read(std::uint32_t c);
  // read(c) in two halves, so that a caller can read chunk c+1 while it writes chunk c
  // out (a checkpoint save): begin_read starts nvme reads, end_read waits for them.
  struct PendingRead {
    std::uint32_t chunk = 0;
    ShardState state;
    std::vector<io::SwapHandle> io;
  };
  PendingRead begin_read(std::uint32_t c);
  Result<ShardState> end_read(PendingRead&& r);
  // Chunk c's state tensors are in host memory (not on nvme, not on a GPU).
  bool in_memory(std::uint32_t c) const {
    return !on_nvme(c) && (!mem_[c].master.defined() || mem_[c].master.device().is_cpu());
  }
  Status write(std::uint32_t c, const ShardState& s);

 private:
  // One sub-group's records in host memory. Members are destroyed in reverse order: the
  // I/O finishes before the tensors and the staging buffer under them go.
  struct Swap {
    std::uint32_t chunk = 0, group = 0;
    io::PooledBuffer buf;        // the step's staging buffer (empty: tensors own their bytes)
    ShardState state;
    at::Tensor grad;             // the step's gradient shard, when it is on nvme
    bool grad_requested = false;  // its read is in io (Note [early state reads])
    std::vector<io::SwapHandle> io;
  };
  using GroupId = std::uint64_t;  // chunk << 32 | sub-group
  static GroupId id(std::uint32_t c, std::uint32_t g) { return std::uint64_t{c} << 32 | g; }
  bool on_nvme(std::uint32_t c) const;
  std::uint64_t staging_bytes(std::uint32_t c, const ElemRange& r) const;
  std::uint64_t elem_bytes(std::uint32_t t) const;  // tensor t's element: the master fp32, states state_dtype()
  // The step's read of sub-group g: into a staging buffer, with the gradient record.
  Result<std::unique_ptr<Swap>> start_read(std::uint32_t c, std::uint32_t g);
  // Every record of tensor t of chunk c, sub-group by sub-group, into or out of `whole`.
  void get_groups(std::uint32_t c, std::uint32_t t, const at::Tensor& whole, std::vector<io::SwapHandle>& io);
  Status put_groups(std::uint32_t c, std::uint32_t t, const at::Tensor& whole);
  Status wait_oldest_write();
  void request_grad(Swap& s);
  Status drop_reads(std::uint32_t c);  // waits for and forgets chunk c's reads
  // Waits for a sub-group's I/O; a failure names what the record held (the master, a
  // state tensor or the gradient) and its chunk and sub-group, next to the swap key.
  Status wait_all(Swap& s);
  std::vector<at::Tensor*> tensors(ShardState& s) const;

  EngineCore& core_;
  const StepKernel& kernel_;
  std::vector<ShardState> mem_;  // compute/host state; the initial state before nvme placement
  std::vector<tiers::Reservation> res_;
  io::BufferPool staging_;
  std::uint64_t buffer_bytes_ = 0;
  tiers::Reservation staging_res_;
  std::map<GroupId, std::unique_ptr<Swap>> reading_;  // prefetched or being stepped
  bool with_grads_ = true;  // reads take gradient records (begin_step; flush() sets it back)
  std::vector<std::unique_ptr<Swap>> writing_;       // write-backs in flight, oldest first
  bool in_step_ = false;                             // between begin_step() and flush()
};

}  // namespace strata::engine
