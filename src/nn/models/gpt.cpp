#include "strata/nn/models/gpt.h"

#include <cmath>
#include <cstdlib>
#include <memory>
#include <unordered_map>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/irange.h>
#include <torch/nn/options/embedding.h>
#include <torch/nn/options/linear.h>
#include <torch/nn/options/normalization.h>

#include "strata/base/splitmix.h"
#include "strata/engine/deferred_init.h"
#include "strata/engine/module_hooks.h"
#include "strata/tiers/host_heap.h"

namespace strata::nn {

namespace {

struct NamedSize {
  const char* name;
  std::int64_t layers, hidden, heads, context;
};
constexpr NamedSize kSizes[] = {
    {"tiny", 8, 128, 4, 256},          {"gpt2", 12, 768, 12, 1024},      {"gpt2-medium", 24, 1024, 16, 1024},
    {"gpt2-large", 36, 1280, 20, 1024}, {"gpt2-xl", 48, 1600, 25, 1024},
};

Result<std::int64_t> parse_dim(const std::string& s, const std::string& whole) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v <= 0) {
    return make_error(ErrorCode::kInvalidArgument, "model '{}': '{}' is not a positive integer", whole, s);
  }
  return static_cast<std::int64_t>(v);
}

}  // namespace

std::vector<std::int64_t> GPTConfig::parameter_sizes() const {
  const std::int64_t h = hidden;
  std::vector<std::int64_t> sizes = {vocab * h, context * h};
  for (std::int64_t l = 0; l < layers; ++l) {
    // ln_1 (w, b), c_attn (w, b), attn_proj (w, b), ln_2 (w, b), c_fc (w, b), mlp_proj (w, b)
    for (std::int64_t s : {h, h, 3 * h * h, 3 * h, h * h, h, h, h, 4 * h * h, 4 * h, 4 * h * h, h}) sizes.push_back(s);
  }
  sizes.push_back(h);  // ln_f
  sizes.push_back(h);
  return sizes;
}

std::int64_t GPTConfig::parameter_count() const {
  std::int64_t n = 0;
  for (std::int64_t s : parameter_sizes()) n += s;
  return n;
}

Result<GPTConfig> gpt_config(const std::string& name, std::int64_t vocab, std::int64_t context) {
  GPTConfig cfg;
  cfg.name = name;
  bool found = false;
  for (const auto& s : kSizes) {
    if (name == s.name) {
      cfg.layers = s.layers, cfg.hidden = s.hidden, cfg.heads = s.heads, cfg.context = s.context;
      found = true;
    }
  }
  if (!found && name.rfind("custom:", 0) == 0) {
    const std::string dims = name.substr(7);
    const auto x1 = dims.find('x'), x2 = dims.find('x', x1 == std::string::npos ? x1 : x1 + 1);
    if (x1 == std::string::npos || x2 == std::string::npos) {
      return make_error(ErrorCode::kInvalidArgument, "model '{}': expected custom:<layers>x<hidden>x<heads>", name);
    }
    STRATA_ASSIGN_OR_RETURN(cfg.layers, parse_dim(dims.substr(0, x1), name));
    STRATA_ASSIGN_OR_RETURN(cfg.hidden, parse_dim(dims.substr(x1 + 1, x2 - x1 - 1), name));
    STRATA_ASSIGN_OR_RETURN(cfg.heads, parse_dim(dims.substr(x2 + 1), name));
    cfg.context = 1024;
    found = true;
  }
  if (!found) {
    return make_error(ErrorCode::kInvalidArgument,
                      "unknown model '{}'; use tiny, gpt2, gpt2-medium, gpt2-large, gpt2-xl or "
                      "custom:<layers>x<hidden>x<heads>",
                      name);
  }
  if (cfg.hidden % cfg.heads != 0) {
    return make_error(ErrorCode::kInvalidArgument, "model '{}': hidden size {} is not divisible by {} heads", name,
                      cfg.hidden, cfg.heads);
  }
  if (vocab > 0) cfg.vocab = vocab;
  if (context > 0) cfg.context = context;
  return cfg;
}

EmbeddingsImpl::EmbeddingsImpl(std::int64_t vocab, std::int64_t context, std::int64_t hidden) {
  wte = register_module("wte", torch::nn::Embedding(vocab, hidden));
  wpe = register_module("wpe", torch::nn::Embedding(context, hidden));
}

at::Tensor EmbeddingsImpl::forward(const at::Tensor& tokens) {
  const std::int64_t seq = tokens.size(1);
  at::Tensor pos = at::arange(seq, tokens.options().dtype(at::kLong));
  return wte->forward(tokens) + wpe->forward(pos).unsqueeze(0);
}

BlockImpl::BlockImpl(std::int64_t hidden, std::int64_t heads) : heads_(heads) {
  ln_1 = register_module("ln_1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
  c_attn = register_module("c_attn", torch::nn::Linear(hidden, 3 * hidden));
  attn_proj = register_module("attn_proj", torch::nn::Linear(hidden, hidden));
  ln_2 = register_module("ln_2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
  c_fc = register_module("c_fc", torch::nn::Linear(hidden, 4 * hidden));
  mlp_proj = register_module("mlp_proj", torch::nn::Linear(4 * hidden, hidden));
}

at::Tensor BlockImpl::forward(const at::Tensor& x) {
  const std::int64_t b = x.size(0), t = x.size(1), h = x.size(2), d = h / heads_;
  // Causal self-attention on the normalised input.
  std::vector<at::Tensor> qkv = c_attn->forward(ln_1->forward(x)).split(h, 2);
  auto heads = [&](const at::Tensor& y) { return y.view({b, t, heads_, d}).transpose(1, 2); };
  at::Tensor q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);
  at::Tensor att = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(d)));
  at::Tensor mask = at::ones({t, t}, x.options().dtype(at::kBool)).triu(1);
  att = at::softmax(att.masked_fill(mask, -std::numeric_limits<float>::infinity()), -1);
  at::Tensor y = at::matmul(att, v).transpose(1, 2).contiguous().view({b, t, h});
  at::Tensor r = x + attn_proj->forward(y);
  return r + mlp_proj->forward(at::gelu(c_fc->forward(ln_2->forward(r)), "tanh"));
}

HeadImpl::HeadImpl(std::int64_t hidden, torch::nn::Embedding tied) : tied_(std::move(tied)) {
  ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
}

at::Tensor HeadImpl::forward(const at::Tensor& x) { return at::matmul(ln_f->forward(x), tied_->weight.t()); }

GPTImpl::GPTImpl(const GPTConfig& cfg, bool deferred) : cfg_(cfg) {
  // Deferred: each unit's parameters lose their bytes as soon as it exists, so building
  // holds one unit at a time (deferred_init.h).
  auto made = [deferred](torch::nn::Module& unit) {
    if (!deferred) return;
    engine::defer_parameters(unit);
    tiers::release_free_heap();  // Note [host heap]
  };
  embeddings = register_module("embeddings", Embeddings(cfg.vocab, cfg.context, cfg.hidden));
  made(*embeddings);
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (std::int64_t l = 0; l < cfg.layers; ++l) {
    blocks->push_back(Block(cfg.hidden, cfg.heads));
    made(*blocks[l]);
  }
  head = register_module("head", Head(cfg.hidden, embeddings->wte));
  made(*head);
}

at::Tensor GPTImpl::forward(const at::Tensor& tokens) {
  at::Tensor x = engine::forward(embeddings, tokens);
  for (const auto& block : *blocks) x = engine::forward_as<BlockImpl>(block, x);
  return engine::forward(head, x);
}

at::Tensor GPTImpl::loss(const at::Tensor& tokens, const at::Tensor& targets) {
  at::Tensor logits = forward(tokens);
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat), targets.reshape({-1}));
}

namespace {

// Each parameter draws from its own generator, seeded by the model seed and its name,
// so its values do not depend on the order parameters are made in: eager and deferred
// construction (which makes them chunk by chunk) agree bit for bit.
std::uint64_t param_seed(std::uint64_t seed, const std::string& name) {
  std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (const char ch : name) h = (h ^ static_cast<unsigned char>(ch)) * 0x100000001b3ull;
  return splitmix64(seed ^ splitmix64(h));
}

}  // namespace

void GPTImpl::init_param(const std::string& name, at::Tensor& t, std::uint64_t seed) const {
  at::NoGradGuard no_grad;
  const double std = 0.02, proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(cfg_.layers));
  const bool is_bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
  const bool is_norm = name.find("ln_") != std::string::npos;
  if (is_norm) {
    t.fill_(is_bias ? 0.0 : 1.0);
  } else if (is_bias) {
    t.zero_();
  } else {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(param_seed(seed, name));
    t.normal_(0.0, name.find("_proj.weight") != std::string::npos ? proj_std : std, gen);
  }
}

void GPTImpl::init_weights(std::uint64_t seed) {
  for (auto& p : named_parameters(/*recurse=*/true)) {
    at::Tensor t = p.value();
    init_param(p.key(), t, seed);
  }
}

engine::ParamInit GPTImpl::initializer(std::uint64_t seed) const {
  auto names = std::make_shared<std::unordered_map<const void*, std::string>>();
  for (const auto& p : named_parameters(/*recurse=*/true)) names->emplace(p.value().unsafeGetTensorImpl(), p.key());
  return [this, names, seed](const at::Tensor& param, at::Tensor& out) {
    auto it = names->find(param.unsafeGetTensorImpl());
    TORCH_CHECK(it != names->end(), "GPT initializer: the tensor is not a parameter of this model");
    init_param(it->second, out, seed);
  };
}

std::optional<Gpt2Name> gpt2_name(const std::string& name) {
  if (name == "embeddings.wte.weight") return Gpt2Name{"wte.weight"};
  if (name == "embeddings.wpe.weight") return Gpt2Name{"wpe.weight"};
  if (name.starts_with("head.ln_f.")) return Gpt2Name{name.substr(5)};
  if (!name.starts_with("blocks.")) return std::nullopt;
  const auto dot = name.find('.', 7);
  if (dot == std::string::npos) return std::nullopt;
  const std::string layer = "h." + name.substr(7, dot - 7) + ".";
  const auto last = name.rfind('.');
  const std::string module = name.substr(dot + 1, last - dot - 1), leaf = name.substr(last + 1);
  const bool weight = leaf == "weight";
  if (module == "ln_1" || module == "ln_2") return Gpt2Name{layer + module + "." + leaf};
  if (module == "c_attn") return Gpt2Name{layer + "attn.c_attn." + leaf, weight};
  if (module == "attn_proj") return Gpt2Name{layer + "attn.c_proj." + leaf, weight};
  if (module == "c_fc") return Gpt2Name{layer + "mlp.c_fc." + leaf, weight};
  if (module == "mlp_proj") return Gpt2Name{layer + "mlp.c_proj." + leaf, weight};
  return std::nullopt;
}

}  // namespace strata::nn
