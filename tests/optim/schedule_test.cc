#include "ptrain/optim/schedule.h"

#include <gtest/gtest.h>

#include "ptrain/core/error.h"

namespace ptrain::optim {
namespace {

LrSchedule make(Decay decay) {
  return LrSchedule({.lr = 1.0, .warmup = 10, .decay = decay, .min_lr = 0.1, .total_steps = 110});
}

TEST(LrSchedule, WarmupRisesLinearlyToThePeakAtStepWarmupMinusOne) {
  auto s = make(Decay::kCosine);
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);
  EXPECT_DOUBLE_EQ(s.at(4), 0.5);
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);
}

TEST(LrSchedule, CosineDecaysFromPeakToMinLr) {
  auto s = make(Decay::kCosine);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);                   // r = 0
  EXPECT_NEAR(s.at(35), 0.8681980515339464, 1e-12);  // r = 1/4: 0.1 + 0.45 * (1 + cos(pi/4))
  EXPECT_NEAR(s.at(60), 0.55, 1e-12);                // r = 1/2
  EXPECT_DOUBLE_EQ(s.at(110), 0.1);                  // r = 1
  EXPECT_DOUBLE_EQ(s.at(1000), 0.1);                 // past the end: min_lr
}

TEST(LrSchedule, LinearDecaysFromPeakToMinLr) {
  auto s = make(Decay::kLinear);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_NEAR(s.at(35), 0.775, 1e-12);
  EXPECT_NEAR(s.at(60), 0.55, 1e-12);
  EXPECT_DOUBLE_EQ(s.at(110), 0.1);
}

TEST(LrSchedule, ConstantWithoutWarmupOrDecay) {
  LrSchedule s({.lr = 0.3});
  EXPECT_DOUBLE_EQ(s.at(0), 0.3);
  EXPECT_DOUBLE_EQ(s.at(123456), 0.3);
  LrSchedule w({.lr = 0.3, .warmup = 3});
  EXPECT_DOUBLE_EQ(w.at(0), 0.1);
  EXPECT_DOUBLE_EQ(w.at(3), 0.3);
}

TEST(LrSchedule, DecayWithNoStepsAfterWarmupSitsAtMinLr) {
  LrSchedule s({.lr = 1.0, .warmup = 5, .decay = Decay::kCosine, .min_lr = 0.2, .total_steps = 5});
  EXPECT_DOUBLE_EQ(s.at(4), 1.0);
  EXPECT_DOUBLE_EQ(s.at(5), 0.2);
}

TEST(LrSchedule, InvalidOptionsAreConfigErrors) {
  EXPECT_THROW(LrSchedule({.lr = -1}), ConfigError);
  EXPECT_THROW(LrSchedule({.lr = 1, .warmup = -1}), ConfigError);
  EXPECT_THROW(LrSchedule({.lr = 1, .min_lr = 2}), ConfigError);
  EXPECT_THROW(LrSchedule({.lr = 1, .decay = Decay::kCosine}), ConfigError);
  EXPECT_EQ(parse_decay("cosine"), Decay::kCosine);
  EXPECT_THROW(parse_decay("exp"), ConfigError);
}

}  // namespace
}  // namespace ptrain::optim
