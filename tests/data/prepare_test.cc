// `ptrain data prepare`: text -> llm.c token files through the library (prepare.h) and the
// binary (progress bar, exit codes).
#include "ptrain/data/prepare.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>

#include "data/test_util.h"
#include "ptrain/core/error.h"
#include "ptrain/data/token_stream.h"
#include "ptrain/data/tokenizer.h"

namespace ptrain::data {
namespace {

using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;

std::vector<int32_t> read_all(const std::string& path, int vocab) {
  auto s = open_token_file(path, vocab);
  std::vector<int32_t> out(static_cast<size_t>(s->size()));
  s->read(0, s->size(), out.data());
  return out;
}

std::string sample_text() {
  std::string s;
  for (int i = 0; i < 300; ++i)
    s += fmt::format("Line {}: it's a test\twith  spaces,\r\nünïcödé 😀 and\n\nmore text.\n", i);
  return s;
}

TEST(Prepare, BytesWritesTheFilesBytes) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), "hi\n");
  write_bytes(dir.file("b.txt"), "\xff!");
  PrepareOptions o;
  o.inputs = {dir.file("a.txt"), dir.file("b.txt")};
  o.output = dir.file("out.bin");
  o.tokenizer = "bytes";
  auto r = prepare_tokens(o);
  EXPECT_EQ(r.train_tokens, 5);
  EXPECT_EQ(read_all(o.output, 256), (std::vector<int32_t>{'h', 'i', '\n', 255, '!'}));
  EXPECT_TRUE(r.eval_path.empty());
}

TEST(Prepare, Gpt2ChunksTokenizeLikeTheWholeText) {
  TempDir dir;
  const std::string text = sample_text();
  write_bytes(dir.file("a.txt"), text);
  auto tok = make_tokenizer("gpt2");
  std::vector<int32_t> expected = {50256};  // <|endoftext|> before each document
  tok->encode(text, expected);
  for (size_t chunk : {size_t{7}, size_t{100}, size_t{1} << 20}) {
    PrepareOptions o;
    o.inputs = {dir.file("a.txt")};
    o.output = dir.file("out.bin");
    o.chunk_bytes = chunk;
    uint64_t last_done = 0, calls = 0;
    o.progress = [&](uint64_t done, uint64_t total) {
      EXPECT_EQ(total, text.size());
      EXPECT_GE(done, last_done);
      last_done = done;
      ++calls;
    };
    prepare_tokens(o);
    EXPECT_EQ(read_all(o.output, 50257), expected) << "chunk " << chunk;
    EXPECT_EQ(last_done, text.size());
    if (chunk == 7) {
      EXPECT_GT(calls, 100u);
    }
  }
}

TEST(Prepare, EvalFractionHoldsOutTheLastTokens) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), std::string(1000, 'x'));
  PrepareOptions o;
  o.inputs = {dir.file("a.txt")};
  o.output = dir.file("tiny.bin");
  o.tokenizer = "bytes";
  o.eval_fraction = 0.1;
  auto r = prepare_tokens(o);
  EXPECT_EQ(r.eval_path, dir.file("tiny_val.bin"));
  EXPECT_EQ(r.train_tokens, 900);
  EXPECT_EQ(r.eval_tokens, 100);
  EXPECT_EQ(read_all(dir.file("tiny.bin"), 256).size(), 900u);
  EXPECT_EQ(read_all(dir.file("tiny_val.bin"), 256).size(), 100u);
  EXPECT_EQ(eval_path_for("data/x.bin"), "data/x_val.bin");
  EXPECT_EQ(eval_path_for("x"), "x_val.bin");
}

TEST(Prepare, BadInputIsNamed) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), "abc");
  PrepareOptions o;
  o.tokenizer = "bytes";
  o.output = dir.file("out.bin");
  o.inputs = {dir.file("missing.txt")};
  EXPECT_THROW_MSG(prepare_tokens(o), ConfigError, dir.file("missing.txt"));
  o.inputs = {dir.file("a.txt")};
  o.output = dir.file("a.txt");
  EXPECT_THROW_MSG(prepare_tokens(o), ConfigError, "is the input");
  EXPECT_EQ(read_bytes(dir.file("a.txt")), "abc");
  o.output = dir.file("nowhere/out.bin");
  EXPECT_THROW_MSG(prepare_tokens(o), ConfigError, "does not exist");
  o.output = dir.file("out.bin");
  o.eval_fraction = 1;
  EXPECT_THROW_MSG(prepare_tokens(o), ConfigError, "outside [0, 1)");
  o.eval_fraction = 0.1;  // 3 tokens: 0 held out
  EXPECT_THROW_MSG(prepare_tokens(o), ConfigError, "empty split");
  o.eval_fraction = 0;
  o.tokenizer = "wordpiece";
  EXPECT_THROW_MSG(prepare_tokens(o), ConfigError, "unknown tokenizer");
}

TEST(TextData, Gpt2TokenizesAtLoad) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), "Hello, world!");
  auto s = open_text_file(dir.file("a.txt"), "gpt2");
  EXPECT_EQ(s->vocab(), 50257);
  std::vector<int32_t> ids(static_cast<size_t>(s->size()));
  s->read(0, s->size(), ids.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{15496, 11, 995, 0}));
  EXPECT_EQ(open_text_file(dir.file("a.txt"), "bytes")->size(), 13);
}

// The binary: one clear line and exit 2 for bad input; a progress bar when asked.
struct Run {
  int status;
  std::string out, err;
};
Run ptrain(const TempDir& dir, const std::string& args) {
  std::string cmd = "timeout 60 " + std::string(PTRAIN_BINARY) + " data prepare " + args + " >" +
                    dir.file("stdout") + " 2>" + dir.file("stderr");
  int st = std::system(cmd.c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, read_bytes(dir.file("stdout")),
          read_bytes(dir.file("stderr"))};
}

TEST(PrepareCommand, WritesTokensWithAProgressBar) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), sample_text());
  auto r = ptrain(dir, dir.file("a.txt") + " -o " + dir.file("a.bin") +
                           " --tokenizer gpt2 --eval-fraction 0.05 --progress always");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("eval tokens to " + dir.file("a_val.bin")), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("100%"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("B/s"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ETA"), std::string::npos) << r.err;
  EXPECT_GT(read_all(dir.file("a.bin"), 50257).size(), 1000u);
}

TEST(PrepareCommand, AMissingInputIsOneLineAndExit2) {
  TempDir dir;
  auto r = ptrain(dir, dir.file("nope.txt") + " -o " + dir.file("a.bin"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find(dir.file("nope.txt")), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

}  // namespace
}  // namespace ptrain::data
