// torch_compat.h against LibTorch itself: each helper gives what the installed version's
// own code does (1.13 here; scripts/torch2-check compiles the 2.x side, and the device
// check runs this suite on the wheel's 2.x).
#include "strata/comm/torch_compat.h"

#include <gtest/gtest.h>

#include "strata/engine/autocast.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/optim/adam.h>

namespace strata {
namespace {

// The key torch::optim files a parameter's state under is the one strata writes and
// looks up when it hands optimizer state over (engine/state_dict.cpp).
TEST(TorchCompat, OptimStateKeyIsTheKeyTorchOptimUses) {
  at::Tensor p = at::ones({4}).set_requires_grad(true), q = at::ones({2}).set_requires_grad(true);
  torch::optim::Adam opt({p, q}, torch::optim::AdamOptions(0.1));
  (p * 2).sum().backward();  // q gets no gradient: Adam keeps no state for it
  opt.step();
  EXPECT_EQ(opt.state().size(), 1u);
  EXPECT_EQ(opt.state().count(torch_compat::optim_state_key(p)), 1u);
  EXPECT_EQ(opt.state().count(torch_compat::optim_state_key(q)), 0u);
}

// zero_grad_keep leaves every gradient defined and zero (2.x's zero_grad() drops them).
TEST(TorchCompat, ZeroGradKeepLeavesDefinedZeroGradients) {
  at::Tensor p = at::ones({3}).set_requires_grad(true);
  torch::optim::Adam opt({p}, torch::optim::AdamOptions(0.1));
  (p * 3).sum().backward();
  torch_compat::zero_grad_keep(opt);
  ASSERT_TRUE(p.grad().defined());
  EXPECT_TRUE(at::equal(p.grad(), at::zeros({3})));
}

// A Gloo backend made into the group the communicator takes: named after the backend,
// for CPU tensors and (no device backend here) for CUDA ones too, and it all-reduces.
TEST(TorchCompat, AsProcessGroupWrapsGlooForTheCommunicator) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  auto opts = c10d::ProcessGroupGloo::Options::create();
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, 0, 1, opts);
  c10::intrusive_ptr<c10d::ProcessGroup> pg =
      torch_compat::as_process_group<c10d::ProcessGroup>(store, 0, 1, gloo, c10::DeviceType::CPU);
  EXPECT_EQ(pg->getBackendName(), "gloo");
  EXPECT_EQ(torch_compat::backend_name_for(*pg, c10::DeviceType::CPU), "gloo");
  EXPECT_EQ(torch_compat::backend_name_for(*pg, c10::DeviceType::CUDA), "gloo");
  std::vector<at::Tensor> t{at::full({2}, 3.0)};
  pg->allreduce(t)->wait();
  EXPECT_TRUE(at::equal(t[0], at::full({2}, 3.0)));
}

// The rendezvous retries a refused TCP store without libuv (src/comm/rendezvous.cpp):
// options of 2.x have the switch and it is turned off once; options without it (1.13's)
// are left alone. scripts/torch2-test runs the multi-process tests that need it on a
// LibTorch 2.6 built without libuv.
struct OptionsWithLibUV {
  bool useLibUV = true;
};
struct OptionsWithoutLibUV {
  int port = 0;
};

TEST(TorchCompat, TcpStoreWithoutLibuvTurnsTheSwitchOffOnce) {
  OptionsWithLibUV with;
  EXPECT_TRUE(torch_compat::tcp_store_without_libuv(with));
  EXPECT_FALSE(with.useLibUV);
  EXPECT_FALSE(torch_compat::tcp_store_without_libuv(with));  // already off: no retry
  OptionsWithoutLibUV without;
  EXPECT_FALSE(torch_compat::tcp_store_without_libuv(without));
  c10d::TCPStoreOptions real;  // this LibTorch's own: on by default since 2.4, absent in 1.13
#if STRATA_TORCH_AT_LEAST(2, 4)
  EXPECT_TRUE(torch_compat::tcp_store_without_libuv(real));
#elif !STRATA_TORCH_AT_LEAST(2, 0)
  EXPECT_FALSE(torch_compat::tcp_store_without_libuv(real));
#endif
}

// The autocast switches read and set what ATen's own functions of the version do; a
// device autocast does not know is refused, not passed on.
TEST(TorchCompat, AutocastSwitchesAreAtensOwn) {
  ASSERT_FALSE(torch_compat::autocast_enabled(c10::DeviceType::CPU));
  const c10::ScalarType before = torch_compat::autocast_dtype(c10::DeviceType::CPU);
  torch_compat::set_autocast_enabled(c10::DeviceType::CPU, true);
  torch_compat::set_autocast_dtype(c10::DeviceType::CPU, at::kBFloat16);
  EXPECT_TRUE(torch_compat::autocast_enabled(c10::DeviceType::CPU));
  EXPECT_EQ(at::mm(at::ones({2, 2}), at::ones({2, 2})).scalar_type(), at::kBFloat16);  // ATen autocasts
  torch_compat::set_autocast_enabled(c10::DeviceType::CPU, false);
  torch_compat::set_autocast_dtype(c10::DeviceType::CPU, before);
  EXPECT_EQ(at::mm(at::ones({2, 2}), at::ones({2, 2})).scalar_type(), at::kFloat);
  EXPECT_THROW(torch_compat::autocast_enabled(c10::DeviceType::Meta), std::invalid_argument);
}

// AutocastGuard: matmuls in bf16 while it lives and fp32 after; a nested guard puts back
// the outer one's state (cache setting included), and the outermost ends autocast.
TEST(AutocastGuard, TurnsAutocastOnForItsScopeAndRestoresWhatItFound) {
  const at::Tensor a = at::ones({4, 4}).set_requires_grad(true);
  {
    engine::AutocastGuard outer(c10::DeviceType::CPU, at::kBFloat16);
    EXPECT_EQ(at::mm(a, a).scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::autocast::is_autocast_cache_enabled());
    {
      engine::AutocastGuard inner(c10::DeviceType::CPU, at::kBFloat16, /*cache=*/false);
      EXPECT_FALSE(at::autocast::is_autocast_cache_enabled());
      EXPECT_EQ(at::mm(a, a).scalar_type(), at::kBFloat16);
    }
    EXPECT_TRUE(at::autocast::is_autocast_cache_enabled());
    EXPECT_TRUE(torch_compat::autocast_enabled(c10::DeviceType::CPU));
  }
  EXPECT_FALSE(torch_compat::autocast_enabled(c10::DeviceType::CPU));
  EXPECT_EQ(at::mm(a, a).scalar_type(), at::kFloat);
  // The gradient of an autocast product reaches the fp32 leaf in fp32.
  at::Tensor loss;
  {
    engine::AutocastGuard guard(c10::DeviceType::CPU, at::kBFloat16);
    loss = at::mm(a, a).sum();
  }
  loss.backward();
  EXPECT_EQ(a.grad().scalar_type(), at::kFloat);
}

// forward_autocast follows the config: nothing without torch_autocast.enabled; with it,
// bf16 with the cast cache below stage 3 and without it at stage 3 (Note [autocast
// cache at stage 3]).
TEST(AutocastGuard, ForwardAutocastFollowsTheConfig) {
  Config c;
  EXPECT_FALSE(engine::forward_autocast(c, c10::DeviceType::CPU).has_value());
  c.torch_autocast.enabled = true;
  for (int stage : {0, 2, 3}) {
    c.zero_optimization.stage = stage;
    auto guard = engine::forward_autocast(c, c10::DeviceType::CPU);
    ASSERT_TRUE(guard.has_value());
    EXPECT_EQ(torch_compat::autocast_dtype(c10::DeviceType::CPU), at::kBFloat16);
    EXPECT_EQ(at::autocast::is_autocast_cache_enabled(), stage != 3) << stage;
  }
  EXPECT_FALSE(torch_compat::autocast_enabled(c10::DeviceType::CPU));
}

}  // namespace
}  // namespace strata
