// Deferred construction: a model larger than host memory, built one unit at a time.
//
//   nn::GPT model(cfg, /*deferred=*/true);  // each unit's parameters lose their bytes as it is built
//   STRATA_ASSIGN_OR_RETURN(auto eng, engine::shard(*model, comm, o, {}, model->initializer(seed)));
//
// A deferred parameter keeps its shape, dtype and requires_grad but has no bytes. The
// engine makes its values with the initializer (ParamInit, below) when setup packs
// its chunk, and moves the chunk to its tier before the next one is made (Note
// [streaming setup] in src/engine/engine.cpp), so host memory during construction holds
// one unit (while it is built) or one chunk (while it is placed), never the model. An
// initializer that gives each parameter the values the eager initialization would (GPT
// seeds each parameter by name) makes deferred and eager construction equal, bit for bit.
#pragma once

#include <cstdint>
#include <functional>

#include <ATen/core/Tensor.h>

namespace torch::nn {
class Module;
}

namespace strata::engine {

// The values of a deferred parameter: fills `out`, an fp32 tensor of `param`'s shape.
// The same parameter must always get the same values.
using ParamInit = std::function<void(const at::Tensor& param, at::Tensor& out)>;

// Frees the bytes of every parameter of `module` and its children, keeping each
// parameter object (and its shape). Returns the bytes freed.
std::uint64_t defer_parameters(torch::nn::Module& module);

// True for a parameter with elements but no bytes.
bool is_deferred(const at::Tensor& param);

}  // namespace strata::engine
