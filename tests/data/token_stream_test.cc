#include "ptrain/data/token_stream.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "ptrain/core/error.h"
#include "test_util.h"

namespace ptrain::data {
namespace {

using testing::TempDir;

std::string header_bytes(int32_t magic, int32_t version, int32_t count) {
  std::vector<int32_t> h(kTokenFileHeaderInts, 0);
  h[0] = magic;
  h[1] = version;
  h[2] = count;
  return std::string(reinterpret_cast<const char*>(h.data()), h.size() * 4);
}

std::string tokens_bytes(const std::vector<uint16_t>& t) {
  return std::string(reinterpret_cast<const char*>(t.data()), t.size() * 2);
}

TEST(TokenFile, RoundTripsTheLlmcFormat) {
  TempDir dir;
  std::vector<int32_t> tokens = {0, 5, 65535, 17, 3};
  write_token_file(dir.file("a.bin"), tokens.data(), 5);
  std::string raw = testing::read_bytes(dir.file("a.bin"));
  ASSERT_EQ(raw.size(), 1024u + 10u);
  EXPECT_EQ(raw.substr(0, 12), header_bytes(20240520, 1, 5).substr(0, 12));
  auto s = open_token_file(dir.file("a.bin"), 65536);
  ASSERT_EQ(s->size(), 5);
  std::vector<int32_t> out(3);
  s->read(2, 3, out.data());
  EXPECT_EQ(out, (std::vector<int32_t>{65535, 17, 3}));
}

TEST(TokenFile, RejectsWrongMagicNamingTheFile) {
  TempDir dir;
  testing::write_bytes(dir.file("x.bin"), header_bytes(1234, 1, 1) + tokens_bytes({1}));
  EXPECT_THROW_MSG(open_token_file(dir.file("x.bin"), 256), ConfigError, "x.bin' has magic 1234");
}

TEST(TokenFile, RejectsWrongVersion) {
  TempDir dir;
  testing::write_bytes(dir.file("x.bin"), header_bytes(20240520, 2, 1) + tokens_bytes({1}));
  EXPECT_THROW_MSG(open_token_file(dir.file("x.bin"), 256), ConfigError, "has version 2");
}

TEST(TokenFile, RejectsSizeThatDisagreesWithTheHeader) {
  TempDir dir;
  testing::write_bytes(dir.file("short.bin"), header_bytes(20240520, 1, 4) + tokens_bytes({1, 2}));
  EXPECT_THROW_MSG(open_token_file(dir.file("short.bin"), 256), ConfigError, "promises 4 tokens");
  testing::write_bytes(dir.file("tiny.bin"), "abc");
  EXPECT_THROW_MSG(open_token_file(dir.file("tiny.bin"), 256), ConfigError,
                   "shorter than the 1024-byte llm.c header");
}

TEST(TokenFile, RejectsIdAtOrAboveVocabNamingThePosition) {
  TempDir dir;
  testing::write_bytes(dir.file("v.bin"),
                       header_bytes(20240520, 1, 4) + tokens_bytes({1, 2, 256, 3}));
  EXPECT_THROW_MSG(open_token_file(dir.file("v.bin"), 256), ConfigError,
                   "v.bin': token 256 at position 2 is >= vocab 256");
}

TEST(TokenFile, MissingFileAndDirectoryAreConfigErrors) {
  TempDir dir;
  EXPECT_THROW_MSG(open_token_file(dir.file("none.bin"), 256), ConfigError,
                   "none.bin' does not exist");
  EXPECT_THROW_MSG(open_token_file(dir.path(), 256), ConfigError, "is a directory");
}

TEST(TextFile, BytesAreTokens) {
  TempDir dir;
  testing::write_bytes(dir.file("t.txt"), std::string("hi\xff", 3));
  auto s = open_text_file(dir.file("t.txt"));
  EXPECT_EQ(s->vocab(), 256);
  ASSERT_EQ(s->size(), 3);
  std::vector<int32_t> out(3);
  s->read(0, 3, out.data());
  EXPECT_EQ(out, (std::vector<int32_t>{'h', 'i', 255}));
}

std::vector<int32_t> all_tokens(const TokenStream& s) {
  std::vector<int32_t> v(static_cast<size_t>(s.size()));
  s.read(0, s.size(), v.data());
  return v;
}

TEST(Synthetic, IsDeterministicFromTheSeed) {
  SyntheticOptions o{.vocab = 64, .seed = 7, .num_tokens = 5000};
  EXPECT_EQ(all_tokens(*make_synthetic(o)), all_tokens(*make_synthetic(o)));
  SyntheticOptions other = o;
  other.seed = 8;
  EXPECT_NE(all_tokens(*make_synthetic(o)), all_tokens(*make_synthetic(other)));
}

TEST(Synthetic, EachTokenHasAtMostFourSuccessorsAndLowEntropy) {
  SyntheticOptions o{.vocab = 256, .seed = 1, .num_tokens = 200000};
  auto s = make_synthetic(o);
  auto t = all_tokens(*s);
  std::map<int32_t, std::map<int32_t, int64_t>> bigram;
  std::set<int32_t> seen;
  for (size_t i = 0; i + 1 < t.size(); ++i) {
    ASSERT_GE(t[i], 0);
    ASSERT_LT(t[i], 256);
    bigram[t[i]][t[i + 1]]++;
    seen.insert(t[i]);
  }
  double entropy = 0;  // conditional entropy H(next | current), nats
  for (const auto& [cur, next] : bigram) {
    EXPECT_LE(next.size(), 4u) << cur;
    int64_t total = 0;
    for (const auto& [n, c] : next) total += c;
    for (const auto& [n, c] : next) {
      double p = static_cast<double>(c) / total;
      entropy -= static_cast<double>(total) / (t.size() - 1) * p * std::log(p);
    }
  }
  EXPECT_LT(entropy, std::log(4.0) + 1e-9);
  EXPECT_LT(entropy, 0.3 * std::log(256.0));
  EXPECT_GT(seen.size(), 32u);  // the chain does not collapse onto a few tokens
}

}  // namespace
}  // namespace ptrain::data
