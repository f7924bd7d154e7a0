// The engine on a GPU against plain LibTorch on the same GPU (ctest label `gpu`,
// registered only in a STRATA_CUDA build; scripts/device-check runs them on the device).
// World size 1: one GPU. Each case is a zero3_worker, zero_worker or units_worker run
// with STRATA_TEST_DEVICE=cuda, so the model, its reference and the batches live on the
// GPU, and the optimizer state on the GPU (stepped there by ATen ops), on host or on
// nvme (stepped by the fused CPU kernels), and the parameter shards on any tier
// (docs/gpu.md).
#include <cstdio>
#include <filesystem>

#include <gtest/gtest.h>

#include "engine/io_tensor.h"
#include "strata/base/fatal_signal.h"
#include "strata/io/buffer_pool.h"
#include "strata/tiers/copy_stream.h"
#include "strata/tiers/device.h"
#include "support/multirank.h"
#include "support/rank_checks.h"

namespace strata {
namespace {

using testing::expect_all_ok;
using testing::run_ranks;

// Before main: on the H200 (2026-12-04) test_gpu died of SIGSEGV with nothing printed,
// gtest's results still in stdout's buffer (a pipe under ctest). Line-buffered, they are
// out before a crash; and the crash itself is reported (Note [fatal signal report]).
const bool kReportCrashes = [] {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  install_fatal_signal_report("test_gpu");
  return true;
}();

void run_on_gpu(const std::vector<std::string>& args, const std::string& worker = "zero3_worker") {
  const auto dir = testing::fresh_temp_dir("gpu");
  std::vector<std::string> argv{std::string(STRATA_TEST_BIN_DIR) + "/" + worker};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto rs = run_ranks(1, argv, std::chrono::seconds(300),
                            {{"STRATA_TEST_NVME", dir.string()}, {"STRATA_TEST_DEVICE", "cuda"}});
  // Written before the assertion reports it: on the H200 (2026-12-04) test_gpu died of
  // SIGSEGV around a worker's end, before gtest printed anything of it.
  std::fprintf(stderr, "run_on_gpu: %s exited %d after %.1f s\n", worker.c_str(), rs[0].exit_code, rs[0].seconds);
  if (rs[0].exit_code != 0) std::fprintf(stderr, "%s\n", testing::all_output(rs).c_str());
  expect_all_ok(rs);
  std::filesystem::remove_all(dir);
}

// fp32: every loss within 1e-5 of the reference's for 20 steps, the consolidated
// weights every 5 steps (zero3_worker parity).
TEST(Gpu, Fp32ParityWithTheOptimizerOnHost) { run_on_gpu({"parity", "host"}); }
// Parameter shards in GPU memory (at world 1 the whole chunk stays gathered), the
// optimizer state on host: the step's new shard goes back to the GPU.
TEST(Gpu, Fp32ParityWithShardsOnTheGpuAndTheOptimizerOnHost) { run_on_gpu({"parity", "optim-host"}); }
TEST(Gpu, Fp32ParityWithParametersAndOptimizerOnNvme) { run_on_gpu({"parity", "nvme"}); }
// Everything on the GPU: shards, optimizer state (ATen ops step it), gradients.
TEST(Gpu, Fp32ParityWithEverythingOnTheGpu) { run_on_gpu({"parity", "compute"}); }
// Stages 0-2 (zero_worker parity: AdamW, 20 steps within 1e-6 of torch::optim on the
// GPU): the state on the GPU, on host, and on nvme with the gradients.
TEST(Gpu, Stages0To2WithTheStateOnTheGpu) {
  for (const char* stage : {"0", "1", "2"}) run_on_gpu({"parity", stage, "adamw", ""}, "zero_worker");
}
// Lamb (Note [Lamb's two passes]): its state on the GPU, stepped by ATen ops whose sums
// stay on the GPU until one copy (LambNorms), and on host, stepped by the fused kernels
// with the new shards going back to the GPU; against strata::engine::Lamb on the GPU.
TEST(Gpu, LambWithTheStateOnTheGpuOrOnHost) {
  for (const char* where : {"", "cpu"}) run_on_gpu({"parity", "2", "lamb", where}, "zero_worker");
}
TEST(Gpu, Stages1And2WithTheStateOnHostOrNvme) {
  for (const char* stage : {"1", "2"})
    for (const char* where : {"cpu", "nvme"}) run_on_gpu({"parity", stage, "adamw", where}, "zero_worker");
}
// Gradient shards kept in GPU memory until the step, which copies each to the host
// (Note [gradients kept on compute]): stage 3 with the state split between host and
// nvme, stage 2 with it on host.
TEST(Gpu, GradientShardsKeptOnTheGpuUntilTheStep) {
  run_on_gpu({"parity", "nvme-optim-split-grads-on-compute"});
  run_on_gpu({"parity", "2", "adamw", "cpu-grads-on-compute"}, "zero_worker");
}
// A compute budget of a quarter of the model: chunks leave GPU memory and come back every
// step, within the budget.
TEST(Gpu, AQuarterBudgetEvictsFromGpuMemory) { run_on_gpu({"parity", "quarter"}); }
TEST(Gpu, Bf16LossesTrackTheFp32ReferenceWithin2Percent) { run_on_gpu({"parity", "host", "bf16"}); }
TEST(Gpu, Fp16OverflowSkipsTheStepAndTheScaleHalves) { run_on_gpu({"fp16"}); }
// strata.gradient_shard_dtype bf16 with bf16 compute: bit for bit as fp32 shards, the
// gradients landing on host in bf16 (Note [gradients to host]) and, with the shards
// made from the master, its cast going to the GPU from a pinned buffer.
TEST(Gpu, Bf16GradientShardsLoseNothingWithBf16Compute) {
  for (const char* placement : {"host", "nvme-optim-split"}) run_on_gpu({"bf16grads", placement});
}
// Frozen parameters, parameters without a gradient, a module called twice, tuple
// outputs and a skip branch, at stages 1-3 on every placement, against the reference
// and the consolidated weights (units_worker awkward).
TEST(Gpu, AwkwardModelsAtStages1To3OnEveryPlacement) {
  for (const char* stage : {"1", "2", "3"}) run_on_gpu({"awkward", stage}, "units_worker");
}

// Note [pinned host tensors]: the host tensors a GPU copies to and from are page-locked
// and still 4 KiB-aligned for the swap store, small and large (the pageable path puts
// the large ones on huge pages instead), and a copy to the GPU and back keeps the values.
TEST(Gpu, HostTensorsForTheGpuArePinnedAndIoAligned) {
  for (const std::int64_t n : {std::int64_t{1000}, static_cast<std::int64_t>(engine::kHugeTensorBytes / 4) + 3}) {
    at::Tensor t = engine::aligned_empty(n, at::kFloat, engine::host_memory_for(c10::Device(c10::kCUDA, 0)));
    EXPECT_TRUE(t.is_pinned()) << n;
    EXPECT_TRUE(engine::io_aligned(t)) << n;
    t.copy_(at::arange(n, at::kFloat));
    at::Tensor back = engine::aligned_empty(n, at::kFloat, engine::HostMemory::kPinned);
    back.copy_(t.to(c10::Device(c10::kCUDA, 0)));
    EXPECT_TRUE(at::equal(back, t)) << n;
  }
}

// The nvme parameter Load buffers a GPU gathers from: an io::BufferPool whose arena is
// page-locked by pin_hooks_for (cudaHostRegister), and a copy through it keeps the values.
TEST(Gpu, BufferPoolArenasForTheGpuArePinned) {
  const c10::Device gpu(c10::kCUDA, 0);
  auto pool = io::BufferPool::create({.budget_bytes = 64 << 20, .pin = tiers::pin_hooks_for(gpu)});
  ASSERT_TRUE(pool) << pool.error().to_string();
  EXPECT_TRUE(pool->stats().pinned);
  auto buf = pool->acquire(32 << 20);
  ASSERT_TRUE(buf) << buf.error().to_string();
  at::Tensor host = at::from_blob(buf->data(), {8 << 20}, at::kFloat);
  host.copy_(at::arange(8 << 20, at::kFloat));
  EXPECT_TRUE(at::equal(host.to(gpu).cpu(), host));
}

// Note [copy stream]: a copy from pinned memory on the copy stream, ordered after the
// compute stream's earlier work (a kernel that fills the destination first) and before
// its later work (a kernel that reads it), with the host waiting only at the end.
TEST(Gpu, TheCopyStreamIsOrderedAgainstTheComputeStream) {
  const c10::Device gpu(c10::kCUDA, 0);
  tiers::CopyStream copies(gpu);
  ASSERT_TRUE(copies.active());
  const std::int64_t n = 32 << 20;  // 128 MiB: long enough to be in flight
  at::Tensor host = engine::aligned_empty(n, at::kFloat, engine::HostMemory::kPinned);
  const at::Tensor expect = at::arange(n, at::kFloat).remainder_(1000);
  host.copy_(expect);
  at::Tensor dst = at::full({n}, -1.0f, at::TensorOptions(gpu));  // queued before the copy
  std::optional<c10::Event> done = copies.run([&] { dst.copy_(host, /*non_blocking=*/true); });
  ASSERT_TRUE(done.has_value());
  copies.compute_waits(*done);
  at::Tensor sum = dst.sum();  // on the compute stream, after the copy
  tiers::CopyStream::host_waits(*done);
  EXPECT_TRUE(done->query());
  host.fill_(0);  // the copy is over: rewriting the source changes nothing on the GPU
  const double want = expect.to(at::kDouble).sum().item<double>();
  EXPECT_NEAR(sum.item<double>(), want, 1e-4 * want);  // not the -1s: the copy came first
  EXPECT_TRUE(at::equal(dst.cpu(), expect));
}

}  // namespace
}  // namespace strata
