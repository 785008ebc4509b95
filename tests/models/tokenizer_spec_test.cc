// data.tokenizer through the spec loader and the families' checks: the gpt2 tokenizer needs a
// model vocabulary of 50257 or more (an error with the position of model.vocab), applies only to
// text and token data, and the bert family refuses it.
#include <gtest/gtest.h>

#include "ptrain/core/error.h"
#include "ptrain/models/registry.h"
#include "ptrain/spec/spec.h"

namespace ptrain::models {
namespace {

std::string load_error(const std::string& yaml) {
  try {
    spec::load_string(yaml, "job.yaml");
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.exit_code(), 2);
    return e.message();
  }
  ADD_FAILURE() << "loaded without an error:\n" << yaml;
  return {};
}

TEST(TokenizerSpec, Gpt2NeedsTheGpt2Vocabulary) {
  std::string msg = load_error(
      "model: {type: gpt, vocab: 256}\n"
      "data: {type: text, path: x.txt, tokenizer: gpt2}\n");
  EXPECT_EQ(msg.rfind("job.yaml:1:", 0), 0u) << msg;
  EXPECT_NE(msg.find("model.vocab: the gpt2 tokenizer has 50257 ids, but vocab is 256"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("50304"), std::string::npos) << msg;  // the hint
}

TEST(TokenizerSpec, Gpt2WithAGpt2VocabularyLoadsAndRoundTrips) {
  auto s = spec::load_string(
      "model: {type: gpt, vocab: 50304}\n"
      "data: {type: text, path: x.txt, tokenizer: gpt2}\n",
      "job.yaml");
  EXPECT_EQ(s.data.tokenizer, "gpt2");
  EXPECT_EQ(spec::load_string(spec::to_yaml(s), "back.yaml"), s);
  auto t = spec::load_string(
      "model: {type: gpt, vocab: 50304}\n"
      "data: {type: tokens, path: x.bin, tokenizer: gpt2}\n",
      "job.yaml");
  EXPECT_EQ(t.data.tokenizer, "gpt2");
}

TEST(TokenizerSpec, AppliesOnlyToTextAndTokenData) {
  std::string msg = load_error("model: {type: gpt}\ndata: {type: synthetic, tokenizer: gpt2}\n");
  EXPECT_NE(msg.find("data.tokenizer: a tokenizer applies to text or token data, not synthetic"),
            std::string::npos)
      << msg;
  EXPECT_NE(load_error("data: {type: text, path: x.txt, tokenizer: sentencepiece}\n")
                .find("expected one of bytes|gpt2"),
            std::string::npos);
}

TEST(TokenizerSpec, BertReadsTextAsBytesOnly) {
  std::string msg = load_error(
      "model: {type: bert, vocab: 50304}\n"
      "data: {type: text, path: x.txt, tokenizer: gpt2}\n");
  EXPECT_NE(msg.find("data.tokenizer: the bert family reads text as bytes"), std::string::npos)
      << msg;
}

}  // namespace
}  // namespace ptrain::models
