// Small collectives for checkpoints: strings across ranks, and one outcome for all.
// Internal to src/ckpt.
#pragma once

#include <string>
#include <vector>

#include "strata/base/status.h"
#include "strata/comm/communicator.h"

namespace strata::ckpt {

// Every rank's string, in rank order, on every rank.
Result<std::vector<std::string>> all_gather_strings(comm::Communicator& comm, const std::string& mine);

// Every rank learns every rank's outcome; the result is ok only when all were, else the
// lowest failing rank's error (its code and message, naming the rank) on every rank.
// Every rank must call it, whatever its own outcome, so a failure never hangs the others.
Status agree(comm::Communicator& comm, Status mine);

}  // namespace strata::ckpt
