#include "strata/engine/engine_options.h"

#include <gtest/gtest.h>
#include <torch/optim/optimizer.h>

namespace strata::engine {
namespace {

Result<EngineOptions> options_from(const std::string& offload) {
  auto cfg = Config::parse(R"({"zero_optimization": {"stage": 2, "offload_optimizer": )" + offload + "}}");
  if (!cfg) return std::unexpected(std::move(cfg).error());
  return EngineOptions::from_config(*cfg, 1);
}

// A config whose staging buffers cannot hold the nvme optimizer pipeline is refused at
// setup, naming the keys to change (Note [nvme optimizer state]).
TEST(EngineOptions, TooFewOptimizerBuffersAreRefusedNamingTheKeys) {
  auto o = options_from(R"({"device": "nvme", "nvme_path": "/tmp", "buffer_count": 2})");
  ASSERT_FALSE(o.has_value());
  const std::string msg = o.error().to_string();
  EXPECT_NE(msg.find("zero_optimization.offload_optimizer.buffer_count 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("needs 3 buffers"), std::string::npos) << msg;
  EXPECT_NE(msg.find("pipeline_read / pipeline_write"), std::string::npos) << msg;
  // Without write-behind two buffers are enough; without either, one.
  EXPECT_TRUE(options_from(R"({"device": "nvme", "nvme_path": "/tmp", "buffer_count": 2, "pipeline_write": false})"));
  auto serial = options_from(R"({"device": "nvme", "nvme_path": "/tmp", "buffer_count": 1, "pipeline_read": false,
                                 "pipeline_write": false})");
  ASSERT_TRUE(serial.has_value()) << serial.error().to_string();
  EXPECT_EQ(serial->optim_pipeline.needed(), 1);
  // The count only matters when the state is on nvme.
  EXPECT_TRUE(options_from(R"({"device": "cpu", "buffer_count": 1})"));
}

// The accumulation window is the one the batch keys imply at the engine's world size, as
// DeepSpeed resolves them; an inconsistent triple is refused with its numbers. Before,
// from_config read gradient_accumulation_steps alone: a front end that passed the
// config as written (the Python API) stepped after every micro-batch.
TEST(EngineOptions, TheAccumulationWindowIsTheOneTheBatchKeysImply) {
  auto window = [](const std::string& keys, int world) -> Result<int> {
    auto cfg = Config::parse("{" + keys + "}");
    if (!cfg) return std::unexpected(std::move(cfg).error());
    auto o = EngineOptions::from_config(*cfg, world);
    if (!o) return std::unexpected(std::move(o).error());
    return o->gradient_accumulation_steps;
  };
  EXPECT_EQ(window(R"("train_batch_size": 32, "train_micro_batch_size_per_gpu": 4)", 1), 8);
  EXPECT_EQ(window(R"("train_batch_size": 32, "train_micro_batch_size_per_gpu": 4)", 2), 4);
  EXPECT_EQ(window(R"("train_batch_size": 32, "gradient_accumulation_steps": 2)", 2), 2);
  EXPECT_EQ(window(R"("train_batch_size": 32)", 4), 1);
  EXPECT_EQ(window(R"("gradient_accumulation_steps": 3)", 2), 3);
  EXPECT_EQ(window(R"("train_batch_size": "auto", "train_micro_batch_size_per_gpu": 4,
                      "gradient_accumulation_steps": "auto")", 2), 1);
  auto bad = window(R"("train_batch_size": 16, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2)", 1);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().to_string().find("train_batch_size 16 is not train_micro_batch_size_per_gpu 4 * "
                                         "gradient_accumulation_steps 2 * world size 1"),
            std::string::npos)
      << bad.error().to_string();
}

// strata.optimizer_state_dtype reaches the engine; an unknown dtype is a config error
// naming the choices; a wrapped torch::optim optimizer keeps its own fp32 state.
TEST(EngineOptions, OptimizerStateDtypeComesFromTheConfig) {
  auto cfg = Config::parse(R"({"strata": {"optimizer_state_dtype": "bf16"}})");
  ASSERT_TRUE(cfg.has_value()) << cfg.error().to_string();
  auto o = EngineOptions::from_config(*cfg, 1);
  ASSERT_TRUE(o.has_value()) << o.error().to_string();
  EXPECT_EQ(o->optim_state_dtype, at::kBFloat16);
  auto plain = EngineOptions::from_config(*Config::parse("{}"), 1);
  ASSERT_TRUE(plain.has_value());
  EXPECT_EQ(plain->optim_state_dtype, at::kFloat);
  auto bad = Config::parse(R"({"strata": {"optimizer_state_dtype": "fp16"}})");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().to_string().find("fp32, bf16"), std::string::npos) << bad.error().to_string();
  EngineOptions wrapped = *o;
  wrapped.wrap = [](std::vector<at::Tensor>) { return std::unique_ptr<torch::optim::Optimizer>(); };
  const Status st = wrapped.validate();
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().to_string().find("keeps its own fp32 state"), std::string::npos) << st.error().to_string();
  EngineOptions half = *o;
  half.optim_state_dtype = at::kHalf;
  EXPECT_FALSE(half.validate().has_value());
}

// strata.gradient_shard_dtype reaches the engine; only fp32 and bf16 are shard dtypes.
TEST(EngineOptions, GradientShardDtypeComesFromTheConfig) {
  auto cfg = Config::parse(R"({"strata": {"gradient_shard_dtype": "bf16"}})");
  ASSERT_TRUE(cfg.has_value()) << cfg.error().to_string();
  auto o = EngineOptions::from_config(*cfg, 1);
  ASSERT_TRUE(o.has_value()) << o.error().to_string();
  EXPECT_EQ(o->grad_shard_dtype, at::kBFloat16);
  EXPECT_EQ(EngineOptions::from_config(*Config::parse("{}"), 1)->grad_shard_dtype, at::kFloat);
  auto bad = Config::parse(R"({"strata": {"gradient_shard_dtype": "fp16"}})");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().to_string().find("fp32, bf16"), std::string::npos) << bad.error().to_string();
  EngineOptions half = *o;
  half.grad_shard_dtype = at::kHalf;
  const Status st = half.validate();
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().to_string().find("gradient shards must be fp32 or bf16"), std::string::npos) << st.error().to_string();
}

// Every stage and placement of the state runs on a GPU; the auto placement and a
// wrapped optimizer do not yet, and the error names the device and the keys (docs/gpu.md).
TEST(EngineOptions, AGpuComputeDeviceTakesEveryStageAndTierButNotAutoOrWrap) {
  EngineOptions o;
  o.stage = 3;
  o.param_device = OffloadDevice::kCpu;
  o.optim_device = OffloadDevice::kNvme;
  o.swap.nvme_path = "/tmp";
  o.compute_device = c10::Device(c10::kCUDA, 0);
  EXPECT_TRUE(o.validate()) << o.validate().error().to_string();
  EXPECT_TRUE(o.validate_device(c10::Device(c10::kCPU)));  // the CPU takes anything

  auto refused = [](const EngineOptions& bad, const std::string& needle) {
    const Status st = bad.validate();
    ASSERT_FALSE(st.has_value()) << needle;
    const std::string msg = st.error().to_string();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  };
  auto refused_device = [&](const EngineOptions& bad, const std::string& needle) {
    refused(bad, needle);
    const std::string msg = bad.validate().error().to_string();
    EXPECT_NE(msg.find("a compute device of cuda:0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("docs/gpu.md"), std::string::npos) << msg;
  };
  for (int stage : {0, 1, 2, 3}) {  // the state on the GPU, stepped there
    EngineOptions all_on_gpu = o;
    all_on_gpu.stage = stage;
    all_on_gpu.param_device = all_on_gpu.optim_device = OffloadDevice::kNone;
    EXPECT_TRUE(all_on_gpu.validate()) << stage << ": " << all_on_gpu.validate().error().to_string();
  }
  EngineOptions stage1_host = o;
  stage1_host.stage = 1;
  stage1_host.param_device = OffloadDevice::kNone;
  stage1_host.optim_device = OffloadDevice::kCpu;
  EXPECT_TRUE(stage1_host.validate()) << stage1_host.validate().error().to_string();
  EngineOptions automatic = o;
  automatic.placement = Placement::kAuto;
  refused_device(automatic, "needs the static placement");
  EngineOptions wrapped = o;
  wrapped.optim_device = OffloadDevice::kCpu;
  wrapped.wrap = [](std::vector<at::Tensor>) { return std::unique_ptr<torch::optim::Optimizer>(); };
  refused_device(wrapped, "cannot run a wrapped torch::optim optimizer yet");
  // host_step names the kernels of the built-in optimizers only.
  EngineOptions wrapped_ops = wrapped;
  wrapped_ops.compute_device.reset();
  wrapped_ops.host_step = EngineOptions::StepKernels::kTensorOps;
  refused(wrapped_ops, "a wrapped torch::optim optimizer steps itself");

  EngineOptions other = o;
  other.compute_device = c10::Device(c10::kMeta);
  const Status st = other.validate();
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().to_string().find("is not supported: the compute tier is the CPU or a CUDA GPU"),
            std::string::npos)
      << st.error().to_string();
}

}  // namespace
}  // namespace strata::engine
