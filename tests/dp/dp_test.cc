// Data parallelism: the loss curve of 2 and 4 data-parallel ranks (plain, and ZeRO-1) equals
// one process on the same global batch.
#include <gtest/gtest.h>

#include <cmath>

#include "support/rank_threads.h"

namespace ptrain {
namespace {

void expect_same_curve(const train::TrainResult& a, const train::TrainResult& b, double rel) {
  ASSERT_EQ(a.history.size(), b.history.size());
  for (size_t i = 0; i < a.history.size(); ++i) {
    double x = a.history[i].loss, y = b.history[i].loss;
    EXPECT_LE(std::abs(x - y), rel * std::abs(x)) << "step " << i + 1 << ": " << x << " vs " << y;
  }
}

TEST(DataParallel, TwoAndFourRanksMatchOneProcess) {
  auto spec = testing::tiny_gpt_spec(20);
  auto single = testing::run_ranks(spec);
  EXPECT_LT(single[0].result.history.back().loss, single[0].result.history.front().loss);
  for (int dp : {2, 4}) {
    spec.parallel.data = dp;
    auto runs = testing::run_ranks(spec);
    expect_same_curve(single[0].result, runs[0].result, 1e-5);
    // Every rank logs the same global loss.
    expect_same_curve(runs[0].result, runs[dp - 1].result, 0);
  }
}

TEST(DataParallel, ZeroOneMatchesPlainDataParallel) {
  auto spec = testing::tiny_gpt_spec(20);
  spec.parallel.data = 2;
  auto plain = testing::run_ranks(spec);
  spec.parallel.zero = 1;
  auto zero = testing::run_ranks(spec);
  expect_same_curve(plain[0].result, zero[0].result, 1e-5);
}

TEST(DataParallel, GradAccumulationMatchesOneBigBatch) {
  auto spec = testing::tiny_gpt_spec(10);
  auto single = testing::run_ranks(spec);
  spec.parallel.data = 2;
  spec.train.grad_accum = 2;
  auto accum = testing::run_ranks(spec);
  expect_same_curve(single[0].result, accum[0].result, 1e-5);
}

TEST(DataParallel, SmallBucketsGiveTheSameCurve) {
  auto spec = testing::tiny_gpt_spec(5);
  spec.parallel.data = 2;
  auto big = testing::run_ranks(spec);
  spec.parallel.bucket_mb = 0.001;  // one bucket per parameter
  auto small = testing::run_ranks(spec);
  expect_same_curve(big[0].result, small[0].result, 1e-6);
}

TEST(DataParallel, ShmAndGlooGiveTheCurveOfOneProcess) {
  auto spec = testing::tiny_gpt_spec(20);
  spec.data.batch_size = 12;
  auto single = testing::run_ranks(spec);
  spec.parallel.data = 3;  // odd: the slices of every allreduce differ in size
  spec.parallel.comm = "shm";
  auto shm = testing::run_ranks(spec);
  spec.parallel.comm = "gloo";
  auto gloo = testing::run_ranks(spec);
  expect_same_curve(single[0].result, shm[0].result, 1e-5);
  expect_same_curve(single[0].result, gloo[0].result, 1e-5);
  expect_same_curve(shm[0].result, shm[2].result, 0);
}

}  // namespace
}  // namespace ptrain
