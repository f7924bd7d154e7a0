// Trainer: one rank of `strata train` — the GPT model on a byte corpus, under the
// sharded optimizer (stages 0-2) or the ZeRO-3 engine, with evaluation, checkpoints,
// metrics.jsonl, a step trace, the progress line and summaries (rank 0), and a sample.
#pragma once

#include <memory>

#include "strata/base/status.h"
#include "train_options.h"

namespace strata::comm {
class Communicator;
}

namespace strata::cli {

// Runs the whole job on this rank. Every rank calls it; rank 0 writes the outputs.
Status run_training(const TrainOptions& options, comm::Communicator& comm);

}  // namespace strata::cli
