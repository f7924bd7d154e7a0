// strata bench optim: the fused CPU optimizer kernels against the memory roofline of
// their own access pattern and against LibTorch's torch::optim::Adam / AdamW, all
// measured in this run on the same buffers.
//
// Every buffer is allocated and written before timing starts, and stays allocated across
// repeats (first-touch page faults would otherwise dominate). Each kernel is timed
// alternately with its roofline loop, so that a noisy neighbour hits both, and the
// report gives medians.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>

#include <array>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench_report.h"
#include "commands.h"
#include "strata/base/aligned.h"
#include "strata/base/thread_pool.h"
#include "strata/base/units.h"
#include "strata/engine/lamb.h"
#include "strata/engine/lion.h"
#include "strata/kernels/cast.h"
#include "strata/kernels/dispatch.h"
#include "strata/kernels/grad_prologue.h"
#include "strata/kernels/optimizer.h"
#include "strata/kernels/roofline.h"

namespace strata::cli {
namespace {

using kernels::DType;
using kernels::StepPattern;
using kernels::StepShard;

struct OptimOptions {
  std::string elements = "64Mi";
  std::string target;
  int threads = 0;
  int repeats = 9;
  bool skip_torch = false;
  bool json = false;
};

// The benchmark's arrays, allocated once and filled (so every page is touched).
struct Buffers {
  std::size_t n = 0;
  AlignedBuffer master, grad, grad16, m, v, m16, v16, param16;

  Status allocate(std::size_t count, ThreadPool& pool) {
    n = count;
    for (auto [buf, bytes] : {std::pair{&master, 4}, {&grad, 4}, {&grad16, 2}, {&m, 4}, {&v, 4}, {&m16, 2},
                              {&v16, 2}, {&param16, 2}}) {
      STRATA_ASSIGN_OR_RETURN(*buf, AlignedBuffer::allocate(n * bytes, 64));
    }
    // Deterministic pseudo-random values of realistic magnitudes; v and the Adagrad sum
    // must stay non-negative. Filled block-parallel: this touches every page.
    pool.parallel_for(n, 64, [&](std::size_t b, std::size_t e) {
      std::uint64_t s = 0x9E3779B97F4A7C15ull ^ b;
      auto uniform = [&s] {  // xorshift64*, in [-1, 1)
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        return static_cast<float>(static_cast<double>((s * 0x2545F4914F6CDD1Dull) >> 11) * 0x1p-52 - 1.0);
      };
      for (std::size_t i = b; i < e; ++i) {
        master.as<float>()[i] = uniform();
        grad.as<float>()[i] = 1e-2f * uniform();
        m.as<float>()[i] = 1e-3f * uniform();
        v.as<float>()[i] = 1e-4f * (1.0f + uniform());
      }
    });
    STRATA_RETURN_IF_ERROR(kernels::cast(grad.data(), DType::kF32, grad16.data(), DType::kBF16, n, &pool));
    STRATA_RETURN_IF_ERROR(kernels::cast(m.data(), DType::kF32, m16.data(), DType::kBF16, n, &pool));
    STRATA_RETURN_IF_ERROR(kernels::cast(v.data(), DType::kF32, v16.data(), DType::kBF16, n, &pool));
    return kernels::cast(master.data(), DType::kF32, param16.data(), DType::kBF16, n, &pool);
  }
};

struct Paired {
  double a_s = 0, b_s = 0;  // median seconds of a and of b
};

// Times a and b alternately, swapping which goes first each repeat so that neither
// always inherits the other's dirty cache lines, and a noisy neighbour hits both.
Paired time_paired(int repeats, const std::function<void()>& a, const std::function<void()>& b) {
  a();  // warm-up: caches, the pool's threads, the dispatch tables, torch's states
  b();
  std::vector<double> ta, tb;
  for (int r = 0; r < repeats; ++r) {
    if (r % 2 == 0) {
      ta.push_back(median_seconds(0, 1, a));
      tb.push_back(median_seconds(0, 1, b));
    } else {
      tb.push_back(median_seconds(0, 1, b));
      ta.push_back(median_seconds(0, 1, a));
    }
  }
  return {median(ta), median(tb)};
}

// Benchmark loops cannot return a Status from inside a timed lambda; an error aborts
// the run on this (the main) thread and is printed by run_optim.
template <class T>
void die_on_error(const std::expected<T, Error>& st) {
  if (!st) throw std::runtime_error(st.error().to_string());
}

class OptimBench {
 public:
  OptimBench(const OptimOptions& o, std::size_t n, ThreadPool& pool, Buffers& b, BenchReport& r)
      : opt_(o), n_(n), pool_(pool), b_(b), report_(r) {}

  // A step kernel and its roofline loop.
  void step_row(const std::string& name, const std::string& key, StepPattern pattern, const StepShard& shard,
                  const std::function<Status()>& kernel, void* s0, void* s1) {
    auto roof = [&] {
      die_on_error(pattern == StepPattern::kAdam ? kernels::roofline_adam(shard, s0, s1, &pool_)
                                                 : kernels::roofline_one_state(shard, s0, &pool_));
    };
    row(name, key, pattern, shard, [&] { die_on_error(kernel()); }, roof);
  }

  // One figure: `kernel` against `roof`, in GB/s of the pattern's bytes and Gelem/s.
  void row(const std::string& name, const std::string& key, StepPattern pattern, const StepShard& shard,
             const std::function<void()>& kernel, const std::function<void()>& roof) {
    const Paired t = time_paired(opt_.repeats, kernel, roof);
    const double bytes = static_cast<double>(kernels::step_bytes_per_elem(pattern, shard)) * n_;
    const double gbps = bytes / t.a_s / 1e9, roof_gbps = bytes / t.b_s / 1e9;
    report_.add(name, gbps, "GB/s", "roofline", roof_gbps,
                fmt::format("{}: {} B/elem", describe(pattern, shard), kernels::step_bytes_per_elem(pattern, shard)));
    report_.add(name, n_ / t.a_s / 1e9, "Gelem/s");
    report_.add_ratio(key + "_vs_roofline", gbps / roof_gbps);
    report_.add_figure(key + "_seconds", t.a_s);
    report_.add_figure(key + "_roofline_seconds", t.b_s);
  }

  // What the pattern reads and writes, for the note next to the roofline figure.
  static std::string describe(StepPattern p, const StepShard& s) {
    auto d = [](DType t) { return std::string(kernels::dtype_name(t)); };
    const std::string copy = s.param ? fmt::format(",p:{}", d(s.param_dtype)) : "";
    switch (p) {
      case StepPattern::kAdam:
        return fmt::format("R p,g:{},m,v:{} W p,m,v{}", d(s.grad_dtype), d(s.state_dtype), copy);
      case StepPattern::kOneState:
        return fmt::format("R p,g:{},s:{} W p,s{}", d(s.grad_dtype), d(s.state_dtype), copy);
      case StepPattern::kRead: return fmt::format("R g:{}", d(s.grad_dtype));
      case StepPattern::kCast: return fmt::format("R {} W {}", d(s.grad_dtype), d(s.param_dtype));
    }
    return "";
  }

  // A torch::optim optimizer (made by `make` over one parameter) on a copy of the same
  // data, timed alternately with `ours` (the same step by strata) so that both see the
  // same machine. Returns the medians as {a_s: torch, b_s: ours}.
  using MakeOptimizer = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<at::Tensor>)>;
  Paired torch_vs_ours(const MakeOptimizer& make, const std::function<void()>& ours) {
    at::Tensor p = at::from_blob(b_.master.data(), {static_cast<std::int64_t>(n_)}, at::kFloat).clone();
    p.set_requires_grad(true);
    p.mutable_grad() = at::from_blob(b_.grad.data(), {static_cast<std::int64_t>(n_)}, at::kFloat).clone();
    std::unique_ptr<torch::optim::Optimizer> opt = make({p});
    // The warm-up step allocates torch's state, which later steps reuse (torch still
    // allocates its temporaries every step: that is part of what it costs).
    return time_paired(opt_.repeats, [&] { opt->step(); }, ours);
  }

 private:
  const OptimOptions& opt_;
  std::size_t n_;
  ThreadPool& pool_;
  Buffers& b_;
  BenchReport& report_;
};

int run_optim(const OptimOptions& o) {
  auto count = parse_size(o.elements);
  if (!count || *count == 0) {
    fmt::print(stderr, "strata bench optim: bad --elements '{}'\n", o.elements);
    return 2;
  }
  if (!o.target.empty()) {
    if (auto st = kernels::force_target(o.target); !st) {
      fmt::print(stderr, "strata bench optim: {}\n", st.error());
      return 2;
    }
  }
  const std::size_t n = *count;
  ThreadPool pool(static_cast<std::size_t>(std::max(0, o.threads)));
  at::set_num_threads(static_cast<int>(pool.size()));
  Buffers b;
  if (auto st = b.allocate(n, pool); !st) {
    fmt::print(stderr, "strata bench optim: {}\n", st.error());
    return 1;
  }

  BenchReport report("optim");
  report.set_config("elements", n);
  report.set_config("threads", pool.size());
  report.set_config("target", kernels::kernel_target().name);
  report.set_config("repeats", o.repeats);
  OptimBench bench(o, n, pool, b, report);

  float* master = b.master.as<float>();
  const kernels::AdamHyper adamw{.lr = 1e-3, .weight_decay = 0.01, .decoupled_weight_decay = true};
  const kernels::AdamHyper adam{.lr = 1e-3, .weight_decay = 0.01};
  const kernels::StepInfo info{.step = 10, .grad_scale = 0.5};
  const StepShard fp32{.n = n, .master = master, .grad = b.grad.data()};
  StepShard bf16p = fp32;
  bf16p.param = b.param16.data();
  StepShard fp16p = bf16p;
  fp16p.param_dtype = DType::kF16;
  StepShard bf16g = bf16p;
  bf16g.grad = b.grad16.data();
  bf16g.grad_dtype = DType::kBF16;
  StepShard bf16s = bf16p;
  bf16s.state_dtype = DType::kBF16;

  try {
    const kernels::AdamState st32{b.m.data(), b.v.data()}, st16{b.m16.data(), b.v16.data()};
    auto adam_row = [&](const char* name, const char* key, const StepShard& s, const kernels::AdamHyper& h,
                        const kernels::AdamState& st) {
      return bench.step_row(name, key, StepPattern::kAdam, s,
                            [&] { return kernels::adam_step(s, st, h, info, &pool); }, st.exp_avg, st.exp_avg_sq);
    };
    adam_row("adamw fp32", "adamw_fp32", fp32, adamw, st32);
    adam_row("adam fp32", "adam_fp32", fp32, adam, st32);
    adam_row("adamw bf16 params", "adamw_bf16", bf16p, adamw, st32);
    adam_row("adamw fp16 params", "adamw_fp16", fp16p, adamw, st32);
    adam_row("adamw bf16 grads+params", "adamw_bf16_grads", bf16g, adamw, st32);
    adam_row("adamw bf16 states+params", "adamw_bf16_states", bf16s, adamw, st16);
    const kernels::SgdHyper sgd{.lr = 1e-2, .momentum = 0.9};
    bench.step_row("sgd momentum fp32", "sgd_fp32", StepPattern::kOneState, fp32,
                   [&] { return kernels::sgd_step(fp32, b.m.data(), sgd, info, &pool); }, b.m.data(), nullptr);
    bench.step_row("adagrad fp32", "adagrad_fp32", StepPattern::kOneState, fp32,
                   [&] { return kernels::adagrad_step(fp32, b.v.data(), {}, info, &pool); }, b.v.data(), nullptr);
    const kernels::LionHyper lion{.lr = 1e-4, .weight_decay = 0.1};
    bench.step_row("lion fp32", "lion_fp32", StepPattern::kOneState, fp32,
                   [&] { return kernels::lion_step(fp32, b.m.data(), lion, info, &pool); }, b.m.data(), nullptr);
    // Lamb's two passes over one whole parameter (the ratio between them), against the
    // fused AdamW step timed alternately: its traffic is 40 bytes an element (R p,g,m,v
    // W m,v; then R p,m,v W p) to AdamW's 28, so memory speed would put it at 0.70.
    const kernels::LambHyper lamb{.lr = 1e-3, .weight_decay = 0.01};
    auto lamb_step = [&] {
      auto sums = kernels::lamb_moments(fp32, st32, lamb, info, &pool);
      die_on_error(sums);
      die_on_error(kernels::lamb_apply(fp32, st32, lamb, info, kernels::lamb_ratio(*sums, lamb), &pool));
    };
    {
      const Paired t = time_paired(o.repeats, lamb_step, [&] { die_on_error(kernels::adam_step(fp32, st32, adamw, info, &pool)); });
      report.add("lamb fp32", n / t.a_s / 1e9, "Gelem/s", "fused adamw fp32", n / t.b_s / 1e9,
                 "two passes, 40 B/elem against AdamW's 28 (0.70 at memory speed)");
      report.add_ratio("lamb_fp32_vs_adamw", t.b_s / t.a_s);
      report.add_figure("lamb_fp32_seconds", t.a_s);
    }
    for (const StepShard* s : std::array<const StepShard*, 2>{&fp32, &bf16g}) {
      const std::string dt(kernels::dtype_name(s->grad_dtype));
      bench.row("grad prologue " + dt, "prologue_" + dt, StepPattern::kRead, *s,
                [&] { die_on_error(kernels::grad_prologue(s->grad, s->grad_dtype, n, 1.0 / 1024, &pool)); },
                [&] { die_on_error(kernels::roofline_read(s->grad, s->grad_dtype, n, &pool)); });
    }
    for (const StepShard* s : std::array<const StepShard*, 2>{&bf16p, &fp16p}) {
      // The kCast pattern reads grad_dtype (fp32 in these shards) and writes param_dtype.
      const std::string dt(kernels::dtype_name(s->param_dtype));
      bench.row("cast fp32->" + dt, "cast_fp32_" + dt, StepPattern::kCast, *s,
                [&] { die_on_error(kernels::cast(master, DType::kF32, s->param, s->param_dtype, n, &pool)); },
                [&] { die_on_error(kernels::roofline_cast(master, DType::kF32, s->param, s->param_dtype, n, &pool)); });
    }
    if (!o.skip_torch) {
      // LibTorch has no Lion: its baseline is strata::engine::Lion, whose step is the
      // ATen ops a Lion written in plain PyTorch runs (equal to the kernel bit for bit:
      // TorchParity.Lion).
      struct TorchCase {
        std::string name, baseline;
        StepPattern pattern;
        OptimBench::MakeOptimizer make;
        std::function<void()> ours;
      };
      const std::vector<TorchCase> cases = {
          {"adamw", "torch::optim::AdamW", StepPattern::kAdam,
           [](std::vector<at::Tensor> p) -> std::unique_ptr<torch::optim::Optimizer> {
             return std::make_unique<torch::optim::AdamW>(p, torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
           },
           [&] { die_on_error(kernels::adam_step(fp32, st32, adamw, info, &pool)); }},
          {"adam", "torch::optim::Adam", StepPattern::kAdam,
           [](std::vector<at::Tensor> p) -> std::unique_ptr<torch::optim::Optimizer> {
             return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(1e-3).weight_decay(0.01));
           },
           [&] { die_on_error(kernels::adam_step(fp32, st32, adam, info, &pool)); }},
          {"lion", "ATen Lion", StepPattern::kOneState,
           [&](std::vector<at::Tensor> p) -> std::unique_ptr<torch::optim::Optimizer> {
             return std::make_unique<engine::Lion>(p, engine::LionOptions(lion.lr).weight_decay(lion.weight_decay));
           },
           [&] { die_on_error(kernels::lion_step(fp32, b.m.data(), lion, info, &pool)); }},
      };
      for (const TorchCase& c : cases) {
        const double bytes = static_cast<double>(kernels::step_bytes_per_elem(c.pattern, fp32)) * n;
        const Paired t = bench.torch_vs_ours(c.make, c.ours);
        const double torch_s = t.a_s, ours_s = t.b_s;
        report.add(c.name + " fp32 (strata)", bytes / ours_s / 1e9, "GB/s", c.baseline, bytes / torch_s / 1e9,
                   "timed alternately with torch");
        report.add(c.name + " fp32 (torch)", n / torch_s / 1e9, "Gelem/s");
        report.add_figure(c.name + "_fp32_torch_seconds", torch_s);
        report.add_ratio(c.name + "_fp32_vs_torch", torch_s / ours_s);
      }
      // LibTorch has no Lamb either: strata::engine::Lamb, the ATen ops of a plain-PyTorch
      // Lamb (one norm per parameter, as here: the whole array is one parameter).
      const Paired t = bench.torch_vs_ours(
          [&](std::vector<at::Tensor> p) -> std::unique_ptr<torch::optim::Optimizer> {
            return std::make_unique<engine::Lamb>(p, engine::LambOptions(lamb.lr).weight_decay(lamb.weight_decay));
          },
          lamb_step);
      report.add("lamb fp32 (strata)", n / t.b_s / 1e9, "Gelem/s", "ATen Lamb", n / t.a_s / 1e9,
                 "timed alternately with torch");
      report.add_figure("lamb_fp32_torch_seconds", t.a_s);
      report.add_ratio("lamb_fp32_vs_torch", t.a_s / t.b_s);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "strata bench optim: {}\n", e.what());
    return 1;
  }
  kernels::reset_target();
  report.print(o.json);
  return 0;
}

}  // namespace

void add_bench_optim(CLI::App& bench, int* exit_code) {
  auto opts = std::make_shared<OptimOptions>();
  auto* cmd = bench.add_subcommand("optim", "Fused optimizer kernels vs the memory roofline and torch::optim");
  cmd->add_option("--elements", opts->elements, "Elements per array, e.g. 64Mi, 1e6 (default 64Mi)");
  cmd->add_option("--target", opts->target, "Force a SIMD target (AVX3_DL, AVX3, AVX2, SSE4, ...; see strata env)");
  cmd->add_option("--threads", opts->threads, "Threads for strata and torch (default: one per core)");
  cmd->add_option("--repeats", opts->repeats, "Timed repeats per figure; medians are reported (default 9)")
      ->check(CLI::Range(1, 1000));
  cmd->add_flag("--skip-torch", opts->skip_torch, "Do not run the torch::optim (and ATen Lion and Lamb) baselines");
  cmd->add_flag("--json", opts->json, "Print one JSON object instead of the table");
  cmd->callback([opts, exit_code] { *exit_code = run_optim(*opts); });
}

}  // namespace strata::cli
