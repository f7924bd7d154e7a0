// Gatherer: brings chunks into compute memory and lets them go — the Load, Gather,
// Release and Evict ops of the schedule, the same ops on demand, and the all-gather of
// replicated chunks after a step. Internal to src/engine.
//
// Note [nvme parameter staging]: a Load reads an nvme shard into a staging buffer of a
// pool the gatherer owns: offload_param.buffer_count buffers, each the largest nvme
// shard (offload_param.buffer_size, in elements, must hold it: setup refuses a smaller
// one), one huge-page arena reserved in the host tier as "buffers" at setup. The access
// driver issues the schedule's Loads up to two accesses before their gathers, so a read
// runs while the units before it compute, and the gather that copies it in waits only
// for what is left of it. Gathers (collectives, whose order every rank must share) are
// never deferred: only the reads move earlier. A Load never waits for a buffer: when all
// are taken, it is skipped (its own access issues it again), and a gather with no
// staged read reads the shard straight into its slice. A staged read whose gather never
// came (the model took another path) is dropped before the step can rewrite the shard.
//
// Note [shard into slice]: a gather copies this rank's shard into its slice of the
// chunk's full-size storage (a real copy when the shard lives on host; a read when it
// lives on nvme, from the staging buffer a Load op filled, or straight from the swap
// store when none did; a cast of this rank's fp32 master slice when the shard is made
// from the master, Note [shard from master]), then all-gathers the other slices in place. Every byte of a
// gathered chunk is a compute reservation. The gatherer has no eviction policy: what is
// released when is the schedule's decision (on demand: after every use).
//
// On a GPU, a shard in host memory (a host-tier shard, a staging buffer a Load filled,
// or the master's cast into a pinned buffer) goes into its slice on the copy stream
// (Note [copy stream] in strata/tiers/copy_stream.h): the compute stream waits for it
// on the device when an access first needs the chunk (wait), or before the all-gather
// with more than one rank, or before the storage is released. The host waits for a
// copy only before the source can change: at release_all, which runs before every
// optimizer step, before a checkpoint load writes shards (wait_copies), and when a chunk
// is gathered again while its last copy is still in flight. A staging buffer goes back
// to its pool once its copy has finished.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <vector>

#include <c10/core/Event.h>

#include "engine_core.h"
#include "strata/tiers/copy_stream.h"

namespace strata::engine {

class Gatherer {
 public:
  // Chunk c's fp32 master shard in host memory (Note [shard from master]).
  using MasterOf = std::function<const at::Tensor&(std::uint32_t c)>;
  // Note [edits while gathered] (param_edits.cpp): whether a parameter of gathered chunk
  // c was changed in place since the engine last wrote it, and taking such changes from
  // this rank's slice of the gathered chunk into its master and shard.
  struct Edits {
    std::function<bool(std::uint32_t c)> any;
    std::function<Status(std::uint32_t c, const at::Tensor& slice)> take;
  };
  // `make_room` frees compute memory that is on its way out (gradient buffers whose
  // reductions are in flight) when a reservation does not fit.
  Gatherer(EngineCore& core, std::function<Status()> make_room, MasterOf master, Edits edits);
  ~Gatherer();

  // After placement: the staging pool for nvme shards (Note [nvme parameter staging]).
  Status setup_staging();
  // Load: chunk c's shard from nvme into a host staging buffer, for a later gather.
  Status load(std::uint32_t c);
  // Gather: start bringing chunk c in. `prefetch`: issued before the access that uses it.
  Status gather(std::uint32_t c, bool prefetch);
  // Before an access uses c: its gather has finished.
  Status wait(std::uint32_t c);
  // Gather what is missing of `chunks` (all issued first, so they overlap), then wait.
  Status ensure(const std::vector<std::uint32_t>& chunks);
  // Release or Evict: free c's gathered storage, unless an access uses it, it is never
  // released (aliased, replicated) or it is persistent and `persistent_too` is not set.
  // Parameters changed in place while it was gathered keep the change (take_edits).
  Status release(std::uint32_t c, bool persistent_too = false);
  // Gathered chunk c: parameters changed in place since the engine last wrote them go
  // into this rank's master and shard (Note [edits while gathered]); a read of the old
  // shard staged for a later gather is dropped.
  Status take_edits(std::uint32_t c);
  // Every chunk not in use and not persistent (or with `and_persistent`, persistent too);
  // staged reads no gather took are dropped.
  Status release_all(bool and_persistent);

  // After the step, replicated chunks: all-gather this rank's updated slice into the
  // whole chunk (async; finish_refresh waits).
  void refresh(std::uint32_t c);
  Status finish_refresh();

  // Before the host rewrites host shards: every copy into a slice has ended (Note [copy
  // stream]); release_all does it too.
  void wait_copies();

  std::uint64_t gathered_bytes() const { return gathered_bytes_; }

 private:
  struct Staged {
    io::PooledBuffer buf;  // declared before io: given back once the read has finished
    at::Tensor values;     // a view of buf
    io::SwapHandle io;
  };
  struct Pending {
    comm::Handle handle;
    Clock::time_point issued;
  };
  // A shard's copy into its slice on the copy stream.
  struct Copy {
    c10::Event done;
    bool compute_waited = false;    // the compute stream is ordered after it
    at::Tensor src;                 // what it reads, held until it is done (a master's cast
                                    // owns its bytes, Note [shard from master])
    std::optional<Staged> source;   // the staging buffer under `src` (a view), kept alike
  };
  struct GatherRt {
    std::optional<Staged> staged;    // a Load's result, until its gather
    std::optional<Pending> pending;  // an all-gather in flight
    std::optional<Copy> copy;        // its shard's copy in, until the host has seen it end
    bool prefetched = false;         // the current gather was issued ahead of its use
    bool awaiting_use = false;       // gathered, not yet waited on by an access
  };
  Result<tiers::Reservation> reserve_compute(std::uint32_t c);
  Status fill_slice(std::uint32_t c, const at::Tensor& slice);
  // slice <- src: on the copy stream when src is in host memory and slice is not.
  void copy_in(GatherRt& g, const at::Tensor& slice, const at::Tensor& src, std::optional<Staged> source);
  void compute_waits(GatherRt& g);
  // Copies the compute stream is ordered after and the device has finished are dropped,
  // with their staging buffers.
  void reap_copies();

  EngineCore& core_;
  std::function<Status()> make_room_;
  MasterOf master_;
  Edits edits_;
  std::vector<GatherRt> g_;
  tiers::CopyStream copies_;
  std::deque<std::uint32_t> copying_;  // chunks with a copy, oldest first
  std::vector<comm::Handle> refreshing_;
  std::uint64_t gathered_bytes_ = 0;
  io::BufferPool staging_;
  std::uint64_t buffer_bytes_ = 0;
  tiers::Reservation staging_res_;
};

}  // namespace strata::engine
