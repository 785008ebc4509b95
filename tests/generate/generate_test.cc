// `ptrain generate`: a tiny byte-level GPT trained for a few steps here, then sampled with the
// binary: the output has the prompt plus exactly N bytes, the same seed gives the same text, and
// a bad checkpoint path is a clear error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "support/rank_threads.h"

namespace ptrain::train {
namespace {

namespace fs = std::filesystem;

struct CommandResult {
  int status = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

CommandResult run_ptrain(const std::string& args, const fs::path& dir) {
  std::string cmd = "timeout 60 " + std::string(PTRAIN_BINARY) + " generate " + args + " >" +
                    (dir / "out").string() + " 2>" + (dir / "err").string();
  CommandResult r;
  r.status = std::system(cmd.c_str());
  r.out = slurp(dir / "out");
  r.err = slurp(dir / "err");
  return r;
}

class Generate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("ptrain-generate-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream(dir_ / "text.txt") << [] {
      std::string s;
      for (int i = 0; i < 400; ++i) s += "the quick brown fox jumps over the lazy dog. ";
      return s;
    }();
    auto spec = testing::tiny_gpt_spec(6);
    spec.model.set("vocab", 256);
    spec.data.type = "text";
    spec.data.path = (dir_ / "text.txt").string();
    spec.checkpoint.dir = (dir_ / "ckpt").string();
    spec.checkpoint.every = 0;
    testing::run_ranks(spec);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static fs::path dir_;
};
fs::path Generate::dir_;

TEST_F(Generate, PrintsThePromptAndExactlyNBytes) {
  auto r = run_ptrain(
      (dir_ / "ckpt" / "step-6.safetensors").string() + " --prompt 'the ' --tokens 40 --seed 3",
      dir_);
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(r.out.size(), 4u + 40u + 1u) << r.out;
  EXPECT_EQ(r.out.substr(0, 4), "the ");
  EXPECT_EQ(r.out.back(), '\n');
}

TEST_F(Generate, SameSeedSameTextOtherSeedOtherText) {
  std::string base = (dir_ / "ckpt").string() + " --prompt 'fox' --tokens 48 --top-k 20";
  auto a = run_ptrain(base + " --seed 5", dir_);
  auto b = run_ptrain(base + " --seed 5", dir_);
  auto c = run_ptrain(base + " --seed 6", dir_);
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
}

TEST_F(Generate, MissingCheckpointIsAClearError) {
  auto r = run_ptrain((dir_ / "nope" / "step-1.safetensors").string() + " --tokens 4", dir_);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
}

TEST_F(Generate, NonCheckpointFileIsRejected) {
  auto r = run_ptrain((dir_ / "text.txt").string() + " --tokens 4", dir_);
  EXPECT_NE(r.status, 0);
  EXPECT_FALSE(r.err.empty());
}

// A GPT-2-vocabulary model trained on text through the gpt2 tokenizer: the checkpoint names its
// tokenizer and generate decodes with it (a prompt of whole words comes back first, and the
// sampled ids, which never reach the 47 padding ids of vocab 50304, decode to text).
class GenerateGpt2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("ptrain-generate-gpt2-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream(dir_ / "text.txt") << [] {
      std::string s;
      for (int i = 0; i < 200; ++i) s += "The quick brown fox jumps over the lazy dog. Ünïcödé 😀\n";
      return s;
    }();
    auto spec = testing::tiny_gpt_spec(3);
    spec.model.set("layers", 1).set("heads", 2).set("dim", 16).set("vocab", 50304);
    spec.data.type = "text";
    spec.data.tokenizer = "gpt2";
    spec.data.path = (dir_ / "text.txt").string();
    spec.checkpoint.dir = (dir_ / "ckpt").string();
    spec.checkpoint.every = 0;
    testing::run_ranks(spec);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static fs::path dir_;
};
fs::path GenerateGpt2::dir_;

TEST_F(GenerateGpt2, TheCheckpointNamesItsTokenizer) {
  std::string head = slurp(dir_ / "ckpt" / "step-3.safetensors").substr(0, 4096);
  EXPECT_NE(head.find("\"tokenizer\":\"gpt2\""), std::string::npos) << head;
}

TEST_F(GenerateGpt2, DecodesWithTheCheckpointsTokenizer) {
  auto r = run_ptrain((dir_ / "ckpt").string() + " --prompt 'The quick brown' --tokens 12", dir_);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, 15), "The quick brown");
  // 12 GPT-2 tokens are at least 12 bytes (every token is one byte or more).
  EXPECT_GE(r.out.size(), 15u + 12u + 1u) << r.out;
}

TEST_F(GenerateGpt2, ATokenizerTooLargeForTheModelIsRefused) {
  auto r = run_ptrain((dir_ / "ckpt").string() + " --tokens 2 --tokenizer bytes", dir_);
  ASSERT_EQ(r.status, 0) << r.err;  // 256 ids fit a 50304-id model
  auto small =
      run_ptrain((dir_ / "ckpt").string() + " --tokens 2 --tokenizer gpt2 --vocab 100", dir_);
  EXPECT_NE(small.status, 0);
  EXPECT_NE(small.err.find("fewer than the gpt2 tokenizer's 50257"), std::string::npos)
      << small.err;
}

}  // namespace
}  // namespace ptrain::train
