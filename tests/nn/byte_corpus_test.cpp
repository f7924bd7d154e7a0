#include "strata/nn/data/byte_corpus.h"

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
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

}  // namespace
}  // namespace strata::nn
