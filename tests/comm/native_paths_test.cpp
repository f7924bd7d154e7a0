// Which c10d call the communicator makes for each collective, by the backend's caps:
// the flat native calls (_reduce_scatter_base = torch.distributed.reduce_scatter_tensor,
// _allgather_base = all_gather_into_tensor) on a backend that has them (NCCL), the
// fallbacks on one that has not (Gloo in 1.13). No NCCL runs on this CPU-only machine, so
// a one-rank group that records its calls stands in for both, under either name: what
// it checks is the dispatch in communicator.cpp, whose data paths the multi-rank tests
// check over real Gloo.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "strata/comm/communicator.h"

namespace strata::comm {
namespace {

class DoneWork : public c10d::Work {
 public:
  bool isCompleted() override { return true; }
  bool wait(std::chrono::milliseconds) override { return true; }
};

// World 1: every collective is a copy (or nothing); each call is recorded with the dtype
// it was given and, for reductions, the op.
class RecordingGroup : public c10d::ProcessGroup {
 public:
  explicit RecordingGroup(std::string name) : c10d::ProcessGroup(0, 1), name_(std::move(name)) {}
  const std::string getBackendName() const override { return name_; }

  std::vector<std::string> calls;

  c10::intrusive_ptr<c10d::Work> _allgather_base(at::Tensor& out, at::Tensor& in,
                                                 const c10d::AllgatherOptions&) override {
    record("_allgather_base", in);
    out.copy_(in);
    return c10::make_intrusive<DoneWork>();
  }
  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& outs, std::vector<at::Tensor>& ins,
                                           const c10d::AllgatherOptions&) override {
    record("allgather", ins[0]);
    outs[0][0].copy_(ins[0]);
    return c10::make_intrusive<DoneWork>();
  }
  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(at::Tensor& out, at::Tensor& in,
                                                      const c10d::ReduceScatterOptions& opts) override {
    record("_reduce_scatter_base", in, op_name(opts.reduceOp));
    out.copy_(in);
    return c10::make_intrusive<DoneWork>();
  }
  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& out, at::Tensor& in, std::vector<int64_t>&,
                                               std::vector<int64_t>&, const c10d::AllToAllOptions&) override {
    record("alltoall_base", in);
    out.copy_(in);
    return c10::make_intrusive<DoneWork>();
  }
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& ts, const c10d::AllreduceOptions& opts) override {
    record("allreduce", ts[0], op_name(opts.reduceOp));
    return c10::make_intrusive<DoneWork>();
  }

 private:
  static std::string op_name(const c10d::ReduceOp& op) {
    return op == c10d::ReduceOp::AVG ? "avg" : op == c10d::ReduceOp::SUM ? "sum" : "other";
  }
  void record(const std::string& call, const at::Tensor& t, const std::string& op = "") {
    calls.push_back(call + "(" + std::string(c10::toString(t.scalar_type())) + (op.empty() ? "" : ", " + op) + ")");
  }
  std::string name_;
};

struct Recorded {
  c10::intrusive_ptr<RecordingGroup> group;
  std::unique_ptr<Communicator> comm;
};

Recorded make(const std::string& name) {
  Recorded s;
  s.group = c10::make_intrusive<RecordingGroup>(name);
  CommOptions opts;
  opts.check_order = false;  // its extra allgather is not what these tests look at
  auto comm = Communicator::create(s.group, opts);
  EXPECT_TRUE(comm.has_value()) << comm.error().to_string();
  s.comm = std::move(*comm);
  return s;
}

TEST(NativePaths, TheCapsTableGivesNcclItsFlatCollectives) {
  const Caps nccl = caps_for_backend("nccl");
  EXPECT_TRUE(nccl.reduce_scatter && nccl.allgather_base && nccl.bf16 && nccl.fp16 && nccl.avg);
  const Caps gloo = caps_for_backend("gloo");
  EXPECT_FALSE(gloo.reduce_scatter || gloo.allgather_base || gloo.bf16 || gloo.avg);
  EXPECT_TRUE(gloo.fp16);
}

TEST(NativePaths, NcclUsesReduceScatterTensorAndAllGatherIntoTensorInItsOwnDtype) {
  Recorded s = make("nccl");
  EXPECT_EQ(s.comm->backend(), "nccl");
  const at::Tensor full = at::arange(64, at::kFloat).to(at::kBFloat16), out = at::empty({64}, at::kBFloat16);
  ASSERT_TRUE(s.comm->reduce_scatter(full, out, ReduceOp::kAvg).wait().has_value());
  ASSERT_TRUE(s.comm->all_gather(out, full).wait().has_value());
  ASSERT_TRUE(s.comm->all_reduce(out, ReduceOp::kAvg).wait().has_value());
  EXPECT_EQ(s.group->calls, (std::vector<std::string>{"_reduce_scatter_base(BFloat16, avg)",
                                                      "_allgather_base(BFloat16)", "allreduce(BFloat16, avg)"}));
  EXPECT_TRUE(at::equal(out, at::arange(64, at::kFloat).to(at::kBFloat16)));
}

// In place, as the engine gathers a rank's slice of a chunk into the chunk itself: NCCL
// allows it for the flat calls, so no copy of the input is made first.
TEST(NativePaths, NcclGathersInPlace) {
  Recorded s = make("nccl");
  const at::Tensor full = at::arange(32, at::kFloat);
  ASSERT_TRUE(s.comm->all_gather(full, full).wait().has_value());
  EXPECT_EQ(s.group->calls, (std::vector<std::string>{"_allgather_base(Float)"}));
  EXPECT_TRUE(at::equal(full, at::arange(32, at::kFloat)));
}

TEST(NativePaths, GlooFallsBackToAlltoallAndByteMovesForBf16) {
  Recorded s = make("gloo");
  const at::Tensor full = at::arange(64, at::kFloat).to(at::kBFloat16), out = at::empty({64}, at::kBFloat16);
  ASSERT_TRUE(s.comm->reduce_scatter(full, out, ReduceOp::kAvg).wait().has_value());
  ASSERT_TRUE(s.comm->all_gather(out, full).wait().has_value());
  ASSERT_TRUE(s.comm->all_reduce(out, ReduceOp::kAvg).wait().has_value());
  // bf16 moves travel as bytes; the bf16 reduction runs on a fp32 copy, summed (no AVG).
  EXPECT_EQ(s.group->calls,
            (std::vector<std::string>{"alltoall_base(Byte)", "allgather(Byte)", "allreduce(Float, sum)"}));
  EXPECT_TRUE(at::equal(out, at::arange(64, at::kFloat).to(at::kBFloat16)));
}

}  // namespace
}  // namespace strata::comm
