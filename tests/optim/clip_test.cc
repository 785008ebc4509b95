#include "ptrain/optim/clip.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace ptrain::optim {
namespace {

const tensor::Ops& cpu() {
  return tensor::cpu_ops();
}

TEST(Clip, ScalesByMaxNormOverNormPlusEpsilonWhenAbove) {
  std::vector<float> g = {3.0f, 4.0f};
  double norm = clip_grad_norm(cpu(), g.data(), 2, 1.0);
  EXPECT_DOUBLE_EQ(norm, 5.0);
  const double coef = 1.0 / (5.0 + 1e-6);
  EXPECT_FLOAT_EQ(g[0], static_cast<float>(3.0 * coef));
  EXPECT_FLOAT_EQ(g[1], static_cast<float>(4.0 * coef));
}

TEST(Clip, LeavesGradientsAloneWhenBelow) {
  std::vector<float> g = {3.0f, 4.0f};
  EXPECT_DOUBLE_EQ(clip_grad_norm(cpu(), g.data(), 2, 10.0), 5.0);
  EXPECT_EQ(g, (std::vector<float>{3.0f, 4.0f}));
  // Exactly at the norm: coef = 5 / (5 + 1e-6) < 1, so torch scales (by a hair).
  EXPECT_LT(clip_coefficient(5.0, 5.0), 1.0);
  EXPECT_EQ(clip_coefficient(5.0, 5.1), 1.0);
}

TEST(Clip, NonFiniteNormLeavesGradientsAlone) {
  EXPECT_EQ(clip_coefficient(std::numeric_limits<double>::infinity(), 1.0), 1.0);
  EXPECT_EQ(clip_coefficient(std::nan(""), 1.0), 1.0);
}

// Two ranks' local sums of squares add up to the global one; each rank clips its shard with
// the global norm and the result equals clipping the whole buffer.
TEST(Clip, ShardSumsAddUpToTheGlobalNorm) {
  std::vector<float> g = {1, 2, 3, 4, 5};
  double a = grad_sum_squares(cpu(), g.data(), Shard{0, 3});
  double b = grad_sum_squares(cpu(), g.data(), Shard{3, 5});
  EXPECT_DOUBLE_EQ(a, 14.0);
  EXPECT_DOUBLE_EQ(b, 41.0);
  double norm = std::sqrt(a + b);
  std::vector<float> whole = g;
  clip_grad_norm(cpu(), whole.data(), 5, 2.0);
  clip_grads(cpu(), g.data(), Shard{0, 3}, norm, 2.0);
  clip_grads(cpu(), g.data(), Shard{3, 5}, norm, 2.0);
  EXPECT_EQ(g, whole);
}

}  // namespace
}  // namespace ptrain::optim
