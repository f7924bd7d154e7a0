// GPTConfig and GPT-2 names: the sizes of a GPT (strata/nn/models/gpt.h) and its
// parameters' names in GPT-2's layout, without LibTorch, so that what only plans, checks
// or names a model (the CLI's options, estimates, searches and checkpoint export)
// compiles without the C++ frontend's headers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "strata/base/status.h"

namespace strata::nn {

struct GPTConfig {
  std::string name;  // "tiny", "gpt2", "custom:4x128x4", ...
  std::int64_t layers = 4;
  std::int64_t hidden = 128;
  std::int64_t heads = 4;
  std::int64_t vocab = 256;
  std::int64_t context = 256;  // maximum sequence length (position embeddings)

  // Parameters of the model built from this config (tied head counted once).
  std::int64_t parameter_count() const;
  // Sizes in elements of every parameter, in the model's registration order.
  std::vector<std::int64_t> parameter_sizes() const;
};

// Parses a size name. vocab and context override the size's defaults when > 0.
Result<GPTConfig> gpt_config(const std::string& name, std::int64_t vocab = 256, std::int64_t context = 0);

// A GPT parameter's name in GPT-2's usual layout (Hugging Face's GPT2Model state dict):
// embeddings.wte.weight -> wte.weight, blocks.3.c_attn.weight -> h.3.attn.c_attn.weight,
// blocks.3.attn_proj -> h.3.attn.c_proj, blocks.3.c_fc / mlp_proj -> h.3.mlp.c_fc /
// c_proj, head.ln_f -> ln_f. GPT-2 keeps its projections as Conv1D, [in, out]: those
// weights are transposed (`transpose`). nullopt for a name outside the GPT.
struct Gpt2Name {
  std::string name;
  bool transpose = false;
};
std::optional<Gpt2Name> gpt2_name(const std::string& name);

}  // namespace strata::nn
