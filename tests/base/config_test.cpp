#include "strata/base/config.h"

#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace strata {
namespace {

using nlohmann::json;

Result<Config> parse(std::string_view text, std::vector<std::string>* warnings = nullptr) {
  std::vector<std::string> local;
  return Config::parse(text, "test.json", warnings != nullptr ? warnings : &local);
}

std::string error_of(std::string_view text) {
  auto r = parse(text);
  EXPECT_FALSE(r) << "expected an error for " << text;
  return r ? std::string() : r.error().to_string();
}

TEST(Config, DefaultsAreValid) {
  auto cfg = parse("{}");
  ASSERT_TRUE(cfg) << cfg.error();
  EXPECT_EQ(*cfg, Config{});
}

TEST(Config, ReadsATypicalDeepSpeedZero3OffloadConfig) {
  const char* text = R"({
    "train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 8,
    "gradient_clipping": 1.0,
    "bf16": {"enabled": true},
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}},
    "zero_optimization": {
      "stage": 3, "overlap_comm": true, "contiguous_gradients": true,
      "reduce_bucket_size": 5e8, "stage3_prefetch_bucket_size": "5e7",
      "stage3_param_persistence_threshold": 1e5, "stage3_max_live_parameters": "1G",
      "offload_optimizer": {"device": "nvme", "nvme_path": "/local_nvme", "pipeline_read": true},
      "offload_param": {"device": "cpu"}
    },
    "aio": {"block_size": "1MiB", "queue_depth": 32, "single_submit": false, "overlap_events": true},
    "strata": {"placement": "auto", "compute_budget": "2GiB"}
  })";
  auto cfg = parse(text);
  ASSERT_TRUE(cfg) << cfg.error();
  EXPECT_TRUE(cfg->bf16.enabled);
  EXPECT_EQ(cfg->optimizer.type, OptimizerType::kAdamW);
  EXPECT_DOUBLE_EQ(cfg->optimizer.betas[1], 0.95);
  EXPECT_EQ(cfg->zero_optimization.stage, 3);
  EXPECT_EQ(cfg->zero_optimization.reduce_bucket_size, 500'000'000u);
  EXPECT_EQ(cfg->zero_optimization.stage3_prefetch_bucket_size, 50'000'000u);
  EXPECT_EQ(cfg->zero_optimization.stage3_max_live_parameters, 1'000'000'000u);
  EXPECT_EQ(cfg->zero_optimization.offload_optimizer.device, OffloadDevice::kNvme);
  EXPECT_EQ(cfg->zero_optimization.offload_optimizer.nvme_path, "/local_nvme");
  EXPECT_EQ(cfg->zero_optimization.offload_param.device, OffloadDevice::kCpu);
  EXPECT_EQ(cfg->aio.block_size, 1u << 20);
  EXPECT_EQ(cfg->aio.queue_depth, 32);
  EXPECT_EQ(cfg->strata.placement, Placement::kAuto);
  EXPECT_EQ(cfg->strata.compute_budget, 2ull << 30);
  EXPECT_TRUE(cfg->resolve_batch(2));
  EXPECT_FALSE(cfg->resolve_batch(3));
}

TEST(Config, UnknownKeySuggestsTheClosestValidKey) {
  const std::string e = error_of(R"({"zero_optimization": {"stage3_prefetch_bucket_sz": 1}})");
  EXPECT_NE(e.find("zero_optimization.stage3_prefetch_bucket_sz: unknown key; did you mean "
                   "stage3_prefetch_bucket_size?"), std::string::npos) << e;
  EXPECT_NE(e.find("path=test.json"), std::string::npos) << e;
}

TEST(Config, KeyInTheWrongSectionPointsToTheRightOne) {
  const std::string e = error_of(R"({"stage": 2})");
  EXPECT_NE(e.find("stage: unknown key; did you mean zero_optimization.stage?"), std::string::npos) << e;
}

TEST(Config, FarOffUnknownKeyListsValidKeys) {
  const std::string e = error_of(R"({"aio": {"completely_different": 1}})");
  EXPECT_NE(e.find("valid keys in aio: block_size"), std::string::npos) << e;
}

TEST(Config, WrongTypeNamesPathAndValue) {
  const std::string e = error_of(R"({"fp16": {"enabled": "yes"}})");
  EXPECT_NE(e.find("fp16.enabled: expected true or false, got string \"yes\""), std::string::npos) << e;
  const std::string e2 = error_of(R"({"zero_optimization": {"reduce_bucket_size": [1]}})");
  EXPECT_NE(e2.find("zero_optimization.reduce_bucket_size: expected a whole number or size string, got array"),
            std::string::npos) << e2;
}

TEST(Config, OutOfRangeNamesPathValueAndRange) {
  const std::string e = error_of(R"({"zero_optimization": {"stage": 4}})");
  EXPECT_NE(e.find("zero_optimization.stage: 4 is out of range; allowed 0..3"), std::string::npos) << e;
  const std::string e2 = error_of(R"({"optimizer": {"params": {"betas": [0.9, 1.5]}}})");
  EXPECT_NE(e2.find("optimizer.params.betas: 1.5 is out of range; allowed 0..1"), std::string::npos) << e2;
  const std::string e3 = error_of(R"({"fp16": {"min_loss_scale": 0}})");
  EXPECT_NE(e3.find("allowed > 0..inf"), std::string::npos) << e3;
  EXPECT_NE(error_of(R"({"zero_optimization": {"stage": 1.5}})").find("expected a whole number"), std::string::npos);
}

TEST(Config, BadEnumListsChoices) {
  const std::string e = error_of(R"({"zero_optimization": {"offload_optimizer": {"device": "gpu"}}})");
  EXPECT_NE(e.find("\"gpu\" is not one of: none, cpu, nvme"), std::string::npos) << e;
  auto ok = parse(R"({"optimizer": {"type": "adamw"}})");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->optimizer.type, OptimizerType::kAdamW);
}

TEST(Config, BadSizeStringIsAnError) {
  const std::string e = error_of(R"({"strata": {"compute_budget": "2 parsecs"}})");
  EXPECT_NE(e.find("strata.compute_budget: '2 parsecs' has an unknown unit"), std::string::npos) << e;
}

// Issue 18: input that used to be accepted silently or reported wrongly.
TEST(Config, NumbersBeyondTheKeysTypeAreRefusedNotWrapped) {
  // 1e30 used to become 0 and pass with "ok (0 warnings)".
  const std::string e = error_of(R"({"zero_optimization": {"reduce_bucket_size": 1e30}})");
  EXPECT_NE(e.find("zero_optimization.reduce_bucket_size: 1e+30 does not fit in a 64-bit unsigned integer"),
            std::string::npos) << e;
  EXPECT_NE(error_of(R"({"zero_optimization": {"reduce_bucket_size": 18446744073709551616}})").find("does not fit"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"fp16": {"loss_scale_window": 1e12}})").find("does not fit in a 32-bit integer"),
            std::string::npos);
  auto big = parse(R"({"zero_optimization": {"reduce_bucket_size": 9007199254740992}})");  // 2^53: fits
  ASSERT_TRUE(big) << big.error();
  EXPECT_EQ(big->zero_optimization.reduce_bucket_size, 9007199254740992ull);
}

// Found by fuzz_config: a number beyond a double's range aborted the process.
TEST(Config, ANumberBeyondADoubleIsAnErrorNotACrash) {
  const std::string e = error_of(R"({"optimizer": {"params": {"lr": 3e1048576}}})");
  EXPECT_NE(e.find("not valid JSON: [json.exception.out_of_range.406] number overflow parsing '3e1048576'"),
            std::string::npos) << e;
}

TEST(Config, ADuplicateKeyIsAnError) {
  const std::string e = error_of(R"({"zero_optimization": {"stage": 2, "overlap_comm": true, "stage": 3}})");
  EXPECT_NE(e.find("zero_optimization.stage: given twice"), std::string::npos) << e;
  EXPECT_NE(error_of(R"({"bf16": {"enabled": true}, "bf16": {"enabled": false}})").find("bf16: given twice"),
            std::string::npos);
  // The same key in different objects is fine.
  EXPECT_TRUE(parse(R"({"fp16": {"enabled": false}, "bf16": {"enabled": true}})"));
}

TEST(Config, AWordWhereANumberBelongsSaysSo) {
  const std::string e = error_of(R"({"zero_optimization": {"stage": "three"}})");
  EXPECT_NE(e.find("zero_optimization.stage: expected a whole number or a size such as \"64MiB\", got string \"three\""),
            std::string::npos) << e;
}

TEST(Config, ReportsEveryErrorAtOnce) {
  const std::string e = error_of(R"({"zero_optimization": {"stage": 9, "overlap_com": true}, "fp16": 3})");
  EXPECT_NE(e.find("3 errors"), std::string::npos) << e;
}

TEST(Config, RecognisedButUnusedDeepSpeedKeysWarn) {
  std::vector<std::string> w;
  auto cfg = parse(R"({"steps_per_print": 10, "zero_optimization": {"allgather_bucket_size": 5e8, "zero_quantized_weights": true},
                       "activation_checkpointing": {"partition_activations": true}})", &w);
  ASSERT_TRUE(cfg) << cfg.error();
  ASSERT_EQ(w.size(), 4u);
  std::string all;
  for (auto& s : w) all += s + "\n";
  EXPECT_NE(all.find("zero_optimization.zero_quantized_weights: recognised but not implemented"), std::string::npos) << all;
  EXPECT_NE(all.find("activation_checkpointing: recognised but not implemented"), std::string::npos) << all;
  EXPECT_NE(all.find("steps_per_print: recognised but not used"), std::string::npos) << all;
}

TEST(Config, AutoKeepsTheDefault) {
  auto cfg = parse(R"({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"reduce_bucket_size": "auto"}})");
  ASSERT_TRUE(cfg) << cfg.error();
  EXPECT_EQ(cfg->train_micro_batch_size_per_gpu, 1);
  EXPECT_EQ(cfg->zero_optimization.reduce_bucket_size, ZeroConfig{}.reduce_bucket_size);
}

TEST(Config, CrossFieldRules) {
  EXPECT_NE(error_of(R"({"fp16": {"enabled": true}, "bf16": {"enabled": true}})").find("choose one"), std::string::npos);
  EXPECT_NE(error_of(R"({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}})")
                .find("offload_param.nvme_path: required"), std::string::npos);
  EXPECT_NE(error_of(R"({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}})").find("needs stage 3"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"aio": {"block_size": 5000}})").find("not a multiple of 4096"), std::string::npos);
}

TEST(Config, InvalidJsonGivesLineAndColumn) {
  const std::string e = error_of("{\n  \"fp16\": {\n    \"enabled\": tru\n  }\n}");
  EXPECT_NE(e.find("not valid JSON at line 3"), std::string::npos) << e;
}

TEST(Config, CommentsAreAllowed) {
  auto cfg = parse("{ // ZeRO-2\n \"zero_optimization\": {\"stage\": 2} }");
  ASSERT_TRUE(cfg) << cfg.error();
  EXPECT_EQ(cfg->zero_optimization.stage, 2);
}

TEST(Config, RoundTripsThroughNormalizedJson) {
  Config c;
  c.train_micro_batch_size_per_gpu = 3;
  c.gradient_clipping = 0.5;
  c.fp16.enabled = true;
  c.fp16.hysteresis = 4;
  c.optimizer.type = OptimizerType::kSGD;
  c.optimizer.momentum = 0.9;
  c.optimizer.nesterov = true;
  c.zero_optimization.stage = 3;
  c.zero_optimization.offload_param.device = OffloadDevice::kNvme;
  c.zero_optimization.offload_param.nvme_path = "/tmp/x";
  c.aio.queue_depth = 64;
  c.strata.placement = Placement::kAuto;
  c.strata.job_name = "demo";
  c.strata.offload_optim_frac = 0.25;
  const json j = c.to_json();
  EXPECT_EQ(j["zero_optimization"]["offload_param"]["device"], "nvme");
  EXPECT_EQ(j["optimizer"]["type"], "SGD");
  std::vector<std::string> w;
  auto back = Config::from_json(j, &w);
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(*back, c);
  EXPECT_TRUE(w.empty());
  EXPECT_EQ(back->to_json(), j);
}

TEST(Config, LoadReportsMissingFile) {
  auto r = Config::load("/nonexistent/strata.json");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(r.error().context().path, "/nonexistent/strata.json");
}

TEST(Config, AdamFollowsDeepSpeedAdamWMode) {
  auto a = parse(R"({"optimizer": {"type": "Adam"}})");
  EXPECT_EQ(a->optimizer.effective_type(), OptimizerType::kAdamW);
  auto b = parse(R"({"optimizer": {"type": "Adam", "params": {"adam_w_mode": false}}})");
  EXPECT_EQ(b->optimizer.effective_type(), OptimizerType::kAdam);
}

}  // namespace
}  // namespace strata

namespace strata {
namespace {

// docs/config.md holds the generated table between markers; keep it in step with the
// schema, notes included (a key's note once said "not implemented" after it was).
TEST(ConfigDocs, TheTableIsTheGeneratedOne) {
  std::ifstream in(std::string(STRATA_TEST_SOURCE_DIR) + "/docs/config.md");
  ASSERT_TRUE(in) << "docs/config.md missing";
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  const std::string begin = "<!-- keys:begin -->\n", end = "<!-- keys:end -->";
  const std::size_t a = doc.find(begin), b = doc.find(end);
  ASSERT_TRUE(a != std::string::npos && b != std::string::npos && a < b) << "docs/config.md lacks the key markers";
  const std::string table = doc.substr(a + begin.size(), b - a - begin.size());
  for (const ConfigKey& k : config_keys()) {
    EXPECT_NE(table.find("| `" + k.path + "` | " + k.type + " |"), std::string::npos) << k.path << " is missing";
  }
  EXPECT_EQ(table, config_keys_markdown()) << "docs/config.md is stale; regenerate with `strata config keys --markdown`";
}

// DeepSpeed's Lion block (its CPU Lion and FusedLion take lr, betas, weight_decay).
TEST(Config, LionTakesDeepSpeedsLionBlock) {
  auto c = parse(R"({"optimizer": {"type": "Lion", "params": {"lr": 1e-4, "betas": [0.9, 0.99], "weight_decay": 0.01}}})");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->optimizer.effective_type(), OptimizerType::kLion);
  EXPECT_EQ(c->optimizer.lr, 1e-4);
  EXPECT_EQ(c->optimizer.betas[1], 0.99);
  EXPECT_EQ(c->optimizer.weight_decay, 0.01);
  EXPECT_EQ(to_string(c->optimizer.type), "Lion");
  EXPECT_NE(error_of(R"({"optimizer": {"type": "Lion", "params": {"betas": [0.9, 1.5]}}})").find("betas"),
            std::string::npos);
}

// DeepSpeed's torch_autocast block: enabled and dtype by any of DeepSpeed's names for
// bf16; fp16 (no loss scaling here) and fp32 (no effect) are refused with the reason, as
// is autocast beside a precision section (DeepSpeed asserts that too);
// lower_precision_safe_modules is accepted with a warning.
TEST(Config, TorchAutocastTakesDeepSpeedsBlock) {
  EXPECT_FALSE(parse("{}")->torch_autocast.enabled);
  for (const char* name : {"bfloat16", "bf16", "torch.bfloat16"}) {
    auto c = parse(fmt::format(R"({{"torch_autocast": {{"enabled": true, "dtype": "{}"}}}})", name));
    ASSERT_TRUE(c) << name;
    EXPECT_TRUE(c->torch_autocast.enabled);
    EXPECT_EQ(c->torch_autocast.dtype, AutocastDtype::kBf16);
  }
  std::vector<std::string> warnings;
  auto c = parse(R"({"torch_autocast": {"enabled": true, "lower_precision_safe_modules": ["torch.nn.Linear"]}})",
                 &warnings);
  ASSERT_TRUE(c);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("reduced in fp32"), std::string::npos) << warnings[0];
  EXPECT_NE(error_of(R"({"torch_autocast": {"enabled": true}, "bf16": {"enabled": true}})")
                .find("torch_autocast.enabled and bf16.enabled: choose one"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"torch_autocast": {"enabled": true, "dtype": "half"}})").find("needs loss scaling"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"torch_autocast": {"enabled": true, "dtype": "float32"}})").find("fp32 already"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"torch_autocast": {"enabled": true, "dtype": "int8"}})").find("torch_autocast.dtype"),
            std::string::npos);
  // Off, the dtype is not checked: a config that names fp16 but does not enable autocast runs.
  EXPECT_TRUE(parse(R"({"torch_autocast": {"enabled": false, "dtype": "fp16"}})"));
}

}  // namespace
}  // namespace strata
