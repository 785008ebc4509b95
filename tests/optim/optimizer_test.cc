#include "ptrain/optim/optimizer.h"

#include <gtest/gtest.h>

#include <vector>

#include "ptrain/core/error.h"

namespace ptrain::optim {
namespace {

const tensor::Ops& cpu() {
  return tensor::cpu_ops();
}

// A [1,2] matrix (decays) followed by a [1] vector (does not).
ParamLayout small_layout() {
  ParamLayout l;
  l.add("w", {1, 2});
  l.add("b", {1});
  return l;
}

const float kGrads[3][3] = {{0.5f, -1.0f, 2.0f}, {0.1f, 0.2f, -0.3f}, {-0.4f, 0.0f, 1.0f}};

TEST(ParamLayout, DecaysTensorsWithTwoOrMoreDimensions) {
  ParamLayout l;
  l.add("wte.weight", {4, 3});
  l.add("ln_f.bias", {3});
  l.add("h.0.attn.c_attn.weight", {3, 9});
  ASSERT_EQ(l.ranges().size(), 3u);
  EXPECT_TRUE(l.ranges()[0].decay);
  EXPECT_FALSE(l.ranges()[1].decay);
  EXPECT_EQ(l.ranges()[1].offset, 12u);
  EXPECT_EQ(l.ranges()[2].offset, 15u);
  EXPECT_EQ(l.total(), 42u);
}

TEST(ParamLayout, RejectsOverlapsAndDuplicates) {
  ParamLayout l;
  l.add("a", 0, 10, true);
  EXPECT_THROW(l.add("b", 5, 10, false), ConfigError);
  EXPECT_THROW(l.add("a", 20, 1, false), ConfigError);
  EXPECT_NO_THROW(l.add("c", 12, 4, false));  // a gap is fine
  EXPECT_EQ(l.total(), 16u);
}

// Reference values: PyTorch's AdamW algorithm in double precision, lr 0.1, betas (0.9, 0.999),
// eps 1e-8, weight_decay 0.1, params [1, -2, 0.5]. Step 1 by hand: decayed p = 1 * (1 - 0.01),
// and with bias correction the update is lr * sign(g): 0.99 - 0.1 = 0.89; the vector entry does
// not decay: 0.5 - 0.1 = 0.4.
TEST(AdamW, MatchesHandComputedStepsWithDecayAndBiasCorrection) {
  std::vector<float> p = {1.0f, -2.0f, 0.5f};
  AdamW opt(cpu(), small_layout(), Shard::whole(small_layout()),
            {.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f});
  const double expected[3][3] = {{0.890000002, -1.880000001, 0.400000001},
                                 {0.800795906, -1.810097394, 0.344780195},
                                 {0.783418007, -1.752493957, 0.278187230}};
  for (int t = 0; t < 3; ++t) {
    opt.step(p.data(), kGrads[t], 0.1f);
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[i], expected[t][i], 2e-6) << "step " << t + 1;
  }
  EXPECT_EQ(opt.steps(), 3);
  auto st = opt.state();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].name, "exp_avg");
  EXPECT_EQ(st[1].name, "exp_avg_sq");
  ASSERT_EQ(st[0].size, 3u);
  EXPECT_NEAR(st[0].data[0], 0.0095, 1e-7);
  EXPECT_NEAR(st[0].data[2], 0.235, 1e-7);
  EXPECT_NEAR(st[1].data[1], 0.001037961, 1e-7);  // float32: 1 - 0.999 is inexact
}

// PyTorch SGD, lr 0.1, momentum 0.9, weight_decay 0.01 on the matrix only. Step 1 by hand:
// g = 0.5 + 0.01 * 1 = 0.51, buf = g, p = 1 - 0.1 * 0.51 = 0.949; nesterov uses
// g + 0.9 * buf = 0.969, p = 0.9031.
TEST(Sgd, MomentumMatchesHandComputedSteps) {
  std::vector<float> p = {1.0f, -2.0f, 0.5f};
  Sgd opt(cpu(), small_layout(), Shard::whole(small_layout()),
          {.momentum = 0.9f, .nesterov = false, .weight_decay = 0.01f});
  const double expected[3][3] = {
      {0.949, -1.898, 0.3}, {0.892151, -1.824302, 0.15}, {0.880094749, -1.756149498, -0.085}};
  for (int t = 0; t < 3; ++t) {
    opt.step(p.data(), kGrads[t], 0.1f);
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[i], expected[t][i], 2e-6) << "step " << t + 1;
  }
  auto st = opt.state();
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].name, "momentum_buffer");
  EXPECT_NEAR(st[0].data[0], 0.12056251, 1e-6);
  EXPECT_NEAR(st[0].data[2], 2.35, 1e-6);
}

TEST(Sgd, NesterovMatchesHandComputedSteps) {
  std::vector<float> p = {1.0f, -2.0f, 0.5f};
  Sgd opt(cpu(), small_layout(), Shard::whole(small_layout()),
          {.momentum = 0.9f, .nesterov = true, .weight_decay = 0.01f});
  const double expected[3][3] = {{0.9031, -1.8062, 0.12},
                                 {0.84107411, -1.75814822, 0.015},
                                 {0.869465558, -1.695186716, -0.2965}};
  for (int t = 0; t < 3; ++t) {
    opt.step(p.data(), kGrads[t], 0.1f);
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[i], expected[t][i], 2e-6) << "step " << t + 1;
  }
}

TEST(Sgd, PlainSgdHasNoStateAndStepsByLrTimesGrad) {
  std::vector<float> p = {1.0f, -2.0f, 0.5f};
  Sgd opt(cpu(), small_layout(), Shard::whole(small_layout()));
  opt.step(p.data(), kGrads[0], 0.1f);
  EXPECT_TRUE(opt.state().empty());
  EXPECT_FLOAT_EQ(p[0], 0.95f);
  EXPECT_FLOAT_EQ(p[1], -1.9f);
  EXPECT_FLOAT_EQ(p[2], 0.3f);
}

TEST(Sgd, NesterovWithoutMomentumIsAConfigError) {
  EXPECT_THROW(Sgd(cpu(), small_layout(), Shard::whole(small_layout()), {.nesterov = true}),
               ConfigError);
}

TEST(AdamW, BadBetasAreAConfigError) {
  EXPECT_THROW(AdamW(cpu(), small_layout(), Shard::whole(small_layout()), {.beta1 = 1.0f}),
               ConfigError);
  EXPECT_THROW(AdamW(cpu(), small_layout(), Shard{0, 4}), ConfigError);  // past the layout
}

// ZeRO-1: updating the shards of every rank separately gives exactly the whole-buffer update,
// including shards that cut a tensor in the middle; state is sized to the shard.
TEST(Optimizer, ShardedUpdatesEqualTheWholeBufferUpdate) {
  ParamLayout layout;
  layout.add("wte.weight", {5, 3});
  layout.add("ln.bias", {4});
  layout.add("fc.weight", {2, 3});
  const size_t n = layout.total();
  std::vector<float> p0(n), g(n);
  for (size_t i = 0; i < n; ++i) {
    p0[i] = 0.1f * static_cast<float>(i) - 1.0f;
    g[i] = 0.05f * static_cast<float>((i * 7) % 11) - 0.2f;
  }
  for (bool adam : {true, false}) {
    auto make = [&](Shard s) -> std::unique_ptr<Optimizer> {
      if (adam)
        return std::make_unique<AdamW>(cpu(), layout, s, AdamWOptions{.weight_decay = 0.1f});
      return std::make_unique<Sgd>(cpu(), layout, s,
                                   SgdOptions{.momentum = 0.9f, .weight_decay = 0.1f});
    };
    std::vector<float> whole = p0;
    auto ref = make(Shard::whole(layout));
    const int world = 3;
    std::vector<float> sharded = p0;
    std::vector<std::unique_ptr<Optimizer>> ranks;
    for (int r = 0; r < world; ++r) ranks.push_back(make(Shard::of_rank(n, r, world)));
    for (int t = 0; t < 3; ++t) {
      ref->step(whole.data(), g.data(), 0.01f);
      for (auto& o : ranks) o->step(sharded.data(), g.data(), 0.01f);
    }
    EXPECT_EQ(sharded, whole) << (adam ? "adamw" : "sgd");
    EXPECT_EQ(ranks[0]->shard().size(), 9u);
    EXPECT_EQ(ranks[2]->shard().size(), n - 18);
    EXPECT_EQ(ranks[1]->state()[0].size, 9u);
    // The shard's state equals the matching slice of the whole-buffer state.
    for (size_t i = 0; i < 9; ++i)
      EXPECT_EQ(ranks[1]->state()[0].data[i], ref->state()[0].data[9 + i]);
  }
}

TEST(Shard, OfRankCoversTheBufferWithoutOverlap) {
  EXPECT_EQ(Shard::of_rank(10, 0, 4).begin, 0u);
  EXPECT_EQ(Shard::of_rank(10, 0, 4).end, 3u);
  EXPECT_EQ(Shard::of_rank(10, 3, 4).begin, 9u);
  EXPECT_EQ(Shard::of_rank(10, 3, 4).end, 10u);
  EXPECT_EQ(Shard::of_rank(2, 3, 4).size(), 0u);  // more ranks than elements
}

}  // namespace
}  // namespace ptrain::optim
