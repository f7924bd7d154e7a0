// Rendezvous: build the store and the process group from the environment.
//
//   STRATA_ASSIGN_OR_RETURN(auto comm, strata::comm::init_from_env({.timeout = 60s}));
//   log::info("rank {} of {}", comm->rank(), comm->world());
//
// Variables, as torchrun and `strata launch` set them:
//   RANK, WORLD_SIZE            required
//   LOCAL_RANK                  optional (defaults to RANK)
//   MASTER_ADDR, MASTER_PORT    the TCP store; rank 0 hosts it unless
//   TORCHELASTIC_USE_AGENT_STORE=True, set by torchrun's static rendezvous: the agent
//                               already hosts it and every rank connects as a client
//   STRATA_FILE_STORE=PATH      use a FileStore at PATH instead (tests; shared disk)
// The group is Gloo (CPU). On GPUs a caller builds its own NCCL group and passes it
// to Communicator::create.
#pragma once

#include <memory>
#include <string>

#include "strata/base/status.h"
#include "strata/comm/communicator.h"

namespace strata::comm {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  bool use_agent_store = false;
  int restart_count = 0;
  std::string file_store;  // non-empty: FileStore path
};

// Reads and checks the variables above. Missing RANK/WORLD_SIZE gives a single-rank env
// only when `allow_single` is true; otherwise it is an error that names the variable.
Result<DistEnv> read_dist_env(bool allow_single = false);

// Rendezvous, then a Gloo process group wrapped in a Communicator. Fails with a clear
// error (not a hang) if the peers do not show up within options.timeout.
Result<std::unique_ptr<Communicator>> init_from_env(CommOptions options = {}, bool allow_single = true);
Result<std::unique_ptr<Communicator>> init_from(const DistEnv& env, CommOptions options = {});

}  // namespace strata::comm
