// A GPT-2-style decoder: token + position embeddings, pre-LayerNorm blocks with causal
// self-attention and a GELU MLP, a final LayerNorm, and an LM head tied to the token
// embedding.
//
//   STRATA_ASSIGN_OR_RETURN(auto cfg, strata::nn::gpt_config("tiny", /*vocab=*/256));
//   strata::nn::GPT model(cfg);
//   model->init_weights(/*seed=*/42);                 // deterministic
//   at::Tensor logits = model->forward(tokens);        // [batch, seq, vocab]
//   at::Tensor loss = model->loss(tokens, targets);    // mean cross-entropy
//
// Sizes: "tiny" (CI), "gpt2" (12x768x12), "gpt2-medium" (24x1024x16), "gpt2-large"
// (36x1280x20), "gpt2-xl" (48x1600x25), or "custom:<layers>x<hidden>x<heads>". The
// vocabulary is separate: strata train uses byte-level tokens (256); GPT-2's own is
// 50257 (then "gpt2" has 124,439,808 parameters).
//
// The embeddings, each block (a ModuleList element, through engine::forward_as) and the
// head are called through strata::engine's forward hooks, so that at stage 3 the engine
// gathers their parameters just in time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "strata/base/status.h"
#include "strata/engine/deferred_init.h"
#include "strata/engine/uses_params.h"
#include "strata/nn/models/gpt_config.h"

namespace strata::nn {

// Token + position embedding: one unit, so the two tables are gathered together.
class EmbeddingsImpl : public torch::nn::Module {
 public:
  EmbeddingsImpl(std::int64_t vocab, std::int64_t context, std::int64_t hidden);
  at::Tensor forward(const at::Tensor& tokens);
  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
};
TORCH_MODULE(Embeddings);

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(std::int64_t hidden, std::int64_t heads);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  torch::nn::Linear c_attn{nullptr}, attn_proj{nullptr}, c_fc{nullptr}, mlp_proj{nullptr};

 private:
  std::int64_t heads_;
};
TORCH_MODULE(Block);

// The final LayerNorm and the tied LM head: one unit that reads the token embedding.
class HeadImpl : public torch::nn::Module, public engine::UsesParams {
 public:
  HeadImpl(std::int64_t hidden, torch::nn::Embedding tied);
  at::Tensor forward(const at::Tensor& x);
  std::vector<at::Tensor> used_params() const override { return {tied_->weight}; }
  torch::nn::LayerNorm ln_f{nullptr};

 private:
  torch::nn::Embedding tied_;  // not registered: its parameter belongs to Embeddings
};
TORCH_MODULE(Head);

class GPTImpl : public torch::nn::Module {
 public:
  // deferred: every unit's parameters lose their bytes as it is built; the engine makes
  // their values with initializer(seed) (deferred_init.h).
  explicit GPTImpl(const GPTConfig& cfg, bool deferred = false);
  // tokens: int64 [batch, seq] -> logits [batch, seq, vocab]
  at::Tensor forward(const at::Tensor& tokens);
  // Mean cross-entropy of next-token prediction.
  at::Tensor loss(const at::Tensor& tokens, const at::Tensor& targets);
  // GPT-2's initialisation from a seed: N(0, 0.02) weights, residual projections
  // scaled by 1/sqrt(2*layers), zero biases, unit LayerNorm gains. Same seed, same bits;
  // each parameter's values depend only on the seed and its name.
  void init_weights(std::uint64_t seed);
  // The same values for one parameter (by its name in named_parameters()), into `t`.
  void init_param(const std::string& name, at::Tensor& t, std::uint64_t seed) const;
  // init_param for the engine: deferred construction's values equal init_weights(seed).
  // The model must outlive the engine's setup.
  engine::ParamInit initializer(std::uint64_t seed) const;

  const GPTConfig& config() const { return cfg_; }
  Embeddings embeddings{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  Head head{nullptr};

 private:
  GPTConfig cfg_;
};
TORCH_MODULE(GPT);

}  // namespace strata::nn
