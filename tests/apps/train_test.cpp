// strata train as a user runs it: outputs, learning, reproducibility, and errors.
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)
#include <gtest/gtest.h>
#include <thread>
#include <sys/stat.h>
#include <nlohmann/json.hpp>

#include "strata/nn/models/gpt_config.h"
#include "support/background.h"
#include "support/multirank.h"
#include "support/subprocess.h"

namespace strata {
namespace {

namespace fs = std::filesystem;
using testing::run_command;
using testing::strata_bin;
using testing::torchrun_prefix;
using testing::Background;
using testing::files_under;

std::vector<nlohmann::json> read_metrics(const fs::path& dir) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

// The start banner's optimizer row: its estimated nvme bytes equal the measured ones.
void expect_optimizer_estimated_as_held(const std::string& output) {
  const auto at = output.find("\n  optimizer ");
  ASSERT_NE(at, std::string::npos) << output;
  const std::string row = output.substr(at + 1, output.find('\n', at + 1) - at - 1);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(row, m, std::regex(R"(([0-9.]+ [KMG]iB) .*\| .* ([0-9.]+ [KMG]iB))"))) << row;
  EXPECT_EQ(m[1], m[2]) << row;  // estimated == measured
}

class Train : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::fresh_temp_dir("train"); }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(Train, DefaultRunLearnsAndWritesEveryOutput) {
  const fs::path out = dir_ / "run";
  auto r = run_command(fmt::format("{} train --out {} --steps 40 --eval-every 20 --sample-bytes 50", strata_bin(), out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // What the user sees.
  // (Without --config the biases and norms are not decayed: two parameter groups.)
  for (const char* want : {"strata train: model tiny", "ZeRO stage 3", "estimated: compute", "measured: compute",
                           "AdamW (weight decay 0.1 on matrices, none on biases and norms)",
                           "step 40/40", "strata train: done", "bytes moved", "prefetch", "sample from the model"}) {
    EXPECT_NE(r.output.find(want), std::string::npos) << want << "\n" << r.output;
  }
  // metrics.jsonl: one parseable line per step, with the loss clearly falling.
  auto rows = read_metrics(out);
  ASSERT_EQ(rows.size(), 40u);
  const double first = rows.front()["loss"], last = rows.back()["loss"];
  EXPECT_LT(last, first - 1.5) << "loss " << first << " -> " << last;
  EXPECT_TRUE(rows.back().contains("val_loss"));
  EXPECT_TRUE(rows.back()["scheduled"].get<bool>());
  EXPECT_GT(rows.back()["moved"]["host_to_nvme"].get<double>(), 0);
  EXPECT_EQ(rows.back()["moved"]["host_to_compute"], rows.back()["planned"]["host_to_compute"]);
  // trace.json: a Chrome trace with compute and gather spans.
  std::ifstream tin(out / "trace.json");
  auto trace = nlohmann::json::parse(tin);
  std::set<std::string> cats;
  for (const auto& e : trace["traceEvents"])
    if (e["ph"] == "X") cats.insert(e["cat"].get<std::string>());
  for (const char* c : {"compute", "gather", "reduce-scatter", "copy", "optimizer"}) EXPECT_TRUE(cats.contains(c)) << c;
  // report.png: a PNG.
  std::ifstream png(out / "report.png", std::ios::binary);
  char sig[8] = {};
  png.read(sig, 8);
  EXPECT_EQ(std::string(sig + 1, 3), "PNG");
  // The checkpoint: complete, named by latest, every checksum good, the run's options in it.
  std::ifstream latest(out / "checkpoints" / "latest");
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step-40");
  std::ifstream mj(out / "checkpoints" / "step-40" / "meta.json");
  const auto meta = nlohmann::json::parse(mj);
  EXPECT_EQ(meta["client"]["model"], "tiny");
  EXPECT_EQ(meta["client"]["next_step"], 40);
  auto v = run_command(fmt::format("{} ckpt verify {}", strata_bin(), (out / "checkpoints").string()));
  EXPECT_EQ(v.exit_code, 0) << v.output;
  // The swap files are gone after a clean shutdown.
  EXPECT_TRUE(fs::is_empty(out / "nvme")) << "swap files left behind";
}

TEST_F(Train, SameSeedSameLossesBitForBit) {
  std::vector<std::vector<nlohmann::json>> runs;
  for (int i = 0; i < 2; ++i) {
    const fs::path out = dir_ / fmt::format("r{}", i);
    auto r = run_command(fmt::format("{} train --out {} --steps 8 --eval-every 4 --sample-bytes 0", strata_bin(), out.string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    runs.push_back(read_metrics(out));
  }
  ASSERT_EQ(runs[0].size(), 8u);
  for (std::size_t s = 0; s < 8; ++s) {
    for (const char* k : {"loss", "grad_norm", "lr", "val_loss", "moved", "gathers"}) {
      EXPECT_EQ(runs[0][s].value(k, nlohmann::json()), runs[1][s].value(k, nlohmann::json())) << k << " at step " << s;
    }
  }
}

// --resume: at the same world size and config the losses continue bit for bit; at
// another world size (fp32, the same global batch) within a tight tolerance; the
// resumed run's metrics.jsonl holds the earlier lines once.
TEST_F(Train, ResumeContinuesBitForBitAndAtAnotherWorldSize) {
  const fs::path a = dir_ / "a", b = dir_ / "b", c = dir_ / "c";
  const std::string common = "--steps 6 --eval-every 0 --eval-batches 1 --sample-bytes 0 --fp32 --micro-batch 2";
  auto r = run_command(fmt::format("{} train --out {} {} --save-every 3 --keep 0", strata_bin(), a.string(), common));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto full = read_metrics(a);
  ASSERT_EQ(full.size(), 6u);
  // The same world size: a copy of the run as it was at step 3, resumed with --resume latest.
  fs::create_directories(b / "checkpoints");
  fs::copy(a / "checkpoints" / "step-3", b / "checkpoints" / "step-3", fs::copy_options::recursive);
  std::ofstream(b / "checkpoints" / "latest") << "step-3\n";
  {
    std::ofstream m(b / "metrics.jsonl");
    for (int s = 0; s < 4; ++s) m << full[static_cast<std::size_t>(s)].dump() << "\n";  // a line past the checkpoint too
  }
  r = run_command(fmt::format("{} train --out {} {} --resume", strata_bin(), b.string(), common));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  const auto resumed = read_metrics(b);
  ASSERT_EQ(resumed.size(), 6u);
  for (std::size_t s = 0; s < 6; ++s) {
    EXPECT_EQ(resumed[s]["step"], full[s]["step"]);
    EXPECT_EQ(resumed[s]["loss"].get<double>(), full[s]["loss"].get<double>()) << "step " << s + 1;
    EXPECT_EQ(resumed[s]["grad_norm"].get<double>(), full[s]["grad_norm"].get<double>()) << "step " << s + 1;
  }
  // One rank with micro-batch 4: the same global batch of the saved 2-rank run.
  r = run_command(fmt::format("{} train --out {} --steps 6 --eval-every 0 --eval-batches 1 --sample-bytes 0 --fp32 "
                              "--micro-batch 4 -n 1 --resume {}",
                              strata_bin(), c.string(), (a / "checkpoints" / "step-3").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto other = read_metrics(c);
  ASSERT_EQ(other.size(), 3u);
  for (std::size_t s = 0; s < 3; ++s) {
    const double want = full[s + 3]["loss"].get<double>(), got = other[s]["loss"].get<double>();
    EXPECT_NEAR(got, want, 1e-5 * want) << "step " << s + 4;
  }
}

TEST_F(Train, AnEarlierRunIsNeverOverwrittenUnlessAsked) {
  const fs::path out = dir_ / "run";
  const std::string args = fmt::format("--out {} --steps 2 --eval-every 0 --eval-batches 1 --sample-bytes 0", out.string());
  auto r = run_command(fmt::format("{} train {}", strata_bin(), args));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto before = read_metrics(out);
  r = run_command(fmt::format("{} train {}", strata_bin(), args));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  for (const char* want : {"holds an earlier run", "--resume", "--overwrite"}) EXPECT_NE(r.output.find(want), std::string::npos) << r.output;
  EXPECT_EQ(read_metrics(out), before);
  EXPECT_TRUE(fs::exists(out / "checkpoints" / "step-2" / "meta.json"));
  r = run_command(fmt::format("{} train {} --overwrite --seed 7", strata_bin(), args));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(read_metrics(out).front()["loss"], before.front()["loss"]);
  // Nothing left to do: a clear message, not a silent run.
  r = run_command(fmt::format("{} train {} --resume", strata_bin(), args));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("the checkpoint is at step 2"), std::string::npos) << r.output;
}

TEST_F(Train, OtherStagesAndOneRank) {
  for (const char* args : {"--stage 2 -n 2", "--stage 1 -n 2 --fp32", "--stage 0 -n 1", "--stage 3 -n 1 --placement auto --compute-budget 128MiB"}) {
    auto r = run_command(fmt::format("{} train --out {} --steps 4 --sample-bytes 10 {}", strata_bin(), (dir_ / "x").string(), args));
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("strata train: done"), std::string::npos) << args << "\n" << r.output;
    fs::remove_all(dir_ / "x");
  }
}

// A DeepSpeed config as the Hugging Face integration writes it: "auto" keys, a batch
// given only as train_batch_size, a scheduler block with "auto" steps. The batch is
// derived as DeepSpeed derives it, the "auto" keys are printed as resolved, and the
// scheduler runs with --steps as its total: metrics.jsonl's lr is WarmupDecayLR's.
TEST_F(Train, AutoKeysAndTheBatchTripleAndTheSchedulerBlock) {
  const fs::path cfg = dir_ / "ds.json";
  std::ofstream(cfg) << R"({"train_batch_size": 16, "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 1e-3,
                  "warmup_num_steps": 2, "warmup_type": "linear", "total_num_steps": "auto"}},
    "zero_optimization": {"stage": 2, "cpu_offload": true}})";
  const fs::path out = dir_ / "run";
  auto r = run_command(fmt::format("{} train --config {} --out {} -n 2 --steps 6 --seq-len 32 --sample-bytes 0 "
                                   "--eval-every 0 --no-save",
                                   strata_bin(), cfg.string(), out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* want : {"6 steps x 8 seq x 32 tokens x 1 micro-step x 2 ranks = 512 tokens/step",
                           "note: with --config, what the config and the flags leave out takes DeepSpeed's defaults "
                           "(here ZeRO stage 2, fp32, optimizer state on cpu), not the demo's",
                           "  auto   bf16.enabled = false", "train_micro_batch_size_per_gpu = 8 (derived",
                           "gradient_accumulation_steps = 1 (derived",
                           "scheduler.params.total_num_steps = 6", "AdamW, WarmupDecayLR: linear warmup 0 -> 0.001",
                           "optimizer state on host"}) {
    EXPECT_NE(r.output.find(want), std::string::npos) << want << "\n" << r.output;
  }
  // DeepSpeed's lrs (Note [scheduler stepping]): 0, then iterations 0..4 of a linear
  // warmup over 2 steps and a linear decay to 0 at step 6.
  const std::vector<double> want = {0.0, 0.0, 5e-4, 1e-3, 7.5e-4, 5e-4};
  auto rows = read_metrics(out);
  ASSERT_EQ(rows.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(rows[i]["lr"].get<double>(), want[i], 1e-12) << "step " << i;
}

// DeepSpeed's bf16.bf16_optimizer_states in a config that leaves bf16 to strata ("auto"),
// with --bf16 on the command line: the optimizer state is bf16, two thirds of fp32
// state's bytes on nvme (fp32 master, bf16 m and v). The flag turns bf16 on after the
// file is read, so the key is applied again then (Config::apply_bf16_optimizer_states).
TEST_F(Train, Bf16OptimizerStatesFollowTheBf16Flag) {
  std::map<std::string, std::string> optimizer_row;
  for (const char* key : {"", R"(, "bf16_optimizer_states": true)"}) {
    const fs::path cfg = dir_ / "ds.json", out = dir_ / "run";
    std::ofstream(cfg) << fmt::format(R"({{"bf16": {{"enabled": "auto"{}}}, "train_micro_batch_size_per_gpu": 2,
      "zero_optimization": {{"stage": 2, "offload_optimizer": {{"device": "nvme", "nvme_path": "{}"}}}}}})",
                                      key, (dir_ / "nvme").string());
    auto r = run_command(fmt::format("{} train --config {} --bf16 --out {} --overwrite -n 1 --steps 1 --seq-len 32 "
                                     "--sample-bytes 0 --eval-batches 0 --no-save",
                                     strata_bin(), cfg.string(), out.string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto at = r.output.find("\n  optimizer ");
    ASSERT_NE(at, std::string::npos) << r.output;
    optimizer_row[key] = r.output.substr(at + 1, r.output.find('\n', at + 1) - at - 1);
  }
  const auto mib = [](const std::string& row) {  // the row's first size: this rank's optimizer bytes
    std::smatch m;
    return std::regex_search(row, m, std::regex(R"(([0-9.]+) MiB)")) ? std::stod(m[1]) : -1.0;
  };
  const double fp32 = mib(optimizer_row[""]), bf16 = mib(optimizer_row[R"(, "bf16_optimizer_states": true)"]);
  EXPECT_NEAR(bf16 / fp32, 2.0 / 3.0, 0.01) << optimizer_row[""] << "\n" << optimizer_row[R"(, "bf16_optimizer_states": true)"];
}

// DeepSpeed's Lion block trains under strata train, and the estimate printed before the
// run counts Lion's one state tensor (8 bytes a parameter with the master): it counted
// Adam's 12 for every optimizer, 19.0 MiB estimated beside 12.7 MiB measured here.
TEST_F(Train, ALionConfigTrainsAndItsStateIsEstimatedAsHeld) {
  const fs::path cfg = dir_ / "ds.json", out = dir_ / "run";
  std::ofstream(cfg) << fmt::format(R"({{"train_micro_batch_size_per_gpu": 2,
    "optimizer": {{"type": "Lion", "params": {{"lr": 1e-4, "betas": [0.9, 0.99], "weight_decay": 0.01}}}},
    "zero_optimization": {{"stage": 2, "offload_optimizer": {{"device": "nvme", "nvme_path": "{}"}}}}}})",
                                    (dir_ / "nvme").string());
  auto r = run_command(fmt::format("{} train --config {} --out {} -n 2 --steps 3 --seq-len 32 --sample-bytes 0 "
                                   "--eval-batches 0 --no-save",
                                   strata_bin(), cfg.string(), out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("; Lion, "), std::string::npos) << r.output;
  expect_optimizer_estimated_as_held(r.output);
  EXPECT_EQ(read_metrics(out).size(), 3u);
}

// A DeepSpeed BERT-style Lamb block (bias correction off, the ratio clamped to 0.3) trains
// under strata train at two ranks with its state on nvme, the loss going down, and the
// estimate counts Lamb's two state tensors as held.
TEST_F(Train, ALambConfigTrainsAndItsStateIsEstimatedAsHeld) {
  const fs::path cfg = dir_ / "ds.json", out = dir_ / "run";
  std::ofstream(cfg) << fmt::format(R"({{"train_micro_batch_size_per_gpu": 2,
    "optimizer": {{"type": "Lamb", "params": {{"lr": 1e-2, "weight_decay": 0.01, "bias_correction": false,
                                            "max_coeff": 0.3, "min_coeff": 0.01}}}},
    "zero_optimization": {{"stage": 2, "offload_optimizer": {{"device": "nvme", "nvme_path": "{}"}}}}}})",
                                    (dir_ / "nvme").string());
  auto r = run_command(fmt::format("{} train --config {} --out {} -n 2 --steps 8 --seq-len 32 --sample-bytes 0 "
                                   "--eval-batches 0 --no-save",
                                   strata_bin(), cfg.string(), out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("; Lamb, "), std::string::npos) << r.output;
  expect_optimizer_estimated_as_held(r.output);
  const auto metrics = read_metrics(out);
  ASSERT_EQ(metrics.size(), 8u);
  EXPECT_LT(metrics.back()["loss"].get<double>(), metrics.front()["loss"].get<double>());
}

// --autocast (config torch_autocast): the forward in bf16 autocast over fp32 parameters.
// Its losses track the fp32 run's within 2% and are not the fp32 run's (the forwards did
// compute in bf16), and the banner says which precision ran.
TEST_F(Train, AutocastTracksFp32AndIsNotFp32) {
  std::map<std::string, std::vector<nlohmann::json>> runs;
  for (const char* precision : {"--autocast", "--fp32"}) {
    const fs::path out = dir_ / (precision + 2);
    auto r = run_command(fmt::format("{} train --out {} {} --steps 6 --seq-len 32 --sample-bytes 0 --eval-batches 0 "
                                     "--no-save",
                                     strata_bin(), out.string(), precision));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    if (std::string(precision) == "--autocast") {
      EXPECT_NE(r.output.find("bf16 autocast, fp32 parameters"), std::string::npos) << r.output;
    }
    runs[precision + 2] = read_metrics(out);
    ASSERT_EQ(runs[precision + 2].size(), 6u);
  }
  double most = 0;
  for (std::size_t s = 0; s < 6; ++s) {
    const double a = runs["autocast"][s]["loss"], f = runs["fp32"][s]["loss"];
    EXPECT_NEAR(a, f, 0.02 * f) << "step " << s + 1;
    most = std::max(most, std::abs(a - f) / f);
  }
  EXPECT_GT(most, 1e-5);
}

// An inconsistent batch triple is refused once, by the launching process, before the run
// directory exists or a rank starts (it used to be found by every rank after launch).
TEST_F(Train, AnInconsistentBatchTripleIsRefusedBeforeLaunch) {
  const fs::path cfg = dir_ / "bad.json";
  std::ofstream(cfg) << R"({"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4,
                            "gradient_accumulation_steps": 2})";
  const fs::path out = dir_ / "never";
  auto r = run_command(fmt::format("{} train --config {} --out {} -n 2 --steps 2", strata_bin(), cfg.string(),
                                   out.string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  const std::string msg = "train_batch_size 30 is not train_micro_batch_size_per_gpu 4 * gradient_accumulation_steps 2 "
                          "* world size 2";
  const auto first = r.output.find(msg);
  ASSERT_NE(first, std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(msg, first + 1), std::string::npos) << "reported more than once:\n" << r.output;
  EXPECT_FALSE(fs::exists(out)) << r.output;
}

// Issue 14's memory contract, on a 101M model with host offload and with every state on
// nvme: strata estimate's per-tier figures agree with the most the engine held in that
// tier within 10%. With host offload, the process's peak RSS above the runtime's own
// (before the engine existed) is the peak of live CPU tensors within 10% (no leak, no
// heap kept by glibc, Note [host heap]), and the engine's compute + host figure is that
// peak within 10%. With everything on nvme the host holds little (the staging pools,
// which are not tensors: 428 MB, against 194 MB of tensors) and RSS was measured at
// 1.14x tensors + the engine's host figure (86 MB more, not explained yet): bounded at
// 1.25x, far from the 8 GB this issue found missing.
TEST_F(Train, EstimateAndPeakRssAgreeWithWhatTheEngineHolds) {
  for (const char* where : {"cpu", "nvme"}) {
    const fs::path out = dir_ / where;
    auto r = run_command(fmt::format("{} train -n 1 --model custom:8x1024x16 --steps 3 --micro-batch 1 --out {} "
                                     "--eval-every 0 --sample-bytes 0 --no-save --offload-param {} --offload-optimizer {}",
                                     strata_bin(), out.string(), where, where));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto rows = read_metrics(out);
    ASSERT_EQ(rows.size(), 3u);
    std::map<std::string, double> peak;
    double tensors = 0;
    for (const auto& row : rows) {
      for (const char* t : {"compute", "host", "nvme"}) peak[t] = std::max(peak[t], row["memory_peak"][t].get<double>());
      tensors = std::max(tensors, row["tensor_peak"].get<double>());
    }
    const auto& last = rows.back();
    for (const char* t : {"host", "nvme"}) {
      const double est = last["estimate"][t].get<double>();
      EXPECT_NEAR(est, peak[t], 0.10 * std::max(est, peak[t])) << where << " " << t << ": estimate " << est
                                                                << " vs engine peak " << peak[t];
    }
    const double engine = peak["compute"] + peak["host"];
    const double rss = last["peak_rss"].get<double>() - last["runtime_rss"].get<double>();
    if (std::string(where) == "cpu") {
      EXPECT_NEAR(rss, tensors, 0.10 * tensors) << "peak RSS above the runtime's " << rss
                                                << " vs the peak of live tensors " << tensors;
      EXPECT_NEAR(engine, tensors, 0.10 * tensors) << "engine compute + host " << engine;
    } else {
      EXPECT_LT(rss, 1.25 * (tensors + peak["host"])) << "nvme: peak RSS above the runtime's " << rss;
    }
    fmt::print("{}: host estimate {:.0f} MB, engine peak {:.0f} MB; nvme {:.0f} / {:.0f} MB; RSS above runtime {:.0f} MB "
               "(runtime {:.0f} MB), live tensors {:.0f} MB, engine compute + host {:.0f} MB\n",
               where, last["estimate"]["host"].get<double>() / 1e6, peak["host"] / 1e6,
               last["estimate"]["nvme"].get<double>() / 1e6, peak["nvme"] / 1e6, rss / 1e6,
               last["runtime_rss"].get<double>() / 1e6, tensors / 1e6, engine / 1e6);
  }
}

TEST_F(Train, RunsAsOneRankPerProcessUnderTorchrun) {
  auto r = run_command(fmt::format("{}{} train --out {} --steps 3 --sample-bytes 0", torchrun_prefix(2), strata_bin(), (dir_ / "t").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("2 ranks"), std::string::npos) << r.output;
}

TEST_F(Train, BadFlagsAndDataAreClearErrors) {
  struct Case {
    std::string args, want;
    int code = 2;
  };
  const std::vector<Case> cases = {
      {"--data /nonexistent/corpus", "data path does not exist [path=/nonexistent/corpus]"},
      {"--data " + (dir_ / "empty").string(), "no non-empty text files"},
      {"--model gpt5", "unknown model 'gpt5'"},
      {"--stage 7", "--stage 7: expected 0, 1, 2 or 3"},
      {"--offload-optimizer gpu", "--offload-optimizer gpu: expected cpu, nvme or none"},
      {"--seq-len 4096", "--seq-len 4096 is longer than model tiny's context of 256"},
      {"--fp16", "--fp16 needs a GPU"},
      {"--device gpu", "--device gpu: expected auto, cpu or cuda"},
#ifndef STRATA_CUDA
      {"--device cuda", "--device cuda: this strata was built without CUDA"},
#endif
      {"--compute-budget 2parsecs", "--compute-budget"},
      {"--bogus", "The following argument was not expected: --bogus"},
      // Found by the ranks' planners at setup, before any step (exit code 1): not yet
      // checked before launch. The message names the knob.
      {"--stage 3 --compute-budget 64KiB",
       "the compute budget is too small for one step's working set (give a larger --compute-budget", 1},
      {"--stage 3 --compute-budget 64KiB", "cannot fit: need", 1},
      // Issue 18: accepted before, then failed or diverged after launch.
      {"--lr nan", "--lr: expected a finite number > 0, got nan"},
      {"--lr 0", "--lr: expected a finite number > 0, got 0"},
      {"--lr 1e-3 --min-lr 2e-3", "--min-lr 0.002 is above the peak learning rate 0.001"},
      {"--clip nan", "--clip nan: expected a number >= 0"},
      {"--trace-step 5", "--trace-step 5: the run's steps are 0..1 (--steps 2)"},
      {"--data " + (dir_ / "fifo").string(), "not a regular file or a folder"},
      {"--data " + (dir_ / "small.txt").string() + " --seq-len 200",
       "--data is too small for --seq-len 200: give more data or a shorter --seq-len"},
  };
  fs::create_directories(dir_ / "empty");
  ASSERT_EQ(::mkfifo((dir_ / "fifo").c_str(), 0600), 0);
  std::ofstream(dir_ / "small.txt") << std::string(300, 'x');
  for (const auto& c : cases) {
    auto r = run_command(fmt::format("{} train --out {} --steps 2 {}", strata_bin(), (dir_ / "bad").string(), c.args));
    // One exit code for every input error, the command line's own included (CLI11's
    // were 105, 109, ...): docs/reliability.md.
    EXPECT_EQ(r.exit_code, c.code) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.want), std::string::npos) << c.args << "\n" << r.output;
    if (c.code == 2) {
      EXPECT_LT(r.output.size(), 2000u) << "a short message, not 309 digits:\n" << r.output;
    }
  }
}

// Issue 18: `-n 64` on 2 cores started without a word and never reached a step; a run
// whose ranks cannot fit in RAM is refused before any rank starts. (Stage 0 keeps the
// whole of gpt2-xl and its Adam state on every rank: about 28 GB each.)
TEST_F(Train, TooManyRanksWarnAndRanksThatCannotFitAreRefusedBeforeLaunch) {
  const fs::path out = dir_ / "never";
  auto r = run_command(fmt::format("{} train -n 64 --model gpt2-xl --stage 0 --out {} --steps 1", strata_bin(),
                                   out.string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  if (std::thread::hardware_concurrency() < 64) {
    EXPECT_NE(r.output.find("warning: 64 ranks on "), std::string::npos) << r.output;
  }
  EXPECT_NE(r.output.find("64 ranks need about "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("of model state in RAM, strata's estimate of its host tier and, on a CPU, its compute tier), but "), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(out));
}

// Issue 18: a small custom model failed at its first step with "placement does not
// fit ... budget 177.8 KiB", a budget the user never set.
TEST_F(Train, SmallCustomModelsTrainOnTheDefaults) {
  for (const char* model : {"custom:2x64x2", "custom:1x512x8"}) {
    const fs::path out = dir_ / fmt::format("run-{}", model + 7);
    auto r = run_command(fmt::format("{} train --model {} --out {} --steps 2 --sample-bytes 0 --eval-every 0 --no-save",
                                     strata_bin(), model, out.string()));
    ASSERT_EQ(r.exit_code, 0) << model << "\n" << r.output;
    EXPECT_NE(r.output.find("no compute budget"), std::string::npos) << r.output;
  }
}

// Issue 18: a 24 KB data file failed with "the validation split (0 B) has no stretch of
// 129 bytes"; --eval-batches 0 switches validation off, and --help exits 0.
TEST_F(Train, SmallDataTrainsAndValidationCanBeSwitchedOff) {
  const fs::path data = dir_ / "small.txt";
  {
    std::ofstream f(data);
    for (int i = 0; f.tellp() < 24 * 1024; ++i) f << "a small corpus, line " << i << "\n";
  }
  for (const char* extra : {"", "--eval-batches 0"}) {
    const fs::path out = dir_ / (std::string("run") + (*extra ? "-noval" : ""));
    auto r = run_command(fmt::format("{} train -n 1 --data {} --out {} --steps 2 --sample-bytes 0 --no-save {}",
                                     strata_bin(), data.string(), out.string(), extra));
    ASSERT_EQ(r.exit_code, 0) << extra << "\n" << r.output;
    const auto rows = read_metrics(out);
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_EQ(rows.back().contains("val_loss"), *extra == '\0') << extra;
  }
  EXPECT_EQ(run_command(strata_bin() + " train --help").exit_code, 0);
}

// Issue 18: gpt2-large diverged on the defaults (a warmup of 10% of a 5-step run). The
// default warmup is at least one step per 10M parameters, so the lrs of a short run of
// a 38M model stay low: DeepSpeed's WarmupCosineLR (Note [scheduler stepping]) at the
// size-scaled peak 6e-4 * sqrt(125M / N).
TEST_F(Train, TheDefaultWarmupGrowsWithTheModel) {
  const char* model = "custom:3x1024x16";
  auto cfg = nn::gpt_config(model, 256, 0);
  ASSERT_TRUE(cfg);
  const auto params = static_cast<double>(cfg->parameter_count());
  const std::int64_t warmup = static_cast<std::int64_t>(std::ceil(params / 1e7));
  ASSERT_EQ(warmup, 4);  // 10% of 3 steps would be 0 -> 1
  const double peak = 6e-4 * std::sqrt(125e6 / params);
  const fs::path out = dir_ / "run";
  auto r = run_command(fmt::format("{} train -n 1 --model {} --out {} --steps 3 --seq-len 32 --micro-batch 2 "
                                   "--sample-bytes 0 --eval-batches 0 --no-save",
                                   strata_bin(), model, out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(fmt::format("linear warmup over {} steps", warmup)), std::string::npos) << r.output;
  const auto rows = read_metrics(out);
  ASSERT_EQ(rows.size(), 3u);
  const double want[] = {0.0, 0.0, peak / static_cast<double>(warmup)};
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(rows[i]["lr"].get<double>(), want[i], 1e-12) << "step " << i;
}

// Issue 18: the demo's swap directory was <nvme>/train/rank<r> for every run, so two
// runs sharing one --nvme-path collided ("in use by a live process"), and with a
// config that named no job each rank named it by its pid, where nothing found what a
// killed rank left. The job is named after the run directory (Note [default job name]).
TEST_F(Train, TwoRunsCanShareAnNvmePath) {
  const fs::path nvme = dir_ / "nvme";
  const std::string common = fmt::format("{} train -n 1 --nvme-path {} --sample-bytes 0 --eval-batches 0 --no-save "
                                         "--seq-len 64", strata_bin(), nvme.string());
  Background first(fmt::format("{} --out {} --steps 200", common, (dir_ / "first").string()), dir_);
  // The first run holds its swap directory once its engine exists (it writes there).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (files_under(nvme).empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_FALSE(files_under(nvme).empty()) << first.err();
  auto second = run_command(fmt::format("{} --out {} --steps 2", common, (dir_ / "second").string()));
  EXPECT_EQ(second.exit_code, 0) << second.output;
  EXPECT_FALSE(first.exited()) << "the first run ended before the second ran beside it";
  ::kill(first.pid(), SIGTERM);  // its clean stop removes its swap files too
  const auto code = first.wait_exit(std::chrono::seconds(60));
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, 128 + SIGTERM) << first.err();
  EXPECT_TRUE(files_under(nvme).empty()) << fmt::format("{}", fmt::join(files_under(nvme), "\n"));
}

}  // namespace
}  // namespace strata
