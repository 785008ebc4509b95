#include "ptrain/data/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "ptrain/core/error.h"
#include "test_util.h"

namespace ptrain::data {
namespace {

// token[i] = i, so a sequence's first token is its start position.
class IotaStream final : public TokenStream {
 public:
  explicit IotaStream(int64_t n) : n_(n) {}
  int64_t size() const override { return n_; }
  int vocab() const override { return static_cast<int>(n_); }
  void read(int64_t begin, int64_t count, int32_t* out) const override {
    ASSERT_LE(begin + count, n_);
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<int32_t>(begin + i);
  }
  std::string describe() const override { return "iota stream"; }

 private:
  int64_t n_;
};

struct Batch {
  std::vector<int32_t> tokens, targets;
};

Batch fill(const TokenSampler& s, int T, int64_t step, int rank, int dp, int micro, int nm) {
  int64_t rows = s.rows(dp, nm);
  Batch b{std::vector<int32_t>(rows * T), std::vector<int32_t>(rows * T)};
  s.fill(step, rank, dp, micro, nm, b.tokens.data(), b.targets.data());
  return b;
}

// First token of each sequence in a batch.
std::vector<int32_t> starts(const Batch& b, int T) {
  std::vector<int32_t> v;
  for (size_t i = 0; i < b.tokens.size(); i += T) v.push_back(b.tokens[i]);
  return v;
}

TEST(Sampler, SequenceJOfStepSStartsAtSGPlusJTimesT) {
  IotaStream stream(1000);
  const int T = 4;
  TokenSampler s(stream, T, {.batch_size = 3});
  Batch b = fill(s, T, 2, 0, 1, 0, 1);
  EXPECT_EQ(starts(b, T), (std::vector<int32_t>{24, 28, 32}));
  EXPECT_EQ(std::vector<int32_t>(b.tokens.begin(), b.tokens.begin() + 4),
            (std::vector<int32_t>{24, 25, 26, 27}));
  EXPECT_EQ(std::vector<int32_t>(b.targets.begin(), b.targets.begin() + 4),
            (std::vector<int32_t>{25, 26, 27, 28}));
}

TEST(Sampler, WrapsToTheStartAfterTheLastWholeSequence) {
  IotaStream stream(21);  // S = (21 - 1) / 4 = 5 sequences: starts 0,4,8,12,16 (last target 20)
  const int T = 4;
  TokenSampler s(stream, T, {.batch_size = 2});
  EXPECT_EQ(s.sequences_per_epoch(), 5);
  EXPECT_EQ(starts(fill(s, T, 2, 0, 1, 0, 1), T), (std::vector<int32_t>{16, 0}));
  EXPECT_EQ(fill(s, T, 2, 0, 1, 0, 1).targets[3], 20);
}

TEST(Sampler, EveryMeshSeesTheSameGlobalBatch) {
  IotaStream stream(5000);
  const int T = 8;
  for (bool shuffle : {false, true}) {
    TokenSampler s(stream, T, {.batch_size = 8, .shuffle = shuffle, .seed = 3});
    for (int64_t step : {0, 7, 300}) {
      Batch whole = fill(s, T, step, 0, 1, 0, 1);
      for (auto [dp, nm] : {std::pair{2, 1}, {4, 2}, {1, 4}, {8, 1}}) {
        std::vector<int32_t> joined;
        for (int d = 0; d < dp; ++d) {
          for (int m = 0; m < nm; ++m) {
            Batch part = fill(s, T, step, d, dp, m, nm);
            joined.insert(joined.end(), part.tokens.begin(), part.tokens.end());
          }
        }
        EXPECT_EQ(joined, whole.tokens) << "dp " << dp << " micro " << nm << " step " << step;
      }
    }
  }
}

TEST(Sampler, AShrunkMeshReadsTheSameMicrobatchesPerOptimizerStep) {
  // An elastic job that loses half its data ranks doubles grad_accum: rank d, accumulation step
  // a of the shrunk mesh (dp/2, 2g) must read exactly what rank 2d + a / g, step a % g of the
  // full mesh (dp, g) read, so every optimizer step sums the same per-microbatch gradients.
  IotaStream stream(20000);
  const int T = 4;
  for (bool shuffle : {false, true}) {
    TokenSampler s(stream, T, {.batch_size = 24, .shuffle = shuffle, .seed = 5});
    for (auto [dp, g] : {std::pair{2, 1}, {4, 1}, {4, 3}, {6, 2}}) {
      const int half = dp / 2, g2 = 2 * g;
      for (int64_t step : {0, 3, 250}) {
        for (int d = 0; d < half; ++d) {
          for (int a = 0; a < g2; ++a) {
            Batch shrunk = fill(s, T, step, d, half, a, g2);
            Batch full = fill(s, T, step, 2 * d + a / g, dp, a % g, g);
            EXPECT_EQ(shrunk.tokens, full.tokens) << "dp " << dp << " grad_accum " << g << " step "
                                                  << step << " rank " << d << " micro " << a;
            EXPECT_EQ(shrunk.targets, full.targets);
          }
        }
      }
    }
  }
}

TEST(Sampler, RankDTakesItsContiguousShare) {
  IotaStream stream(1000);
  const int T = 2;
  TokenSampler s(stream, T, {.batch_size = 4});
  EXPECT_EQ(starts(fill(s, T, 1, 1, 2, 0, 1), T), (std::vector<int32_t>{12, 14}));
  EXPECT_EQ(starts(fill(s, T, 1, 1, 2, 1, 2), T), (std::vector<int32_t>{14}));
}

TEST(Sampler, ShuffleVisitsEverySequenceOncePerEpochInADifferentOrder) {
  IotaStream stream(10 * 7 + 1);  // 10 sequences of T = 7
  const int T = 7;
  TokenSampler s(stream, T, {.batch_size = 5, .shuffle = true, .seed = 11});
  std::vector<int32_t> epoch0, epoch1;
  for (int step = 0; step < 2; ++step) {
    auto v = starts(fill(s, T, step, 0, 1, 0, 1), T);
    epoch0.insert(epoch0.end(), v.begin(), v.end());
  }
  for (int step = 2; step < 4; ++step) {
    auto v = starts(fill(s, T, step, 0, 1, 0, 1), T);
    epoch1.insert(epoch1.end(), v.begin(), v.end());
  }
  std::vector<int32_t> all;
  for (int k = 0; k < 10; ++k) all.push_back(k * T);
  auto sorted = [](std::vector<int32_t> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  EXPECT_EQ(sorted(epoch0), all);
  EXPECT_EQ(sorted(epoch1), all);
  EXPECT_NE(epoch0, epoch1);
  EXPECT_NE(epoch0, all);
}

TEST(Sampler, ShuffleIsDeterministicFromTheSeed) {
  IotaStream stream(4001);
  const int T = 4;
  TokenSampler a(stream, T, {.batch_size = 16, .shuffle = true, .seed = 5});
  TokenSampler b(stream, T, {.batch_size = 16, .shuffle = true, .seed = 5});
  TokenSampler c(stream, T, {.batch_size = 16, .shuffle = true, .seed = 6});
  EXPECT_EQ(fill(a, T, 3, 0, 1, 0, 1).tokens, fill(b, T, 3, 0, 1, 0, 1).tokens);
  EXPECT_NE(fill(a, T, 3, 0, 1, 0, 1).tokens, fill(c, T, 3, 0, 1, 0, 1).tokens);
}

TEST(Sampler, EvalFractionHoldsOutTheEndOfTheStream) {
  IotaStream stream(1000);
  const int T = 10;
  SamplerOptions o{.batch_size = 2, .eval_fraction = 0.1};
  TokenSampler train(stream, T, o, Split::kTrain);
  TokenSampler eval(stream, T, o, Split::kEval);
  EXPECT_EQ(train.split_size(), 900);
  EXPECT_EQ(eval.split_begin(), 900);
  EXPECT_EQ(train.sequences_per_epoch(), 89);  // (900 - 1) / 10
  EXPECT_EQ(starts(fill(eval, T, 0, 0, 1, 0, 1), T), (std::vector<int32_t>{900, 910}));
  // Training never reads a held-out token, even at the wrap.
  for (int64_t step = 0; step < 100; ++step) {
    Batch b = fill(train, T, step, 0, 1, 0, 1);
    EXPECT_LT(*std::max_element(b.targets.begin(), b.targets.end()), 900);
  }
}

TEST(Sampler, StreamShorterThanOneSequenceIsAConfigError) {
  IotaStream stream(8);
  EXPECT_THROW_MSG(TokenSampler(stream, 8, {.batch_size = 1}), ConfigError,
                   "iota stream: the training split has 8 tokens, shorter than one sequence");
  IotaStream big(100);
  EXPECT_THROW_MSG(TokenSampler(big, 8, {.batch_size = 1, .eval_fraction = 0.05}, Split::kEval),
                   ConfigError, "the eval split has 5 tokens");
}

TEST(Sampler, BatchThatDoesNotSplitEvenlyIsAConfigError) {
  IotaStream stream(1000);
  TokenSampler s(stream, 4, {.batch_size = 6});
  EXPECT_THROW_MSG(s.rows(4, 1), ConfigError, "batch_size 6 cannot be split evenly");
  EXPECT_THROW_MSG(s.rows(2, 2), ConfigError, "over 2 data-parallel rank(s) x 2");
  EXPECT_EQ(s.rows(3, 2), 1);
}

TEST(IndexPermutation, IsABijectionForAnySize) {
  for (int64_t n : {1, 2, 3, 5, 16, 17, 1000, 4099}) {
    IndexPermutation p(n, 42);
    std::vector<bool> hit(static_cast<size_t>(n), false);
    for (int64_t i = 0; i < n; ++i) {
      int64_t j = p(i);
      ASSERT_GE(j, 0);
      ASSERT_LT(j, n);
      ASSERT_FALSE(hit[static_cast<size_t>(j)]) << "n " << n << " i " << i;
      hit[static_cast<size_t>(j)] = true;
    }
  }
}

TEST(CsvSampler, FillsFeaturesAndLabelsInOrder) {
  testing::TempDir dir;
  std::string text;
  for (int r = 0; r < 10; ++r)
    text += std::to_string(r) + "," + std::to_string(r * 10) + "," + std::to_string(r % 3) + "\n";
  testing::write_bytes(dir.file("d.csv"), text);
  CsvData data = CsvData::load(dir.file("d.csv"));
  CsvSampler s(data, {.batch_size = 4, .eval_fraction = 0.2});
  EXPECT_EQ(s.rows_per_epoch(), 8);
  std::vector<float> f(4);
  std::vector<int32_t> l(2);
  s.fill(1, 1, 2, 0, 1, f.data(), l.data());  // step 1, rank 1: rows 6, 7
  EXPECT_EQ(f, (std::vector<float>{6, 60, 7, 70}));
  EXPECT_EQ(l, (std::vector<int32_t>{0, 1}));
  s.fill(2, 0, 2, 0, 1, f.data(), l.data());  // step 2 wraps: rows 0, 1
  EXPECT_EQ(f, (std::vector<float>{0, 0, 1, 10}));
  CsvSampler eval(data, {.batch_size = 2, .eval_fraction = 0.2}, Split::kEval);
  eval.fill(0, 0, 1, 0, 1, f.data(), l.data());
  EXPECT_EQ(f, (std::vector<float>{8, 80, 9, 90}));
}

}  // namespace
}  // namespace ptrain::data
