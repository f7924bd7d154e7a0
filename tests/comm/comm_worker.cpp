// One rank of the communicator tests; tests/comm/comm_test.cpp starts N of these.
// Usage: comm_worker collectives|kill|hang|diverge|closed_socket [timeout_ms]
// Prints "OK" and exits 0 on success; prints the error and exits 3 on an expected
// failure path, 1 on a wrong result.
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "strata/base/fatal_signal.h"
#include "strata/comm/rendezvous.h"

using namespace strata;
using comm::ReduceOp;

namespace {

[[noreturn]] void fail(const std::string& what) {
  fmt::print(stderr, "WRONG: {}\n", what);
  std::fflush(stderr);
  std::_Exit(1);
}

void expect_ok(Status st, const char* what) {
  if (!st) fail(fmt::format("{}: {}", what, st.error()));
}

void expect_equal(const at::Tensor& got, const at::Tensor& want, const std::string& what, double tol = 0) {
  at::Tensor g = got.to(at::kDouble), w = want.to(at::kDouble);
  if (g.sizes() != w.sizes()) fail(what + ": shape differs");
  const double err = g.numel() ? (g - w).abs().max().item<double>() : 0.0;
  if (err > tol) fail(fmt::format("{}: max abs error {} > {}", what, err, tol));
}

// Values that are exact in every dtype we test (small integers).
at::Tensor pattern(std::int64_t n, int rank, std::int64_t offset, at::ScalarType dt) {
  at::Tensor i = at::arange(offset, offset + n, at::kLong);
  return ((i % 13) + 1).mul(rank + 1).to(dt);
}

void collectives(comm::Communicator& c) {
  const int w = c.world(), r = c.rank();
  for (auto dt : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    for (std::int64_t n : {1, 7, 1000, 65537}) {
      const std::string tag = fmt::format("{} n={}", c10::toString(dt), n);
      // all_gather: row k of the output is rank k's input.
      at::Tensor in = pattern(n, r, 0, dt), out = at::empty({w * n}, dt);
      expect_ok(c.all_gather(in, out).wait(), "all_gather");
      for (int k = 0; k < w; ++k) expect_equal(out.slice(0, k * n, (k + 1) * n), pattern(n, k, 0, dt), "all_gather " + tag);

      // reduce_scatter: rank r gets the sum over ranks of slice r.
      at::Tensor flat = pattern(w * n, r, 0, dt), shard = at::empty({n}, dt);
      at::Tensor want = at::zeros({n}, at::kDouble);
      for (int k = 0; k < w; ++k) want += pattern(n, k, r * n, at::kDouble);
      expect_ok(c.reduce_scatter(flat, shard, ReduceOp::kSum).wait(), "reduce_scatter sum");
      expect_equal(shard, want, "reduce_scatter sum " + tag);
      expect_ok(c.reduce_scatter(flat, shard, ReduceOp::kAvg).wait(), "reduce_scatter avg");
      const double rel = dt == at::kBFloat16 ? 1e-2 : dt == at::kHalf ? 1e-3 : 1e-12;
      expect_equal(shard, want / w, "reduce_scatter avg " + tag, rel * want.abs().max().item<double>());

      // all_reduce sum / avg / max, in place.
      at::Tensor t = pattern(n, r, 0, dt);
      at::Tensor sum = at::zeros({n}, at::kDouble), mx = pattern(n, 0, 0, at::kDouble);
      for (int k = 0; k < w; ++k) sum += pattern(n, k, 0, at::kDouble), mx = at::maximum(mx, pattern(n, k, 0, at::kDouble));
      expect_ok(c.all_reduce(t, ReduceOp::kSum).wait(), "all_reduce sum");
      expect_equal(t, sum, "all_reduce sum " + tag);
      t = pattern(n, r, 0, dt);
      expect_ok(c.all_reduce(t, ReduceOp::kAvg).wait(), "all_reduce avg");
      expect_equal(t, sum / w, "all_reduce avg " + tag, rel * sum.abs().max().item<double>());
      t = pattern(n, r, 0, dt);
      expect_ok(c.all_reduce(t, ReduceOp::kMax).wait(), "all_reduce max");
      expect_equal(t, mx, "all_reduce max " + tag);

      // broadcast from every root.
      for (int root = 0; root < w; ++root) {
        at::Tensor b = pattern(n, r, 0, dt);
        expect_ok(c.broadcast(b, root).wait(), "broadcast");
        expect_equal(b, pattern(n, root, 0, dt), fmt::format("broadcast root {} {}", root, tag));
      }
    }
  }
  // Several ops in flight at once, awaited in reverse order.
  std::vector<at::Tensor> ts;
  std::vector<comm::Handle> hs;
  for (int i = 0; i < 8; ++i) {
    ts.push_back(at::full({4096}, static_cast<float>(r + i)));
    hs.push_back(c.all_reduce(ts.back(), ReduceOp::kSum));
  }
  for (int i = 7; i >= 0; --i) {
    expect_ok(hs[i].wait(), "in-flight all_reduce");
    expect_equal(ts[i], at::full({4096}, static_cast<double>(w * (w - 1) / 2 + w * i)), "in-flight all_reduce");
  }
  // Reduce-scatters of one size in flight at once (the fallback pools its receive
  // buffers: none may be shared by two live ops), then again to reuse the pooled ones.
  for (int round = 0; round < 2; ++round) {
    std::vector<at::Tensor> outs;
    std::vector<comm::Handle> rs;
    for (int i = 0; i < 6; ++i) {
      outs.push_back(at::empty({4096}));
      rs.push_back(c.reduce_scatter(at::full({4096 * w}, static_cast<float>(r + i + round)), outs.back(), ReduceOp::kSum));
    }
    for (int i = 5; i >= 0; --i) {
      expect_ok(rs[i].wait(), "in-flight reduce_scatter");
      expect_equal(outs[i], at::full({4096}, static_cast<double>(w * (w - 1) / 2 + w * (i + round))), "in-flight reduce_scatter");
    }
  }
  expect_ok(c.barrier().wait(), "barrier");
  // Argument errors come back through wait(), naming the op.
  auto bad = c.all_gather(at::ones({3}), at::empty({3 * w + 1}));
  if (bad.wait()) fail("all_gather with a wrong output size did not fail");
}

}  // namespace

int main(int argc, char** argv) {
  strata::install_fatal_signal_report("comm_worker");  // Note [fatal signal report]
  const std::string mode = argc > 1 ? argv[1] : "collectives";
  comm::CommOptions opts;
  if (argc > 2) opts.timeout = std::chrono::milliseconds(std::stol(argv[2]));
  if (mode == "diverge") opts.check_order = true;
  auto c = comm::init_from_env(opts);
  if (!c) {
    fmt::print(stderr, "init failed: {}\n", c.error());
    return 2;
  }
  comm::Communicator& cm = **c;
  const bool last = cm.rank() == cm.world() - 1;

  if (mode == "collectives") {
    collectives(cm);
  } else if (mode == "kill" || mode == "hang") {
    at::Tensor t = at::ones({1 << 16});
    for (int step = 0; step < 1000; ++step) {
      if (last && step == 3) {
        if (mode == "kill") ::raise(SIGKILL);
        std::this_thread::sleep_for(opts.timeout * 3);  // alive but silent
        std::_Exit(0);
      }
      auto st = cm.all_reduce(t, ReduceOp::kSum).wait();
      if (!st) {
        fmt::print(stderr, "EXPECTED FAILURE at step {}: {}\n", step, st.error());
        std::fflush(stderr);
        std::_Exit(3);  // skip destructors: the group's threads may still be blocked
      }
      t.fill_(1);
    }
    fail("no failure seen");
  } else if (mode == "closed_socket") {
    // What Gloo meets when a peer dies: a write to a socket whose other end is gone.
    // It must fail with EPIPE (and become an error), not raise SIGPIPE and kill us.
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) fail("socketpair failed");
    ::close(fds[1]);
    const char byte = 0;
    if (::write(fds[0], &byte, 1) != -1 || errno != EPIPE) fail("write to a closed socket did not fail with EPIPE");
    ::close(fds[0]);
  } else if (mode == "diverge") {
    at::Tensor t = at::ones({16});
    expect_ok(cm.all_reduce(t, ReduceOp::kSum).wait(), "first all_reduce");
    auto st = cm.rank() == 1 ? cm.broadcast(t, 0).wait() : cm.all_reduce(t, ReduceOp::kSum).wait();
    if (st) fail("divergence not detected");
    fmt::print(stderr, "EXPECTED FAILURE: {}\n", st.error());
    std::fflush(stderr);
    std::_Exit(3);
  } else {
    fail("unknown mode " + mode);
  }
  fmt::print("OK\n");
  return 0;
}
