#include "strata/nn/models/gpt.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adam.h>

#include "strata/comm/torch_compat.h"

namespace strata::nn {
namespace {

GPTConfig tiny() {
  auto cfg = gpt_config("custom:2x32x4", 64, 16);
  EXPECT_TRUE(cfg);
  return *cfg;
}

TEST(GPT, Gpt2HasTheKnownParameterCount) {
  auto cfg = gpt_config("gpt2", 50257, 1024);
  ASSERT_TRUE(cfg);
  EXPECT_EQ(cfg->parameter_count(), 124'439'808);
  GPT model(*cfg);
  std::int64_t n = 0;
  for (const auto& p : model->parameters()) n += p.numel();
  EXPECT_EQ(n, 124'439'808);
}

TEST(GPT, ParameterSizesFollowRegistrationOrder) {
  for (const char* name : {"tiny", "custom:3x48x6"}) {
    auto cfg = gpt_config(name, 256);
    ASSERT_TRUE(cfg);
    GPT model(*cfg);
    auto params = model->parameters();
    auto sizes = cfg->parameter_sizes();
    ASSERT_EQ(params.size(), sizes.size()) << name;
    for (std::size_t i = 0; i < sizes.size(); ++i) EXPECT_EQ(params[i].numel(), sizes[i]) << name << " param " << i;
  }
}

TEST(GPT, NamedSizesAndErrors) {
  EXPECT_EQ(gpt_config("gpt2-xl")->hidden, 1600);
  EXPECT_EQ(gpt_config("gpt2-medium")->layers, 24);
  EXPECT_EQ(gpt_config("custom:6x384x6")->heads, 6);
  for (const char* bad : {"gpt3", "custom:4x128", "custom:4x130x4", "custom:0x128x4", "custom:ax1x1"}) {
    auto r = gpt_config(bad);
    EXPECT_FALSE(r) << bad;
  }
  EXPECT_NE(gpt_config("gpt3").error().message().find("unknown model 'gpt3'"), std::string::npos);
}

TEST(GPT, ForwardShapesAndCausality) {
  GPT model(tiny());
  model->init_weights(1);
  at::Tensor tokens = at::randint(0, 64, {2, 16}, at::kLong);
  at::Tensor logits = model->forward(tokens);
  EXPECT_EQ(logits.sizes(), (std::vector<std::int64_t>{2, 16, 64}));
  // Changing the last token must not change any earlier position's logits.
  at::Tensor changed = tokens.clone();
  changed.index_put_({0, 15}, (tokens.index({0, 15}).item<std::int64_t>() + 1) % 64);
  at::Tensor l2 = model->forward(changed);
  EXPECT_TRUE(at::equal(logits.slice(1, 0, 15), l2.slice(1, 0, 15)));
  EXPECT_FALSE(at::equal(logits.slice(1, 15, 16), l2.slice(1, 15, 16)));
}

TEST(GPT, HeadIsTiedToTheTokenEmbedding) {
  GPT model(tiny());
  EXPECT_EQ(model->parameters().size(), tiny().parameter_sizes().size());  // counted once
  model->init_weights(3);
  at::Tensor tokens = at::randint(0, 64, {1, 8}, at::kLong);
  at::Tensor loss = model->loss(tokens.slice(1, 0, 7), tokens.slice(1, 1, 8));
  loss.backward();
  // The embedding's gradient includes the head's contribution: rows of tokens never
  // seen as input still get gradient through the LM head.
  EXPECT_GT(model->embeddings->wte->weight.grad().abs().sum(1).gt(0).sum().item<std::int64_t>(), 7);
}

TEST(GPT, InitIsDeterministicPerSeed) {
  GPT a(tiny()), b(tiny()), c(tiny());
  a->init_weights(42), b->init_weights(42), c->init_weights(43);
  auto pa = a->parameters(), pb = b->parameters(), pc = c->parameters();
  bool any_diff = false;
  for (std::size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(at::equal(pa[i], pb[i])) << i;
    any_diff |= !at::equal(pa[i], pc[i]);
  }
  EXPECT_TRUE(any_diff);
  // GPT-2's scheme: std 0.02, smaller for the residual projections, zero biases.
  EXPECT_NEAR(a->embeddings->wte->weight.std().item<double>(), 0.02, 0.002);
  EXPECT_NEAR(a->blocks->ptr<BlockImpl>(0)->mlp_proj->weight.std().item<double>(), 0.02 / std::sqrt(4.0), 0.002);
  EXPECT_EQ(a->blocks->ptr<BlockImpl>(0)->c_fc->bias.abs().sum().item<double>(), 0.0);
}

TEST(GPT, LearnsAFixedBatch) {
  GPT model(tiny());
  model->init_weights(7);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(3e-3));
  at::Tensor data = at::arange(0, 17, at::kLong).remainder(5).unsqueeze(0).repeat({4, 1});
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    torch_compat::zero_grad_keep(opt);
    at::Tensor loss = model->loss(data.slice(1, 0, 16), data.slice(1, 1, 17));
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.25 * first);
}

}  // namespace
}  // namespace strata::nn
