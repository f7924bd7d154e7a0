// Checkpoints over real processes: saved at world sizes 4, 2 and 1 and loaded at the
// others (stages 2 and 3, state on host and on nvme, another chunk size), a rank killed
// at each point of a save, damaged files, and a disk that fills up mid-save.
#include <sys/mount.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <tuple>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "strata/ckpt/meta.h"
#include "strata/ckpt/shard_file.h"
#include "support/multirank.h"
#include "support/rank_checks.h"

namespace strata {
namespace {

namespace fs = std::filesystem;
using testing::all_output;
using testing::expect_all_ok;
using testing::run_ranks;

std::string worker() { return std::string(STRATA_TEST_BIN_DIR) + "/ckpt_worker"; }

// Every rank failed with an expected error (exit 3) whose text contains `what`.
void expect_all_fail(const std::vector<testing::RankResult>& rs, const std::string& what) {
  for (const auto& r : rs) {
    ASSERT_EQ(r.exit_code, 3) << all_output(rs);
    EXPECT_NE(r.output.find(what), std::string::npos) << "rank " << r.rank << " lacks '" << what << "':\n" << r.output;
  }
}

std::map<std::string, std::string> nvme_env(const fs::path& dir) { return {{"STRATA_TEST_NVME", dir.string()}}; }

// Saved at 4, 2 and 1 ranks (stage 3, chunk 2048, state on host or nvme); loaded at the
// other two world sizes at stage 3 with the other device, and at stage 2 with a chunk
// of 4096; every load continues training against AdamW run without interruption.
// Found by fuzz_ckpt_meta: a metadata number that is a float beyond the field's range
// (an offset of 1.1e74) was cast, which is undefined behaviour; now it is an error
// naming the value, as is a fraction where a whole number belongs.
TEST(CheckpointMeta, NumbersThatAreNotWholeOrDoNotFitAreErrors) {
  ckpt::CheckpointMeta m;
  m.version = ckpt::kFormatVersion;
  m.params.push_back({.name = "w", .shape = {2, 3}, .dtype = "float32", .numel = 6});
  const nlohmann::json good = ckpt::to_json(m);
  ASSERT_TRUE(ckpt::from_json(good)) << ckpt::from_json(good).error();
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"offset", 1.11111e74}, {"offset", 2.5}, {"chunk", -1e30}, {"shape", nlohmann::json::array({2, 1e300})}}) {
    nlohmann::json bad = good;
    bad["params"][0][key] = value;
    auto r = ckpt::from_json(bad);
    ASSERT_FALSE(r) << key << " = " << value.dump();
    EXPECT_EQ(r.error().code(), ErrorCode::kDataLoss);
    EXPECT_NE(r.error().message().find("expected a whole number"), std::string::npos) << r.error();
  }
  nlohmann::json bad = good;
  bad["world"] = 1e12;  // an int field
  EXPECT_FALSE(ckpt::from_json(bad));
}

// A checkpoint saved before checkpoints held buffers has no "buffers" key: it reads as
// none recorded (loading keeps the model's own), which differs from an empty list.
TEST(CheckpointMeta, BuffersRoundTripAndOlderCheckpointsHaveNone) {
  ckpt::CheckpointMeta m;
  auto old = ckpt::from_json(ckpt::to_json(m));
  ASSERT_TRUE(old) << old.error();
  EXPECT_FALSE(ckpt::to_json(m).contains("buffers"));
  EXPECT_FALSE(old->buffers.has_value());
  m.buffers = std::vector<ckpt::BufferMeta>{{.name = "bn.running_var", .shape = {4}, .dtype = "Float"},
                                            {.name = "count", .shape = {}, .dtype = "Long"}};
  auto now = ckpt::from_json(ckpt::to_json(m));
  ASSERT_TRUE(now) << now.error();
  ASSERT_TRUE(now->buffers.has_value());
  ASSERT_EQ(now->buffers->size(), 2u);
  EXPECT_EQ((*now->buffers)[0].name, "bn.running_var");
  EXPECT_EQ((*now->buffers)[0].shape, std::vector<std::int64_t>{4});
  EXPECT_EQ((*now->buffers)[1].dtype, "Long");
  EXPECT_TRUE((*now->buffers)[1].shape.empty());
}

// Note [parameter groups]: the groups' lr scales are kept; a checkpoint of one group
// (or from before groups) has none, and loading then keeps the engine's.
TEST(CheckpointMeta, LrScalesRoundTripAndOneGroupHasNone) {
  ckpt::CheckpointMeta m;
  EXPECT_FALSE(ckpt::to_json(m)["optimizer"].contains("lr_scales"));
  m.lr_scales = {1.0, 0.25};
  auto back = ckpt::from_json(ckpt::to_json(m));
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(back->lr_scales, (std::vector<double>{1.0, 0.25}));
}

// The groups' weight decays, Adam's betas and SGD's momentum are kept (a schedule may have
// moved them); a checkpoint from before them has none, and loading then keeps the engine's.
TEST(CheckpointMeta, WeightDecaysBetasAndMomentumRoundTripAndMayBeAbsent) {
  ckpt::CheckpointMeta m;
  EXPECT_FALSE(ckpt::to_json(m)["optimizer"].contains("weight_decays"));
  EXPECT_FALSE(ckpt::to_json(m)["optimizer"].contains("betas"));
  m.weight_decays = {0.1, 0.0};
  m.betas = std::array<double, 2>{0.85, 0.99};
  m.momentum = 0.9;
  auto back = ckpt::from_json(ckpt::to_json(m));
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(back->weight_decays, (std::vector<double>{0.1, 0.0}));
  ASSERT_TRUE(back->betas.has_value());
  EXPECT_EQ(*back->betas, (std::array<double, 2>{0.85, 0.99}));
  EXPECT_EQ(back->momentum, std::optional<double>(0.9));
}

// Every pair of world sizes; each checkpoint loads onto both devices, so every world
// loads onto host and nvme, and both devices save. (The saving device alternates rather
// than multiplying the matrix: a rank's files do not depend on where its state lived.)
TEST(Checkpoint, SavedAtAnyWorldLoadsAtEveryOtherAndContinuesExactly) {
  const fs::path nvme = testing::fresh_temp_dir("ckpt-nvme");
  for (const auto& [saved, device] : {std::pair{4, "host"}, std::pair{2, "nvme"}, std::pair{1, "host"}}) {
    const std::string other = std::string(device) == "host" ? "nvme" : "host";
    const fs::path dir = testing::fresh_temp_dir("ckpt");
    expect_all_ok(run_ranks(saved, {worker(), "save", dir.string(), fmt::format("3:{}:2048", device), "4"},
                            std::chrono::seconds(120), nvme_env(nvme)));
    for (int world : {4, 2, 1}) {
      if (world == saved) continue;
      SCOPED_TRACE(fmt::format("{} saved at world {}, loaded at world {}", device, saved, world));
      expect_all_ok(run_ranks(world, {worker(), "load", dir.string(), fmt::format("3:{}:2048", other), "4"},
                              std::chrono::seconds(120), nvme_env(nvme)));
      expect_all_ok(run_ranks(world, {worker(), "load", dir.string(), fmt::format("2:{}:4096", device), "4"},
                              std::chrono::seconds(120), nvme_env(nvme)));
    }
    fs::remove_all(dir);
  }
  // Stage 2 saved (state sharded, parameters replicated), stage 3 loaded.
  const fs::path dir = testing::fresh_temp_dir("ckpt-s2");
  expect_all_ok(run_ranks(2, {worker(), "save", dir.string(), "2:nvme:2048", "4"}, std::chrono::seconds(120), nvme_env(nvme)));
  expect_all_ok(run_ranks(3, {worker(), "load", dir.string(), "3:nvme:4096", "4"}, std::chrono::seconds(120), nvme_env(nvme)));
  fs::remove_all(dir);
  fs::remove_all(nvme);
}

// Stages 0 and 1 (parameters replicated; at stage 0 rank 0 writes everything, the
// optimizer state unsharded) saved, and loaded at other stages, world sizes, devices and
// chunk sizes; each load continues training against AdamW run without interruption.
TEST(Checkpoint, StagesZeroAndOneSaveAndLoadAcrossStages) {
  const fs::path nvme = testing::fresh_temp_dir("ckpt-nvme01");
  struct Case {
    const char* saved;
    int save_world;
    std::vector<std::pair<int, const char*>> loads;
  };
  for (const Case& c : {Case{"0:host:2048", 2, {{3, "3:nvme:4096"}, {1, "1:host:2048"}}},
                        Case{"1:nvme:2048", 2, {{2, "0:host:4096"}, {4, "2:host:2048"}, {1, "1:nvme:4096"}}}}) {
    const fs::path dir = testing::fresh_temp_dir("ckpt-s01");
    expect_all_ok(run_ranks(c.save_world, {worker(), "save", dir.string(), c.saved, "4"}, std::chrono::seconds(120),
                            nvme_env(nvme)));
    for (const auto& [world, layout] : c.loads) {
      SCOPED_TRACE(fmt::format("{} saved at world {}, loaded as {} at world {}", c.saved, c.save_world, layout, world));
      expect_all_ok(run_ranks(world, {worker(), "load", dir.string(), layout, "4"}, std::chrono::seconds(120),
                              nvme_env(nvme)));
    }
    fs::remove_all(dir);
  }
  fs::remove_all(nvme);
}

// SIGKILL on one rank at each point of a save: the previous checkpoint always loads,
// and latest never names a partial one.
TEST(Checkpoint, RankKilledAnywhereInASaveLeavesTheLastCheckpointLoadable) {
  struct Case {
    const char* point;
    int victim;
    int latest;      // the step latest names afterwards
    bool step3_dir;  // a complete step-3 directory exists
  };
  for (const Case& c : {Case{"begin", 1, 2, false}, Case{"shard", 1, 2, false}, Case{"written", 0, 2, false},
                        Case{"meta", 0, 2, false}, Case{"renamed", 0, 2, true}, Case{"latest", 0, 3, true}}) {
    SCOPED_TRACE(fmt::format("killed at {} on rank {}", c.point, c.victim));
    const fs::path dir = testing::fresh_temp_dir("ckpt-kill");
    auto rs = run_ranks(2, {worker(), "kill", dir.string(), "3:host:2048", c.point, std::to_string(c.victim)},
                        std::chrono::seconds(60));
    EXPECT_EQ(rs[c.victim].exit_code, 128 + SIGKILL) << all_output(rs);
    EXPECT_EQ(fs::exists(dir / "step-3"), c.step3_dir);
    expect_all_ok(run_ranks(1, {worker(), "check", dir.string(), std::to_string(c.latest)}));
    fs::remove_all(dir);
  }
}

// A flipped byte, a truncated file and a deleted file: each a clear error naming the file.
TEST(Checkpoint, DamagedFilesAreNamedWhenLoading) {
  struct Damage {
    const char* what;
    const char* expect;
  };
  for (const Damage& d : {Damage{"flip", "checksum mismatch"}, Damage{"truncate", "truncated"}, Damage{"delete", "No such file"},
                          Damage{"meta", "meta.json"}}) {
    SCOPED_TRACE(d.what);
    const fs::path dir = testing::fresh_temp_dir("ckpt-bad");
    expect_all_ok(run_ranks(2, {worker(), "save", dir.string(), "3:host:2048", "2"}));
    const fs::path file = dir / "step-2" / "rank-00001.bin";
    const std::string what(d.what);
    if (what == "flip") {
      std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(100);
      char b = 0;
      f.read(&b, 1);
      b = static_cast<char>(b ^ 0x10);
      f.seekp(100);
      f.write(&b, 1);
    } else if (what == "truncate") {
      fs::resize_file(file, fs::file_size(file) - 10);
    } else if (what == "delete") {
      fs::remove(file);
    } else {
      std::ofstream(dir / "step-2" / "meta.json", std::ios::app) << " ";
    }
    auto rs = run_ranks(2, {worker(), "load-bad", dir.string(), "3:host:2048"});
    expect_all_fail(rs, d.expect);
    if (what != "meta") expect_all_fail(rs, "rank-00001.bin");
    fs::remove_all(dir);
  }
}

TEST(Checkpoint, AStepSavedAgainReplacesTheEarlierOne) {
  const fs::path dir = testing::fresh_temp_dir("ckpt-resave");
  expect_all_ok(run_ranks(2, {worker(), "resave", dir.string()}));
  fs::remove_all(dir);
}

// A checkpoint of another model: refused, naming every parameter that differs.
TEST(Checkpoint, AnotherModelIsRefusedWithTheNamesAndShapesThatDiffer) {
  const fs::path dir = testing::fresh_temp_dir("ckpt-other");
  expect_all_ok(run_ranks(2, {worker(), "save", dir.string(), "3:host:2048", "2"}));
  auto rs = run_ranks(2, {worker(), "load-other", dir.string()});
  expect_all_fail(rs, "the checkpoint does not match the model");
  expect_all_fail(rs, "'in.weight' is [48, 16] in the model, [32, 16] in the checkpoint");
  expect_all_fail(rs, "'extra.weight' [4, 4] is not in the checkpoint");
  expect_all_fail(rs, "'mid.weight' [32, 32] is in the checkpoint, not in the model");
  fs::remove_all(dir);
}

// A model's buffers (batch norm's running statistics; SaveOptions::buffers): rank 0's
// saved whole in their own dtypes, loaded by name on every rank (also after resharding);
// a model whose buffers differ is refused, naming each difference, before anything loads.
TEST(Checkpoint, BuffersAreSavedFromRankZeroAndLoadedByName) {
  const fs::path dir = testing::fresh_temp_dir("ckpt-buffers");
  auto rs = run_ranks(2, {worker(), "buffers", dir.string()});
  expect_all_fail(rs, "buffer 'bn.running_mean' is [6] in the model, [5] in the checkpoint");
  expect_all_fail(rs, "buffer 'extra' [2] is not in the checkpoint");
  expect_all_fail(rs, "buffer 'mask' [3] is in the checkpoint, not in the model");
  fs::remove_all(dir);
}

// A model smaller than one chunk shard at 2 ranks: rank 0's shard holds every parameter,
// rank 1's none. Loading once set the parameters' gradient flags only for the rank's own
// shards, so rank 0 skipped the gradient-flag all-reduce of the next step that rank 1
// ran: the first step after loading deadlocked (found with a Python model).
TEST(Checkpoint, AModelWithinOneRanksShardLoadsAndTrainsOn) {
  const fs::path dir = testing::fresh_temp_dir("ckpt-one-shard");
  expect_all_ok(run_ranks(2, {worker(), "one-shard", dir.string()}));
  fs::remove_all(dir);
}

// strata ckpt on a checkpoint saved by 2 ranks: inspect, verify, reshard for 3 (then
// loaded at 3 ranks, training on against the uninterrupted reference), and verify
// failing on a flipped byte.
TEST(Checkpoint, CliInspectsVerifiesAndReshards) {
  const fs::path dir = testing::fresh_temp_dir("ckpt-cli");
  const std::string strata = std::string(STRATA_TEST_BIN_DIR) + "/strata";
  expect_all_ok(run_ranks(2, {worker(), "save", dir.string(), "3:host:2048", "4"}));
  auto sh = [](const std::string& cmd) {
    std::string out;
    FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    return std::pair{::pclose(p), out};
  };
  auto [rc, out] = sh(strata + " ckpt inspect " + dir.string());
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("saved by     2 ranks, ZeRO stage 3"), std::string::npos) << out;
  EXPECT_NE(out.find("rank-00001.bin"), std::string::npos) << out;
  std::tie(rc, out) = sh(strata + " ckpt verify " + dir.string());
  EXPECT_EQ(rc, 0) << out;
  std::tie(rc, out) = sh(strata + " ckpt reshard " + dir.string() + " --world 3 --out " + (dir / "r3").string());
  ASSERT_EQ(rc, 0) << out;
  EXPECT_TRUE(fs::exists(dir / "r3" / "step-4" / "rank-00002.bin"));
  std::tie(rc, out) = sh(strata + " ckpt verify " + (dir / "r3").string());
  EXPECT_EQ(rc, 0) << out;
  expect_all_ok(run_ranks(3, {worker(), "load", (dir / "r3").string(), "3:host:2048", "4"}));
  {
    std::fstream f(dir / "r3" / "step-4" / "rank-00002.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(8);
    const char b = static_cast<char>(f.get() ^ 0x10);
    f.seekp(8);
    f.put(b);
  }
  std::tie(rc, out) = sh(strata + " ckpt verify " + (dir / "r3").string());
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("FAILED  rank-00002.bin"), std::string::npos) << out;
  fs::remove_all(dir);
}

// EIO while writing the last rank's data file: a clear error on every rank, naming the
// file; the previous checkpoint is intact and latest still names it.
TEST(Checkpoint, AnIoErrorMidSaveIsAClearErrorOnEveryRank) {
  const fs::path dir = testing::fresh_temp_dir("ckpt-eio");
  auto rs = run_ranks(2, {worker(), "eio", dir.string()});
  expect_all_fail(rs, "rank-00001.bin");
  expect_all_fail(rs, "while saving step 3; the checkpoint of step 2 is intact");
  EXPECT_FALSE(fs::exists(dir / "step-3.tmp"));
  EXPECT_FALSE(fs::exists(dir / "step-3"));
  expect_all_ok(run_ranks(1, {worker(), "check", dir.string(), "2"}));
  fs::remove_all(dir);
}

// A loop-mounted ext4 of a few MiB, filled up between two saves.
TEST(Checkpoint, ADiskThatFillsUpMidSaveIsAClearErrorAndTheLastCheckpointSurvives) {
  const fs::path base = testing::fresh_temp_dir("ckpt-full");
  const fs::path image = base / "disk.img", mnt = base / "mnt";
  fs::create_directories(mnt);
  {
    std::ofstream(image).close();
    fs::resize_file(image, 8 << 20);
  }
  const std::string mkfs = fmt::format("mkfs.ext4 -q -F {} >/dev/null 2>&1", image.string());
  const std::string mount = fmt::format("mount -o loop {} {} 2>&1", image.string(), mnt.string());
  if (std::system(mkfs.c_str()) != 0 || std::system(mount.c_str()) != 0) {
    fs::remove_all(base);
    GTEST_SKIP() << "cannot make and loop-mount an ext4 image here (needs root and a loop device)";
  }
  const fs::path dir = mnt / "checkpoints";
  auto rs = run_ranks(2, {worker(), "nospace", dir.string(), "3:host:2048"});
  expect_all_fail(rs, "no space left on");
  expect_all_fail(rs, "while saving step 3; the checkpoint of step 2 is intact");
  EXPECT_FALSE(fs::exists(dir / "step-3.tmp"));
  EXPECT_FALSE(fs::exists(dir / "step-3"));
  expect_all_ok(run_ranks(1, {worker(), "check", dir.string(), "2"}));
  ::umount(mnt.c_str());
  fs::remove_all(base);
}

// The data file itself at a real size: a 64 MiB record and a 1-byte one, read back in
// ranges that straddle blocks; one flipped byte is found by the reader and the verifier.
TEST(ShardFile, SixtyFourMiBRecordsReadBackInRangesAndCorruptionIsFound) {
  const fs::path dir = testing::fresh_temp_dir("shard-file");
  const std::string path = (dir / "f.bin").string();
  std::vector<std::byte> big(64ull << 20), small(1);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::byte>((i * 2654435761u) >> 13);
  small[0] = std::byte{7};
  auto w = ckpt::ShardFileWriter::create(path);
  ASSERT_TRUE(w) << w.error();
  auto r1 = w->append(small), r2 = w->append(big);
  ASSERT_TRUE(r1 && r2);
  auto sum = w->finish();
  ASSERT_TRUE(sum) << sum.error();
  EXPECT_EQ(sum->bytes, big.size() + 1);
  EXPECT_EQ(r2->blocks.size(), 64u);
  auto rd = ckpt::ShardFileReader::open(path, sum->bytes);
  ASSERT_TRUE(rd) << rd.error();
  std::vector<ckpt::RecordSpan> recs = {*r1, *r2};
  EXPECT_TRUE(rd->verify(*sum, recs));
  for (std::uint64_t off : {0ull, (1ull << 20) - 3, 33ull << 20, (64ull << 20) - 5}) {
    std::vector<std::byte> out(std::min<std::uint64_t>(5 << 20, big.size() - off));
    ASSERT_TRUE(rd->read(*r2, off, out)) << off;
    EXPECT_EQ(0, std::memcmp(out.data(), big.data() + off, out.size())) << off;
  }
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(r2->offset + (40ull << 20) + 17));
    f.put('\x5a' ^ static_cast<char>(big[(40ull << 20) + 17]));
  }
  std::vector<std::byte> out(4096);
  auto bad = rd->read(*r2, (40ull << 20), out);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(bad.error().to_string().find("f.bin"), std::string::npos);
  EXPECT_TRUE(rd->read(*r2, 0, out));  // other blocks still read
  EXPECT_FALSE(rd->verify(*sum, recs));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace strata
