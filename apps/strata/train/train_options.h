// The options of `strata train`: the model, data and run settings, plus the strata
// Config they are merged into (DeepSpeed keys from --config, then the flags).
#pragma once

#include <cstdint>
#include <string>

#include <c10/core/DeviceType.h>

#include "strata/base/config.h"
#include "strata/base/status.h"

namespace CLI {
class App;
}

namespace strata::cli {

struct TrainOptions {
  // Run settings that are not DeepSpeed config keys.
  std::string config_path;
  int nproc = 2;
  std::string model = "tiny";
  std::int64_t seq_len = 128;
  std::int64_t steps = 300;
  double lr = 0;             // 0 = the config's, else by model size (default_lr)
  double min_lr = 0;         // 0 = lr / 10
  std::int64_t warmup = -1;  // -1 = default_warmup(): 10% of the steps, at least one per 10M parameters
  std::uint64_t seed = 42;
  std::int64_t eval_every = 50;
  std::int64_t eval_batches = 8;
  std::int64_t save_every = 0;  // 0 = only at the end
  bool no_save = false;         // no checkpoint at all
  int keep = 2;                 // checkpoints kept (the newest; 0 = all)
  std::string resume;           // a checkpoint, a checkpoints directory or a run; resolved to one of the first two
  bool overwrite = false;       // --out holds an earlier run: replace it
  std::string out;              // empty = runs/<date>-<time>
  std::string data;             // empty = Debian's fortunes corpus
  std::int64_t sample_bytes = -1;  // -1: 200, fewer for models over 100M parameters (a forward per byte)
  std::int64_t trace_step = -1;  // -1 = a steady-state step chosen by strata
  // auto (a GPU when strata was built with CUDA and one is visible), cpu or cuda.
  // resolve() sets `compute` from it: each rank then uses GPU LOCAL_RANK modulo the GPUs.
  std::string device = "auto";
  c10::DeviceType compute = c10::DeviceType::CPU;

  // Flags that override config keys, when given.
  std::string stage, offload_optimizer, offload_param, nvme_path, compute_budget, placement, precision;
  std::string micro_batch, grad_accum, clip;

  Config config;  // the merged result (after resolve())

  // Merges defaults, --config and flags into `config`; validates everything a user can
  // get wrong (before any rank starts).
  Status resolve(bool demo_defaults);
};

// Before any rank starts: an --out that holds an earlier run is refused unless the
// run is resumed (--resume) or replaced (--overwrite: its outputs are removed).
Status prepare_out_dir(const TrainOptions& o);

// Registers the flags on `cmd`; `opts` must outlive the app.
void add_train_flags(CLI::App& cmd, TrainOptions& opts);

}  // namespace strata::cli
