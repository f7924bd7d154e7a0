#include "strata/engine/engine_options.h"

#include <gtest/gtest.h>

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

// A GPU compute device needs what the engine can do there today: stage 3, the optimizer
// state off the GPU (the CPU kernels step it), static placement.
// The error names the device and the keys (docs/gpu.md).
TEST(EngineOptions, AGpuComputeDeviceNeedsStage3WithTheOptimizerStateOffIt) {
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
    EXPECT_NE(msg.find("a compute device of cuda:0"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find("docs/gpu.md"), std::string::npos) << msg;
  };
  EngineOptions stage2 = o;
  stage2.stage = 2;
  stage2.param_device = OffloadDevice::kNone;
  refused(stage2, "needs stage 3 (this is stage 2)");
  EngineOptions on_gpu = o;
  on_gpu.optim_device = OffloadDevice::kNone;
  refused(on_gpu, "offload_optimizer.device to cpu or nvme");
  EngineOptions shards_on_gpu = o;  // parameter shards may stay
  shards_on_gpu.param_device = OffloadDevice::kNone;
  EXPECT_TRUE(shards_on_gpu.validate()) << shards_on_gpu.validate().error().to_string();
  EngineOptions automatic = o;
  automatic.placement = Placement::kAuto;
  refused(automatic, "needs the static placement");

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
