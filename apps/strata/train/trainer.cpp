#include "trainer.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <unordered_map>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/serialize.h>

#include "bench_report.h"
#include "config_auto.h"
#include "interrupt.h"
#include "launch_checks.h"
#include "test_faults.h"
#include "strata/base/blas.h"
#include "strata/base/log.h"
#include "strata/base/lr_schedule.h"
#include "strata/base/units.h"
#include "strata/ckpt/checkpoint.h"
#include "strata/comm/communicator.h"
#include "strata/nn/data/byte_corpus.h"
#include "rank_threads.h"
#include "strata/engine/autocast.h"
#include "strata/engine/engine.h"
#include "strata/engine/module_hooks.h"
#include "strata/tiers/device.h"
#include "strata/tiers/memory_probe.h"
#include "strata/nn/models/gpt.h"
#include "train_report.h"

namespace strata::cli {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

namespace fs = std::filesystem;

// A failed collective is an error, never a value: a NaN here once made a dead peer
// read as "the loss is not finite".
Result<double> mean_across_ranks(comm::Communicator& comm, double v) {
  at::Tensor t = at::full({1}, v, at::kDouble);
  STRATA_RETURN_IF_ERROR(comm.all_reduce(t, comm::ReduceOp::kAvg).wait());
  return t.item<double>();
}

// Note [stopping together]: a rank asked to stop (Ctrl-C, SIGTERM) cannot simply leave
// its loop, or the others would wait for it in the next collective until they time out.
// Each step already averages the loss across ranks; the stop requests ride along in the
// same all-reduce, so every rank learns at the same step that one of them must stop.
struct StepAgreement {
  double loss = 0;
  bool stop = false;
};
Result<StepAgreement> agree_on_step(comm::Communicator& comm, double loss, bool stop) {
  at::Tensor t = at::tensor({loss, stop ? 1.0 : 0.0}, at::kDouble);
  STRATA_RETURN_IF_ERROR(comm.all_reduce(t, comm::ReduceOp::kSum).wait());
  return StepAgreement{.loss = t[0].item<double>() / comm.world(), .stop = t[1].item<double>() > 0};
}

// Where the engine put things, read back from it (not from the config).
std::string placement_text(const Config& c, const engine::Engine& eng) {
  const engine::MemoryByKind held = eng.memory_by_kind();
  auto where = [&](plan::StateKind k) {
    std::vector<std::string> tiers;
    for (plan::Tier t : plan::kAllTiers) {
      if (held[plan::tier_index(t)][plan::kind_index(k)] == 0) continue;
      tiers.push_back(t == plan::Tier::kNvme ? fmt::format("nvme ({})", eng.options().swap.nvme_path)
                                             : std::string(plan::to_string(t)));
    }
    return tiers.empty() ? std::string("-") : fmt::format("{}", fmt::join(tiers, " and "));
  };
  std::string s = fmt::format("placement {}: {} on {}, optimizer state on {}", to_string(c.strata.placement),
                              eng.stage() < 3 ? "parameters (whole)" : "param shards", where(plan::StateKind::kParams),
                              where(plan::StateKind::kOptimizer));
  s += c.strata.compute_budget ? fmt::format(", compute budget {}", format_bytes(c.strata.compute_budget)) : ", no compute budget";
  return s;
}

// Rows [first, first + n) of step `step`'s global batch, each drawn by its own index, so
// the job's batch is the same at any world size (micro-batch x accumulation x world
// held): a run resumed at another world size sees the same data.
Result<nn::Batch> train_rows(const nn::ByteCorpus& corpus, const TrainOptions& o, std::int64_t n, std::int64_t step,
                             std::int64_t first) {
  std::vector<at::Tensor> tokens, targets;
  for (std::int64_t i = 0; i < n; ++i) {
    STRATA_ASSIGN_OR_RETURN(nn::Batch b, corpus.sample(nn::Split::kTrain, 1, o.seq_len,
                                                       {o.seed, static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(first + i)}));
    tokens.push_back(b.tokens);
    targets.push_back(b.targets);
  }
  return nn::Batch{.tokens = at::cat(tokens), .targets = at::cat(targets)};
}

// A forward through the engine's units throws its errors (module_hooks.h: a lost peer
// in a gather, a failed swap read); this turns them back into the typed error.
template <class F>
auto guarded_forward(F&& f) -> Result<decltype(f())> {
  try {
    return f();
  } catch (const std::exception& e) {
    return make_error(engine::forward_error(e, "forward"));
  }
}

// Validation loss: the mean over eval_batches batches per rank, then over ranks.
Result<double> evaluate(nn::GPT& model, const nn::ByteCorpus& corpus, const TrainOptions& o, std::int64_t micro,
                        comm::Communicator& comm) {
  at::NoGradGuard no_grad;
  double sum = 0;
  for (std::int64_t b = 0; b < o.eval_batches; ++b) {
    STRATA_ASSIGN_OR_RETURN(nn::Batch batch, corpus.sample(nn::Split::kValidation, micro, o.seq_len,
                                                           {o.seed + 7919, static_cast<std::uint64_t>(b), static_cast<std::uint64_t>(comm.rank())}));
    const c10::Device dev = model->parameters()[0].device();  // the engine's compute device
    STRATA_ASSIGN_OR_RETURN(const double loss, guarded_forward([&] {
                              const auto autocast = engine::forward_autocast(o.config, dev.type());
                              return model->loss(batch.tokens.to(dev), batch.targets.to(dev)).item<double>();
                            }));
    sum += loss;
  }
  return mean_across_ranks(comm, sum / static_cast<double>(o.eval_batches));
}

// Every rank samples in lockstep (ZeRO-3 gathers are collectives), with the same seed.
// One forward per byte: minutes for the largest models, so a Ctrl-C stops it, agreed
// across ranks before each byte as at the end of a training step (Note [stopping
// together]); what was sampled by then is kept.
Result<std::string> sample_text(nn::GPT& model, const TrainOptions& o, comm::Communicator& comm) {
  at::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed + 1);
  std::vector<std::int64_t> tokens = {'\n'};
  for (std::int64_t i = 0; i < o.sample_bytes; ++i) {
    STRATA_ASSIGN_OR_RETURN(const StepAgreement agreed, agree_on_step(comm, 0.0, stop_signal() != 0));
    if (agreed.stop) break;
    const std::int64_t start = std::max<std::int64_t>(0, static_cast<std::int64_t>(tokens.size()) - o.seq_len);
    at::Tensor ctx = at::tensor(std::vector<std::int64_t>(tokens.begin() + start, tokens.end()), at::kLong).unsqueeze(0);
    const c10::Device dev = model->parameters()[0].device();  // the engine's compute device
    STRATA_ASSIGN_OR_RETURN(at::Tensor out, guarded_forward([&] {
                              const auto autocast = engine::forward_autocast(o.config, dev.type());
                              return model->forward(ctx.to(dev));
                            }));
    // Sampled on the CPU, with the CPU generator: the same bytes on every device.
    at::Tensor logits = out.select(1, ctx.size(1) - 1).to(at::kCPU, at::kFloat).squeeze(0);
    at::Tensor probs = at::softmax(logits / 0.8, 0);
    tokens.push_back(at::multinomial(probs, 1, false, gen).item<std::int64_t>());
  }
  std::string s;
  for (std::size_t i = 1; i < tokens.size(); ++i) {
    const auto c = static_cast<unsigned char>(tokens[i]);
    // Bytes, not characters: show ASCII, and '?' for the rest (a lone UTF-8 byte).
    s += (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) ? static_cast<char>(c) : '?';
  }
  return s;
}

// What a checkpoint carries for `strata train` besides the engine's state: where the
// data and the schedule are (both follow the step index), the seed, and the CPU RNG.
nlohmann::json client_state(const TrainOptions& o, std::int64_t next_step, int world) {
  const at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
  std::string hex;
  for (std::int64_t i = 0; i < rng.numel(); ++i) hex += fmt::format("{:02x}", rng.data_ptr<std::uint8_t>()[i]);
  return {{"next_step", next_step}, {"seed", o.seed}, {"model", o.model}, {"seq_len", o.seq_len}, {"world", world},
          {"scheduler", o.config.to_json()["scheduler"]},
          {"data", {{"corpus", o.data.empty() ? nn::kFortunesDir : o.data}, {"position", next_step}}},
          {"cpu_rng", hex}};
}

void restore_rng(const nlohmann::json& client) {
  const std::string hex = client.value("cpu_rng", "");
  if (hex.empty()) return;
  at::Tensor state = at::empty({static_cast<std::int64_t>(hex.size() / 2)}, at::kByte);
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    state.data_ptr<std::uint8_t>()[i / 2] = static_cast<std::uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16));
  at::Generator gen = at::detail::getDefaultCPUGenerator();  // a handle to the global one
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// metrics.jsonl of a resumed run: the lines up to the checkpoint's step, then appended.
Status trim_metrics(const fs::path& path, std::int64_t last_step) {
  std::ifstream in(path);
  std::string kept, line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("step", std::int64_t{0}) <= last_step) kept += line + "\n";
  }
  const fs::path tmp = path.string() + ".tmp";
  std::ofstream(tmp) << kept;
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return make_error(ErrorCode::kIoError, "cannot rewrite metrics.jsonl: {}", ec.message()).with_path(path.string());
  return ok();
}

// The process's peak resident set so far (what /usr/bin/time -v reports at exit).
std::uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_maxrss) * 1024;  // Linux: KiB
}

}  // namespace

Status run_training(const TrainOptions& o, comm::Communicator& comm) {
  const bool root = comm.rank() == 0;
  const Config& cfg = o.config;
  // Counts every CPU tensor byte (activations too): metrics.jsonl's tensor_peak, and the
  // auto placement's measure of what is not model state.
  tiers::MemoryProbe::install();
  const std::int64_t micro = cfg.train_micro_batch_size_per_gpu, accum = cfg.gradient_accumulation_steps;
  STRATA_ASSIGN_OR_RETURN(nn::ByteCorpus corpus, nn::ByteCorpus::open(o.data.empty() ? nn::kFortunesDir : o.data));
  STRATA_ASSIGN_OR_RETURN(nn::GPTConfig mcfg, nn::gpt_config(o.model, 256, 0));
  // Built deferred: the engine makes each chunk's values and places it before the next
  // (Note [streaming setup]), so no model is too large to construct.
  nn::GPT model(mcfg, /*deferred=*/true);
  Config ecfg = cfg;
  ecfg.strata.optimizer_threads = cfg.strata.optimizer_threads ? cfg.strata.optimizer_threads : threads_per_rank();
  STRATA_ASSIGN_OR_RETURN(engine::EngineOptions eo, engine::EngineOptions::from_config(ecfg, comm.world()));
  STRATA_ASSIGN_OR_RETURN(const TestFault fault, TestFault::from_env(comm.rank()));
  if (fault.io()) eo.swap.faults = fault.injector;
  // Half way through the model's units: the embeddings, the blocks, the head.
  eo.on_access = fault.access_hook(static_cast<int>(mcfg.layers / 2) + 1);
  eo.chunks.search_step_elems = static_cast<std::uint64_t>(mcfg.hidden);
  const char* local_rank = std::getenv("LOCAL_RANK");
  const c10::Device compute = tiers::rank_device(o.compute, local_rank != nullptr ? std::atoi(local_rank) : 0);
  eo.compute_device = compute;
  // Before the engine exists: the runtime's own resident set (LibTorch, the data), the
  // base that the engine's figures add to.
  const std::uint64_t runtime_rss = current_rss_bytes();
  // Without --config, as GPT-2 and nanoGPT train: weight decay on the matrices only, none
  // on biases and norm gains (Note [parameter groups]). A DeepSpeed config decays every
  // parameter, as DeepSpeed does without groups.
  const bool matrices_only = o.config_path.empty() && eo.optimizer.weight_decay > 0;
  if (matrices_only) {
    eo.param_groups = {{}, {.weight_decay = 0.0}};
    for (const at::Tensor& p : model->parameters()) eo.param_groups[p.dim() >= 2 ? 0 : 1].params.push_back(p);
  }
  auto made = engine::shard(*model, comm, std::move(eo), {}, model->initializer(o.seed));
  if (!made && made.error().code() == ErrorCode::kResourceExhausted && made.error().context().op == "schedule") {
    // The planner's "cannot fit" at setup: a step's working set is larger than the
    // compute budget. Say which knob that is.
    return make_error(std::move(made).error().with_note(
        "the compute budget is too small for one step's working set (give a larger --compute-budget or "
        "strata.compute_budget, or 'none' for no limit)"));
  }
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<engine::Engine> eng, std::move(made));

  STRATA_ASSIGN_OR_RETURN(LrSchedule schedule, LrSchedule::create(cfg.scheduler, cfg.optimizer.lr));
  // The start summary: the estimator's prediction next to what the engine holds.
  const auto& layout = eng->store().layout();
  StartInfo si{.model = o.model, .params = mcfg.parameter_count(), .layers = mcfg.layers, .hidden = mcfg.hidden,
               .heads = mcfg.heads, .world = comm.world(), .stage = cfg.zero_optimization.stage,
               .precision = cfg.bf16.enabled            ? "bf16 compute, fp32 master"
                            : cfg.fp16.enabled          ? "fp16 compute, fp32 master"
                            : cfg.torch_autocast.enabled ? "bf16 autocast, fp32 parameters"
                                                         : "fp32",
               .data = o.data.empty() ? nn::kFortunesDir : o.data, .data_files = corpus.file_count(),
               .train_bytes = corpus.split_bytes(nn::Split::kTrain), .val_bytes = corpus.split_bytes(nn::Split::kValidation),
               .steps = o.steps, .micro_batch = micro, .grad_accum = accum, .seq = o.seq_len,
               .optimizer = fmt::format("{}{}, {}", to_string(cfg.optimizer.effective_type()),
                                        matrices_only ? fmt::format(" (weight decay {:g} on matrices, none on biases "
                                                                    "and norms)", cfg.optimizer.weight_decay)
                                                      : "",
                                        schedule.describe())};
  std::uint64_t largest = 0;
  for (const auto& m : model->modules(false)) {
    std::uint64_t n = 0;
    for (const auto& p : m->parameters(false)) n += p.numel();
    largest = std::max(largest, n);
  }
  STRATA_ASSIGN_OR_RETURN(plan::EstimateInput ei, plan::EstimateInput::from_config(cfg, mcfg.parameter_count(), largest, comm.world()));
  ei.padded_params = layout.capacity_elems;
  ei.chunk_elems = layout.chunk_size_elems;
  STRATA_ASSIGN_OR_RETURN(si.estimate, plan::estimate_memory(ei));
  si.measured = eng->memory_by_kind();
  si.chunks = layout.chunks.size();
  si.chunk_elems = layout.chunk_size_elems;
  for (const plan::Chunk& c : layout.chunks) {
    si.own_chunks += c.kind == plan::ChunkKind::kOversized || c.kind == plan::ChunkKind::kPrivate;
    si.largest_chunk = std::max(si.largest_chunk, c.size_elems);
  }
  si.padding = layout.waste_ratio;
  si.placement = placement_text(cfg, *eng);
  if (!o.config_path.empty()) si.autos = describe_auto(o.config_path, cfg);
  si.out = o.out;
  // Threads per rank: LibTorch's OpenMP pool (which oneDNN's bf16 products use too) and
  // OpenBLAS's, both set by apply_rank_threads(); say so, and which BLAS runs fp32.
  const BlasInfo blas = detect_blas();
  si.precision += fmt::format("; {} thread{} per rank, BLAS {}{}", at::get_num_threads(),
                              at::get_num_threads() == 1 ? "" : "s", blas.name,
                              blas.threads ? fmt::format(" ({} thread{})", blas.threads, blas.threads == 1 ? "" : "s") : "");
  if (root) print_start(si);
  if (root && !blas.optimized && !cfg.bf16.enabled && !cfg.fp16.enabled && !cfg.torch_autocast.enabled) {
    fmt::print(stderr, "strata train: warning: fp32 matrix products run on the {}, many times slower than an "
                       "optimized BLAS; install libopenblas0-openmp (scripts/setup does), or train in bf16\n",
               blas.name);
  }

  // --resume: the engine's state from the checkpoint (any world size), then the data,
  // schedule and RNG from where it was saved.
  std::int64_t start = 0;
  if (!o.resume.empty()) {
    const auto load_t0 = std::chrono::steady_clock::now();
    STRATA_ASSIGN_OR_RETURN(ckpt::Loaded l, ckpt::load_checkpoint(*eng, o.resume));
    start = l.meta.client.value("next_step", l.meta.step);
    restore_rng(l.meta.client);
    if (root) {
      fmt::print("resumed from {} (step {}, saved by {} rank{}; {} loaded in {:.2f} s)\n", l.dir.string(), start,
                 l.meta.world, l.meta.world == 1 ? "" : "s", format_bytes(l.meta.data_bytes()), seconds_since(load_t0));
    }
    if (start >= o.steps) {
      if (root) fmt::print("the checkpoint is at step {}; --steps is {}: nothing left to train\n", start, o.steps);
      return ok();
    }
    if (root) STRATA_RETURN_IF_ERROR(trim_metrics(fs::path(o.out) / "metrics.jsonl", start));
  }

  std::ofstream metrics;
  if (root) metrics.open(fs::path(o.out) / "metrics.jsonl", start > 0 ? std::ios::app : std::ios::trunc);
  const std::int64_t trace_step = o.trace_step >= 0 ? o.trace_step : std::min<std::int64_t>(o.steps - 1, 4);
  const std::string trace_path = (fs::path(o.out) / "trace.json").string();
  Progress progress(o.steps, Progress::stdout_is_tty());
  EndInfo end;
  std::vector<double> step_times, recent_losses;
  std::string checkpoint = "(none)";
  std::uint64_t gathers = 0, hits = 0;  // over the schedule-driven steps
  const auto run_t0 = std::chrono::steady_clock::now();
  std::int64_t interrupted_at = 0;
  for (std::int64_t step = start; step < o.steps; ++step) {
    const double lr = eng->lr();  // the engine's schedule set it (Note [scheduler stepping])
    if (step == trace_step && root) eng->trace_next_step(trace_path);
    tiers::MemoryProbe::reset_peak();
    const auto t0 = std::chrono::steady_clock::now();
    double loss_sum = 0;
    engine::StepResult r;
    using Fault = TestFault::Kind;
    const bool faulty = fault.kind != Fault::kNone && step + 1 == fault.step;
    if (faulty && fault.io()) fault.arm_io();
    if (faulty) fault.arm_kill();
    for (std::int64_t m = 0; m < accum; ++m) {
      STRATA_ASSIGN_OR_RETURN(nn::Batch batch, train_rows(corpus, o, micro, step, (comm.rank() * accum + m) * micro));
      STRATA_ASSIGN_OR_RETURN(at::Tensor loss, guarded_forward([&] {
                                const auto autocast = engine::forward_autocast(cfg, compute.type());
                                return model->loss(batch.tokens.to(compute), batch.targets.to(compute));
                              }));
      if (faulty && m == 0 && fault.kind == Fault::kStop) ::raise(SIGSTOP);
      STRATA_RETURN_IF_ERROR(eng->backward(loss));
      if (faulty && fault.kind == Fault::kKillStep) ::raise(SIGKILL);
      STRATA_ASSIGN_OR_RETURN(r, eng->step());
      loss_sum += loss.item<double>();
    }
    const double step_s = seconds_since(t0);
    STRATA_ASSIGN_OR_RETURN(const StepAgreement agreed,
                            agree_on_step(comm, loss_sum / static_cast<double>(accum), stop_signal() != 0));
    const double loss = agreed.loss;
    if (!std::isfinite(loss)) return make_error(ErrorCode::kInternal, "the loss is not finite at step {}", step + 1);
    const double tokens_per_s = static_cast<double>(micro * accum * o.seq_len * comm.world()) / step_s;
    if (step > 0) step_times.push_back(step_s);
    recent_losses.push_back(loss);
    if (recent_losses.size() > 10) recent_losses.erase(recent_losses.begin());
    if (step == start) end.first_loss = loss;

    std::optional<double> val;
    if (agreed.stop) {
      if (root) {
        progress.finish();
        fmt::print("interrupted at step {} of {}; last checkpoint: {}\n", step + 1, o.steps, checkpoint);
      }
      interrupted_at = step + 1;
      break;
    }
    if (o.eval_batches > 0 && ((o.eval_every > 0 && (step + 1) % o.eval_every == 0) || step + 1 == o.steps)) {
      STRATA_ASSIGN_OR_RETURN(val, evaluate(model, corpus, o, micro, comm));
      end.val_loss = val;
    }
    nlohmann::json line = {{"step", step + 1}, {"loss", loss}, {"lr", lr}, {"grad_norm", r.grad_norm},
                           {"loss_scale", r.loss_scale}, {"applied", r.applied}, {"step_s", step_s},
                           {"tokens_per_s", tokens_per_s}};
    if (val) line["val_loss"] = *val;
    const engine::StepMetrics& m = eng->last_metrics();
    const std::array<std::uint64_t, 3> mem = {m.peak[0], m.peak[1], m.peak[2]};
    line["memory_peak"] = {{"compute", m.peak[0]}, {"host", m.peak[1]}, {"nvme", m.peak[2]}};
    line["grad_bytes_peak"] = m.peak_grad_bytes;
    auto links = [](const plan::LinkBytes& l) {
      return nlohmann::json{{"net_gather", l.net_gather}, {"net_reduce_scatter", l.net_reduce_scatter},
                            {"net_all_reduce", l.net_all_reduce}, {"host_to_compute", l.host_to_compute},
                            {"compute_to_host", l.compute_to_host}, {"nvme_to_host", l.nvme_to_host},
                            {"host_to_nvme", l.host_to_nvme}};
    };
    line["moved"] = links(m.moved);
    line["optimizer_moved"] = links(m.optimizer_moved);
    line["peak_rss"] = peak_rss_bytes();  // this rank's process, so far
    line["runtime_rss"] = runtime_rss;
    line["tensor_peak"] = tiers::MemoryProbe::peak_bytes();  // this step, every CPU tensor
    line["estimate"] = {{"compute", si.estimate.tier_total(plan::Tier::kCompute)},
                        {"host", si.estimate.tier_total(plan::Tier::kHost)},
                        {"nvme", si.estimate.tier_total(plan::Tier::kNvme)}};
    line["forward_s"] = m.forward_s;
    line["backward_s"] = m.backward_s;
    line["optimizer_s"] = m.optimizer_s;
    if (eng->stage() == 3) {
      line["planned"] = links(m.planned);
      line["gathers"] = m.gathers;
      line["prefetch_hit_rate"] = m.prefetch_hit_rate;
      line["gather_wait_s"] = m.gather_wait_s;
      line["scheduled"] = m.scheduled;
      if (m.scheduled) gathers += m.gathers, hits += m.prefetch_hits;
    }
    end.moved += m.moved;
    for (int t = 0; t < 3; ++t) end.peak[t] = std::max(end.peak[t], m.peak[t]);
    if (root) metrics << line.dump() << '\n' << std::flush;
    if (root) progress.update(step, loss, tokens_per_s, step_s, mem, val);
    if (!o.no_save && ((o.save_every > 0 && (step + 1) % o.save_every == 0) || step + 1 == o.steps)) {
      ckpt::SaveOptions so{.root = fs::path(o.out) / "checkpoints", .step = step + 1, .keep = o.keep,
                           .config = o.config.to_json(), .client = client_state(o, step + 1, comm.world())};
      const auto save_t0 = std::chrono::steady_clock::now();
      STRATA_ASSIGN_OR_RETURN(fs::path saved, ckpt::save_checkpoint(*eng, so));
      checkpoint = saved.string();
      const double save_s = seconds_since(save_t0);
      if (root) {
        auto meta = ckpt::read_meta(saved);
        progress.note(fmt::format("checkpoint {} ({}) saved in {:.2f} s; training waits for it", saved.string(),
                                  meta ? format_bytes(meta->data_bytes()) : "size unknown", save_s));
      }
    }
  }
  if (interrupted_at) return ok();  // the caller exits 128 + the signal
  if (root) progress.finish();
  end.seconds = seconds_since(run_t0);
  end.steps = o.steps;
  double sum = 0;
  for (double l : recent_losses) sum += l;
  end.train_loss = sum / static_cast<double>(recent_losses.size());
  end.tokens_per_s = step_times.empty() ? 0 : static_cast<double>(micro * accum * o.seq_len * comm.world()) / median(step_times);
  end.hit_rate = gathers ? static_cast<double>(hits) / static_cast<double>(gathers) : -1.0;
  if (o.sample_bytes > 0) {
    if (root) fmt::print("sampling {} bytes from the model (a forward per byte; --sample-bytes 0 skips it)\n", o.sample_bytes);
    std::fflush(stdout);
    STRATA_ASSIGN_OR_RETURN(end.sample, sample_text(model, o, comm));
  }
  if (!root) return ok();
  end.out = o.out;
  end.metrics = (fs::path(o.out) / "metrics.jsonl").string();
  // A resumed run may start past the traced step: never name a file that is not there.
  end.trace = fs::exists(trace_path) ? trace_path : "(none: the traced step was not in this run)";
  end.checkpoint = checkpoint;
  const std::string err = render_report(o.out);
  end.report = err.empty() ? (fs::path(o.out) / "report.png").string() : "(not rendered: " + err + ")";
  end.peak_rss = peak_rss_bytes();
  print_end(end);
  return ok();
}

}  // namespace strata::cli
