// UsesParams: how a module tells strata about parameters it uses but does not own.
//
//   class HeadImpl : public torch::nn::Module, public strata::engine::UsesParams {
//     std::vector<at::Tensor> used_params() const override { return {tied_->weight}; }
//   };
//
// ZeRO-3 gathers a unit's own parameters before it runs. A module that reads another
// module's parameter (a tied LM head reading the token embedding) must list it here,
// or the parameter would not be gathered when the module runs.
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

namespace strata::engine {

class UsesParams {
 public:
  virtual ~UsesParams() = default;
  virtual std::vector<at::Tensor> used_params() const = 0;
};

}  // namespace strata::engine
