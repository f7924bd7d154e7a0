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

}  // namespace
}  // namespace strata::engine
