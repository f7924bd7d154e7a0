// Note [optimizer state dicts]: torch.optim's state_dict() and load_state_dict() for the
// optimizers of the engine's fused kernels (strata.optim's, and initialize's), so that
// the checkpoint code users write for plain PyTorch saves and restores Adam's moments
// instead of an empty state (what torch.optim.Optimizer's own methods found: the state
// lives in the engine's shards, not in the Python object).
//
// Both are collective and whole-model sized. state_dict: every rank gathers every chunk's
// master and state tensors (Engine::consolidate_state_dict, once per rank as the
// recipient) and holds the full state afterwards, as torch's state_dict() of an unsharded
// optimizer does. load_state_dict: every rank gathers the masters and cuts its shards of
// master and state from them and the full state (Engine::load_state_dict).
// Here the state is per engine parameter group, each group's trainable parameters in the
// engine's params() order, each parameter's state None or a dict by torch.optim's names
// ("step" as an int); python/strata/_optim_state.py maps it to torch's numbering.
#pragma once

#include <string>
#include <vector>

#include <pybind11/pybind11.h>

namespace strata::comm {
class Communicator;
}
namespace strata::engine {
class Engine;
}

namespace strata::python {

// Every rank: [[state or None per trainable parameter] per group].
pybind11::list optimizer_state(engine::Engine& eng, comm::Communicator& comm);
// Every rank, with the same `groups`: per group, (engine parameter index, state or None)
// for each of its trainable parameters in params() order, the states as optimizer_state
// gives them; `names`: the parameters', for errors. The engine's state becomes theirs; the
// master weights and the groups' lrs stay as they are. Holds the masters (all of them,
// fp32) and Engine::load_state_dict's shards while it runs, besides the caller's state.
void load_optimizer_state(engine::Engine& eng, const pybind11::list& groups,
                          const std::vector<std::vector<std::string>>& names);

}  // namespace strata::python
