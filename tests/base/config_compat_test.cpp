// DeepSpeed configs as real projects write them: every class of key that strata used to
// refuse or drop (issue 17) is accepted, mapped as DeepSpeed maps it, or reported as
// recognised but not implemented. The configs are written here in the styles of the
// Hugging Face Trainer integration and of hand-written DeepSpeed configs.
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "strata/base/config.h"

namespace strata {
namespace {

Config parse_ok(const char* text, std::vector<std::string>* warnings = nullptr) {
  auto cfg = Config::parse(text, "<test>", warnings);
  EXPECT_TRUE(cfg) << cfg.error();
  return cfg ? *cfg : Config{};
}

std::string all(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + "\n";
  return s;
}

// The Trainer fills "auto" in on any key: booleans, numbers, pairs, the batch triple.
TEST(ConfigCompat, AutoOnEveryKeyKeepsStrataDefaults) {
  std::vector<std::string> w;
  const Config c = parse_ok(R"({
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                  "warmup_num_steps": "auto", "total_num_steps": "auto"}},
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": true},
      "offload_param": {"device": "cpu", "pin_memory": true}, "overlap_comm": true, "contiguous_gradients": true,
      "sub_group_size": 1e9, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
      "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
      "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": true},
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 2000,
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": false})",
                            &w);
  const Config d;
  EXPECT_FALSE(c.bf16.enabled);
  EXPECT_FALSE(c.fp16.enabled);
  EXPECT_EQ(c.optimizer.lr, d.optimizer.lr);
  EXPECT_EQ(c.optimizer.betas, d.optimizer.betas);
  EXPECT_EQ(c.zero_optimization.reduce_bucket_size, d.zero_optimization.reduce_bucket_size);
  EXPECT_EQ(c.scheduler.type, SchedulerType::kWarmupDecayLR);
  EXPECT_EQ(c.scheduler.total_num_steps, 0);  // strata train fills in --steps
  EXPECT_EQ(c.zero_optimization.offload_param.device, OffloadDevice::kCpu);
  // "auto" batch keys are not "given": derived from the world size.
  Config b = c;
  ASSERT_TRUE(b.resolve_batch(4)) << "auto batch keys";
  EXPECT_EQ(b.train_batch_size, 4);
  EXPECT_EQ(all(w).find("unknown"), std::string::npos) << all(w);
}

// DeepSpeed's config model takes the stage3_ keys without their prefix too.
TEST(ConfigCompat, UnprefixedStage3KeysAreAliases) {
  const Config c = parse_ok(R"({"zero_optimization": {"stage": 3, "max_live_parameters": 3e8,
      "max_reuse_distance": 2e8, "prefetch_bucket_size": 1e7, "param_persistence_threshold": 1e4,
      "gather_16bit_weights_on_model_save": true, "reduce_bucket_size": 0}})");
  const ZeroConfig& z = c.zero_optimization;
  EXPECT_EQ(z.stage3_max_live_parameters, 300'000'000u);
  EXPECT_EQ(z.stage3_max_reuse_distance, 200'000'000u);
  EXPECT_EQ(z.stage3_prefetch_bucket_size, 10'000'000u);
  EXPECT_EQ(z.stage3_param_persistence_threshold, 10'000u);
  EXPECT_EQ(z.reduce_bucket_size, 0u);  // DeepSpeed allows it; the engine reduces each chunk at once
  // The normalized form names each once, by its canonical key.
  const auto j = c.to_json().dump();
  EXPECT_EQ(j.find("\"max_live_parameters\""), std::string::npos) << j;
  auto again = Config::from_json(c.to_json());
  ASSERT_TRUE(again) << again.error();
  EXPECT_EQ(*again, c);
}

TEST(ConfigCompat, AnUnknownUnprefixedKeyStillSuggestsTheRightOne) {
  auto cfg = Config::parse(R"({"zero_optimization": {"max_live_parameter": 1e9}})");
  ASSERT_FALSE(cfg);
  EXPECT_NE(cfg.error().message().find("did you mean max_live_parameters?"), std::string::npos) << cfg.error();
}

// The legacy booleans map as DeepSpeed maps them, so the user keeps their CPU offload.
TEST(ConfigCompat, LegacyCpuOffloadMeansOptimizerOnCpu) {
  std::vector<std::string> w;
  const Config c = parse_ok(R"({"zero_optimization": {"stage": 2, "cpu_offload": true}})", &w);
  EXPECT_EQ(c.zero_optimization.offload_optimizer.device, OffloadDevice::kCpu);
  EXPECT_TRUE(w.empty()) << all(w);
  const Config p = parse_ok(R"({"zero_optimization": {"stage": 3, "cpu_offload_param": true}})");
  EXPECT_EQ(p.zero_optimization.offload_param.device, OffloadDevice::kCpu);
  EXPECT_EQ(parse_ok(R"({"zero_optimization": {"stage": 2, "cpu_offload": false}})").zero_optimization.offload_optimizer.device,
            OffloadDevice::kNone);
  EXPECT_EQ(parse_ok(R"({"bfloat16": {"enabled": true}})").bf16.enabled, true);  // the older section name
}

// DeepSpeed's bf16.bf16_optimizer_states (Adam's moments in bf16) is strata's bf16
// optimizer state in bf16 training; it said "not implemented" and trained fp32 state, 4
// bytes a parameter more than the config asked for.
TEST(ConfigCompat, Bf16OptimizerStatesIsBf16OptimizerState) {
  std::vector<std::string> w;
  const Config c = parse_ok(R"({"bf16": {"enabled": true, "bf16_optimizer_states": true}})", &w);
  EXPECT_EQ(c.strata.optimizer_state_dtype, StateDtype::kBf16);
  EXPECT_EQ(c.strata.gradient_shard_dtype, StateDtype::kFp32);
  EXPECT_TRUE(w.empty()) << all(w);
  auto back = Config::from_json(c.to_json());
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(*back, c);
  for (const char* same : {R"("bf16")", R"("auto")"}) {
    const std::string text = std::string(R"({"bf16": {"enabled": true, "bf16_optimizer_states": true},
                                             "strata": {"optimizer_state_dtype": )") + same + "}}";
    EXPECT_EQ(parse_ok(text.c_str()).strata.optimizer_state_dtype, StateDtype::kBf16) << same;
  }
  EXPECT_EQ(parse_ok(R"({"bf16": {"enabled": true, "bf16_optimizer_states": false}})").strata.optimizer_state_dtype,
            StateDtype::kFp32);
  // bf16 left to strata ("auto", or absent): it counts once bf16 is on, as strata train's
  // --bf16 turns it on after reading the file.
  std::vector<std::string> later;
  Config flagged = parse_ok(R"({"bf16": {"enabled": "auto", "bf16_optimizer_states": true}})", &later);
  EXPECT_EQ(flagged.strata.optimizer_state_dtype, StateDtype::kFp32);
  flagged.bf16.enabled = true;
  flagged.apply_bf16_optimizer_states();
  EXPECT_EQ(flagged.strata.optimizer_state_dtype, StateDtype::kBf16);
  EXPECT_EQ(all(later).find("bf16_optimizer_states"), std::string::npos) << all(later);
  std::vector<std::string> off;  // bf16 turned off: DeepSpeed ignores the key too
  EXPECT_EQ(parse_ok(R"({"bf16": {"enabled": false, "bf16_optimizer_states": true}})", &off).strata.optimizer_state_dtype,
            StateDtype::kFp32);
  EXPECT_NE(all(off).find("bf16.bf16_optimizer_states: applies to bf16 training"), std::string::npos) << all(off);
  const auto both = Config::parse(R"({"bf16": {"enabled": true, "bf16_optimizer_states": true},
                                      "strata": {"optimizer_state_dtype": "fp32"}})", "<test>");
  ASSERT_FALSE(both);
  EXPECT_NE(both.error().message().find("strata.optimizer_state_dtype \"fp32\" for fp32: give one of them"),
            std::string::npos) << both.error();
  const auto not_bool = Config::parse(R"({"bf16": {"enabled": true, "bf16_optimizer_states": "yes"}})", "<test>");
  ASSERT_FALSE(not_bool);
  EXPECT_NE(not_bool.error().message().find("bf16.bf16_optimizer_states: expected true or false"), std::string::npos);
}

// DeepSpeed's offload_optimizer.ratio (ZeRO-Offload++: with device cpu, that share of
// the optimizer state on host, the rest on the compute device) is strata's static
// placement, strata.offload_optim_frac; it was "not implemented" and offloaded it all.
TEST(ConfigCompat, OffloadOptimizerRatioIsTheShareOfStateOnHost) {
  std::vector<std::string> w;
  const Config c = parse_ok(R"({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": 0.3}}})", &w);
  EXPECT_EQ(c.zero_optimization.offload_optimizer.device, OffloadDevice::kNone);
  EXPECT_EQ(c.strata.offload_optim_frac, 0.3);
  EXPECT_TRUE(w.empty()) << all(w);
  auto back = Config::from_json(c.to_json());
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(*back, c);
  const Config whole = parse_ok(R"({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 1}}})");
  EXPECT_EQ(whole.zero_optimization.offload_optimizer.device, OffloadDevice::kCpu);
  EXPECT_EQ(whole.strata.offload_optim_frac, 0.0);
  EXPECT_EQ(parse_ok(R"({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 0.5}},
                         "strata": {"offload_optim_frac": 0.5}})").strata.offload_optim_frac, 0.5);
  const auto both = Config::parse(R"({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 0.5}},
                                      "strata": {"offload_optim_frac": 0.25}})", "<test>");
  ASSERT_FALSE(both);
  EXPECT_NE(both.error().message().find("ratio 0.5 and strata.offload_optim_frac 0.25 both set"), std::string::npos)
      << both.error();
  const auto nvme = Config::parse(R"({"zero_optimization": {"stage": 3, "offload_optimizer":
                                      {"device": "nvme", "nvme_path": "/tmp", "ratio": 0.5}}})", "<test>");
  ASSERT_FALSE(nvme);
  EXPECT_NE(nvme.error().message().find("use strata.optimizer_max_in_cpu"), std::string::npos) << nvme.error();
  const auto stage0 = Config::parse(R"({"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu", "ratio": 0.5}}})",
                                    "<test>");
  ASSERT_FALSE(stage0);
  EXPECT_NE(stage0.error().message().find("offload_optimizer: needs stage 1, 2 or 3"), std::string::npos) << stage0.error();
  EXPECT_FALSE(Config::parse(R"({"zero_optimization": {"offload_optimizer": {"ratio": 1.5}}})", "<test>"));
}

// Real DeepSpeed keys strata does not implement are known, with a warning, never unknown.
TEST(ConfigCompat, DeepSpeedFeaturesStrataLacksAreReportedNotRefused) {
  std::vector<std::string> w;
  parse_ok(R"({"fp16": {"enabled": false, "fp16_master_weights_and_grads": false},
               "sparse_attention": {"mode": "fixed", "block": 16},
               "zero_optimization": {"stage": 3, "model_persistence_threshold": 1e9},
               "curriculum_learning": {"enabled": false}, "compile": {"disable": true}})",
           &w);
  const std::string s = all(w);
  for (const char* key : {"fp16.fp16_master_weights_and_grads", "sparse_attention",
                          "zero_optimization.model_persistence_threshold", "curriculum_learning", "compile"}) {
    EXPECT_NE(s.find(std::string(key) + ": recognised but not implemented"), std::string::npos) << key << "\n" << s;
  }
}

// Every field of DeepSpeed's config model (DeepSpeedZeroConfig with its aliases, the
// offload configs, the fp16/bf16 configs, DeepSpeedConfig's top-level keys), as listed
// in DeepSpeed's runtime/zero/config.py, offload_config.py, precision_config.py and
// runtime/config.py, is a known key: active, no effect or not implemented.
TEST(ConfigCompat, EveryDeepSpeedConfigModelKeyIsKnown) {
  std::set<std::string> known;
  for (const ConfigKey& k : config_keys()) known.insert(k.path);
  const std::string z = "zero_optimization.";
  std::vector<std::string> expected;
  for (const char* k : {"stage", "contiguous_gradients", "reduce_scatter", "reduce_bucket_size",
                        "use_multi_rank_bucket_allreduce", "allgather_partitions", "allgather_bucket_size",
                        "overlap_comm", "load_from_fp32_weights", "elastic_checkpoint", "sub_group_size",
                        "cpu_offload_param", "cpu_offload_use_pin_memory", "cpu_offload", "prefetch_bucket_size",
                        "stage3_prefetch_bucket_size", "param_persistence_threshold",
                        "stage3_param_persistence_threshold", "model_persistence_threshold",
                        "stage3_model_persistence_threshold", "max_live_parameters", "stage3_max_live_parameters",
                        "max_reuse_distance", "stage3_max_reuse_distance", "gather_16bit_weights_on_model_save",
                        "stage3_gather_16bit_weights_on_model_save", "module_granularity_threshold",
                        "stage3_module_granularity_threshold", "use_all_reduce_for_fetch_params",
                        "stage3_use_all_reduce_for_fetch_params", "stage3_gather_fp16_weights_on_model_save",
                        "ignore_unused_parameters", "legacy_stage1", "round_robin_gradients",
                        "zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_nontrainable_weights",
                        "zero_quantized_gradients", "zeropp_loco_param", "mics_shard_size",
                        "mics_hierarchical_params_gather", "memory_efficient_linear", "pipeline_loading_checkpoint",
                        "override_module_apply", "log_trace_cache_warnings"}) {
    expected.push_back(z + k);
  }
  for (const char* k : {"device", "nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pin_memory"})
    expected.push_back(z + "offload_param." + k);
  for (const char* k : {"device", "nvme_path", "buffer_count", "pin_memory", "pipeline_read", "pipeline_write",
                        "fast_init", "ratio"})
    expected.push_back(z + "offload_optimizer." + k);
  for (const char* k : {"enabled", "auto_cast", "loss_scale", "initial_scale_power", "loss_scale_window",
                        "hysteresis", "consecutive_hysteresis", "min_loss_scale", "fp16_master_weights_and_grads"})
    expected.push_back(std::string("fp16.") + k);
  for (const char* k : {"enabled", "immediate_grad_update", "check_grad_overflow", "bf16_master_weights_and_grads",
                        "bf16_optimizer_states"})
    expected.push_back(std::string("bf16.") + k);
  for (const char* k : {"block_size", "queue_depth", "intra_op_parallelism", "single_submit", "overlap_events",
                        "use_gds"})
    expected.push_back(std::string("aio.") + k);
  for (const char* k : {"enabled", "dtype", "lower_precision_safe_modules"})
    expected.push_back(std::string("torch_autocast.") + k);
  for (const char* k :
       {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "steps_per_print",
        "dump_state", "disable_allgather", "communication_data_type", "seq_parallel_communication_data_type",
        "prescale_gradients", "gradient_predivide_factor", "sparse_gradients", "activation_checkpointing",
        "comms_logger", "tensorboard", "wandb", "csv_monitor", "comet", "gradient_clipping", "amp",
        "compression_training", "graph_harvesting", "optimizer.type", "optimizer.legacy_fusion",
        "optimizer.params.max_grad_norm", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
        "scheduler.type", "flops_profiler", "wall_clock_breakdown", "memory_breakdown", "autotuning",
        "eigenvalue", "hybrid_engine", "sparse_attention", "pipeline", "progressive_layer_drop",
        "curriculum_learning", "data_efficiency", "checkpoint", "data_types", "dataloader_drop_last", "nebula",
        "weight_quantization", "compile", "timers", "tensor_parallel", "vocabulary_size", "fp32_allreduce",
        "elasticity", "quantize_training", "allgather_size"}) {
    expected.push_back(k);
  }
  for (const std::string& k : expected) EXPECT_TRUE(known.contains(k)) << k << " is not a known key";
}

// DeepSpeed's deprecated boolean form of the zero section, with its top-level allgather_size.
TEST(ConfigCompat, ZeroOptimizationTrueMeansStageOne) {
  std::vector<std::string> w;
  const Config on = parse_ok(R"({"zero_optimization": true, "allgather_size": 5e8})", &w);
  EXPECT_EQ(on.zero_optimization.stage, 1);
  EXPECT_NE(all(w).find("deprecated form; read as {\"stage\": 1}"), std::string::npos) << all(w);
  EXPECT_EQ(parse_ok(R"({"zero_optimization": false})").zero_optimization.stage, 0);
  EXPECT_FALSE(Config::parse(R"({"zero_optimization": 3})", "<test>"));  // not a DeepSpeed form either
}

// The batch triple as DeepSpeed derives it.
TEST(ConfigCompat, BatchTripleIsDerivedFromTheKeysGiven) {
  Config a = parse_ok(R"({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4})");
  ASSERT_TRUE(a.resolve_batch(2));
  EXPECT_EQ(a.gradient_accumulation_steps, 4);
  Config b = parse_ok(R"({"train_batch_size": 32, "gradient_accumulation_steps": 2})");
  ASSERT_TRUE(b.resolve_batch(4));
  EXPECT_EQ(b.train_micro_batch_size_per_gpu, 4);
  Config c = parse_ok(R"({"train_batch_size": 16})");
  ASSERT_TRUE(c.resolve_batch(2));
  EXPECT_EQ(c.train_micro_batch_size_per_gpu, 8);
  EXPECT_EQ(c.gradient_accumulation_steps, 1);
  Config d = parse_ok(R"({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3})");
  ASSERT_TRUE(d.resolve_batch(2));
  EXPECT_EQ(d.train_batch_size, 12);
  Config e = parse_ok(R"({"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2})");
  auto st = e.resolve_batch(2);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("train_batch_size 30 is not train_micro_batch_size_per_gpu 4 * "
                                      "gradient_accumulation_steps 2 * world size 2"),
            std::string::npos)
      << st.error();
  Config f = parse_ok(R"({"train_batch_size": 6, "train_micro_batch_size_per_gpu": 4})");
  st = f.resolve_batch(2);  // 6 / 4 / 2 = 0 micro-steps
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("integer division"), std::string::npos) << st.error();
}

}  // namespace
}  // namespace strata
