#include "strata/nn/data/byte_corpus.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/multirank.h"

namespace strata::nn {
namespace {

namespace fs = std::filesystem;

TEST(ByteCorpus, ReadsTheFortunesCorpusAndSkipsBinaryIndexes) {
  auto c = ByteCorpus::open(kFortunesDir);
  ASSERT_TRUE(c) << c.error();
  std::uint64_t text_bytes = 0;
  for (const auto& e : fs::directory_iterator(kFortunesDir)) {
    if (e.is_regular_file() && !e.is_symlink() && e.path().extension() != ".dat") text_bytes += e.file_size();
  }
  EXPECT_EQ(c->total_bytes(), text_bytes);
  // About 1/20 of the blocks are validation.
  const double val = static_cast<double>(c->split_bytes(Split::kValidation)) / c->total_bytes();
  EXPECT_GT(val, 0.03);
  EXPECT_LT(val, 0.08);
}

TEST(ByteCorpus, SamplesAreDeterministicShiftedAndFromTheFile) {
  const auto dir = testing::fresh_temp_dir("corpus");
  std::string text;
  for (int i = 0; i < 3000; ++i) text += "line " + std::to_string(i) + " of a small corpus\n";
  std::ofstream(dir / "a.txt") << text;
  auto c = ByteCorpus::open(dir.string());
  ASSERT_TRUE(c) << c.error();
  auto b1 = c->sample(Split::kTrain, 4, 32, {1, 2, 3});
  auto b2 = c->sample(Split::kTrain, 4, 32, {1, 2, 3});
  auto b3 = c->sample(Split::kTrain, 4, 32, {1, 2, 4});
  ASSERT_TRUE(b1 && b2 && b3);
  EXPECT_TRUE(at::equal(b1->tokens, b2->tokens));
  EXPECT_FALSE(at::equal(b1->tokens, b3->tokens));
  EXPECT_TRUE(at::equal(b1->tokens.slice(1, 1, 32), b1->targets.slice(1, 0, 31)));
  // Every window is a real substring of the file.
  for (int b = 0; b < 4; ++b) {
    std::string w;
    for (int i = 0; i < 32; ++i) w += static_cast<char>(b1->tokens[b][i].item<std::int64_t>());
    EXPECT_NE(text.find(w), std::string::npos) << w;
  }
  auto v = c->sample(Split::kValidation, 2, 32, {1, 0, 0});
  ASSERT_TRUE(v) << v.error();
  fs::remove_all(dir);
}

TEST(ByteCorpus, ClearErrorsForMissingEmptyAndBinaryData) {
  auto missing = ByteCorpus::open("/nonexistent/corpus");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().to_string().find("data path does not exist [path=/nonexistent/corpus]"), std::string::npos);

  const auto dir = testing::fresh_temp_dir("corpus-empty");
  auto empty = ByteCorpus::open(dir.string());
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message().find("no non-empty text files"), std::string::npos);

  std::ofstream(dir / "blob.bin") << std::string("\0\1\2\3", 4);
  auto binary = ByteCorpus::open(dir.string());
  ASSERT_FALSE(binary);

  std::ofstream(dir / "short.txt") << "tiny";
  auto tiny = ByteCorpus::open(dir.string());
  ASSERT_TRUE(tiny);
  auto too_long = tiny->sample(Split::kTrain, 1, 64, {});
  ASSERT_FALSE(too_long);
  EXPECT_NE(too_long.error().message().find("no stretch of 65 bytes"), std::string::npos);
  fs::remove_all(dir);
}

// Issue 18: a 24 KB file drew no validation block ("the validation split (0 B) has no
// stretch of 129 bytes"); any file of 1 KB or more now has both splits, long enough for
// strata train's default 128-byte sequences, and they do not overlap.
TEST(ByteCorpus, SmallFilesStillHaveBothSplits) {
  const auto dir = testing::fresh_temp_dir("corpus-small");
  // 20494 bytes: five full blocks and a 14-byte one, which drew validation alone.
  for (std::size_t bytes : {1024u, 20494u, 24u * 1024, 64u * 1024}) {
    const fs::path file = dir / fmt::format("data{}.txt", bytes);
    std::string text;
    for (std::size_t i = 0; text.size() < bytes; ++i) text += fmt::format("line {} of a small corpus\n", i);
    text.resize(bytes);
    std::ofstream(file) << text;
    auto c = ByteCorpus::open(file.string());
    ASSERT_TRUE(c) << c.error();
    EXPECT_EQ(c->split_bytes(Split::kTrain) + c->split_bytes(Split::kValidation), bytes);
    for (Split s : {Split::kTrain, Split::kValidation}) {
      auto b = c->sample(s, 4, 128, {1, 2, 3});
      ASSERT_TRUE(b) << bytes << " bytes: " << b.error();
    }
  }
  fs::remove_all(dir);
}

// A FIFO used to block the open with no output.
TEST(ByteCorpus, APipeIsRefusedNotWaitedOn) {
  const auto dir = testing::fresh_temp_dir("corpus-fifo");
  const fs::path fifo = dir / "pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto c = ByteCorpus::open(fifo.string());
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("not a regular file or a folder"), std::string::npos) << c.error();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace strata::nn
