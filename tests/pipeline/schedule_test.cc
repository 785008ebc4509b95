// Pipeline schedules checked as data: the op lists of GPipe and 1F1B per stage, their warm-up and
// the activations they stash.
#include <gtest/gtest.h>

#include <algorithm>

#include "ptrain/core/error.h"
#include "ptrain/parallel/pipeline.h"

namespace ptrain::parallel {
namespace {

std::vector<PipeOp> compute_ops(const std::vector<PipeOp>& ops) {
  std::vector<PipeOp> out;
  for (const auto& op : ops)
    if (op.kind == PipeOpKind::kForward || op.kind == PipeOpKind::kBackward) out.push_back(op);
  return out;
}

std::string words(const std::vector<PipeOp>& ops) {
  std::string s;
  for (const auto& op : ops) {
    if (!s.empty()) s += ' ';
    s += to_string(op);
  }
  return s;
}

// Every microbatch: forward once, backward once, after it; receives right before the forward
// (backward) they feed and sends right after the op they come from; none at the pipeline ends.
void expect_well_formed(const std::vector<PipeOp>& ops, int p, int s, int m) {
  std::vector<int> fwd(size_t(m), -1), bwd(size_t(m), -1);
  for (size_t i = 0; i < ops.size(); ++i) {
    const auto& op = ops[i];
    ASSERT_GE(op.micro, 0);
    ASSERT_LT(op.micro, m);
    auto at = [&](size_t j) { return j < ops.size() ? ops[j] : PipeOp{PipeOpKind::kForward, -1}; };
    switch (op.kind) {
      case PipeOpKind::kForward:
        EXPECT_EQ(fwd[size_t(op.micro)], -1);
        fwd[size_t(op.micro)] = int(i);
        break;
      case PipeOpKind::kBackward:
        EXPECT_EQ(bwd[size_t(op.micro)], -1);
        bwd[size_t(op.micro)] = int(i);
        break;
      case PipeOpKind::kRecvActivation:
        EXPECT_GT(s, 0);
        EXPECT_EQ(at(i + 1), (PipeOp{PipeOpKind::kForward, op.micro}));
        break;
      case PipeOpKind::kSendActivation:
        EXPECT_LT(s, p - 1);
        EXPECT_EQ(ops[i - 1], (PipeOp{PipeOpKind::kForward, op.micro}));
        break;
      case PipeOpKind::kRecvGrad:
        EXPECT_LT(s, p - 1);
        EXPECT_EQ(at(i + 1), (PipeOp{PipeOpKind::kBackward, op.micro}));
        break;
      case PipeOpKind::kSendGrad:
        EXPECT_GT(s, 0);
        EXPECT_EQ(ops[i - 1], (PipeOp{PipeOpKind::kBackward, op.micro}));
        break;
    }
  }
  for (int i = 0; i < m; ++i) {
    EXPECT_GE(fwd[size_t(i)], 0) << "microbatch " << i << " has no forward";
    EXPECT_GT(bwd[size_t(i)], fwd[size_t(i)]) << "microbatch " << i;
  }
  const size_t per_micro = 2 + (s > 0 ? 2 : 0) + (s < p - 1 ? 2 : 0);
  EXPECT_EQ(ops.size(), per_micro * size_t(m));
}

TEST(PipelineSchedule, EveryStageOfEveryShapeIsWellFormed) {
  for (auto kind : {ScheduleKind::kGpipe, ScheduleKind::kOneFOneB})
    for (int p : {1, 2, 4})
      for (int m : {1, 2, 4, 8})
        for (int s = 0; s < p; ++s) {
          SCOPED_TRACE(::testing::Message()
                       << to_string(kind) << " p=" << p << " s=" << s << " m=" << m);
          expect_well_formed(make_stage_schedule(kind, p, s, m), p, s, m);
        }
}

TEST(PipelineSchedule, GpipeRunsAllForwardsThenAllBackwardsAndStashesM) {
  for (int p : {2, 4})
    for (int m : {4, 8})
      for (int s = 0; s < p; ++s) {
        auto ops = make_stage_schedule(ScheduleKind::kGpipe, p, s, m);
        auto c = compute_ops(ops);
        for (int i = 0; i < m; ++i) {
          EXPECT_EQ(c[size_t(i)], (PipeOp{PipeOpKind::kForward, i}));
          EXPECT_EQ(c[size_t(m + i)], (PipeOp{PipeOpKind::kBackward, i}));
        }
        EXPECT_EQ(peak_stash(ops), m);
      }
}

TEST(PipelineSchedule, OneFOneBWarmsUpWithPMinusStageMinusOneForwards) {
  for (int p : {2, 4})
    for (int m : {4, 8})
      for (int s = 0; s < p; ++s) {
        auto ops = make_stage_schedule(ScheduleKind::kOneFOneB, p, s, m);
        EXPECT_EQ(warmup_forwards(ops), p - s - 1) << "p=" << p << " s=" << s << " m=" << m;
        // After the warm-up, forwards and backwards alternate until the forwards run out.
        auto c = compute_ops(ops);
        const int w = p - s - 1;
        for (int i = 0; i < m - w; ++i) {
          EXPECT_EQ(c[size_t(w + 2 * i)], (PipeOp{PipeOpKind::kForward, w + i}));
          EXPECT_EQ(c[size_t(w + 2 * i + 1)], (PipeOp{PipeOpKind::kBackward, i}));
        }
      }
}

TEST(PipelineSchedule, OneFOneBStashesAtMostPMinusStage) {
  for (int p : {2, 4})
    for (int m : {4, 8})
      for (int s = 0; s < p; ++s) {
        auto ops = make_stage_schedule(ScheduleKind::kOneFOneB, p, s, m);
        EXPECT_LE(peak_stash(ops), p - s);
        EXPECT_EQ(peak_stash(ops), std::min(p - s, m));
      }
}

TEST(PipelineSchedule, ExactListsForTwoStagesAndFourMicrobatches) {
  EXPECT_EQ(words(make_stage_schedule(ScheduleKind::kOneFOneB, 2, 0, 4)),
            "F0 >a0 F1 >a1 <g0 B0 F2 >a2 <g1 B1 F3 >a3 <g2 B2 <g3 B3");
  EXPECT_EQ(words(make_stage_schedule(ScheduleKind::kOneFOneB, 2, 1, 4)),
            "<a0 F0 B0 >g0 <a1 F1 B1 >g1 <a2 F2 B2 >g2 <a3 F3 B3 >g3");
  EXPECT_EQ(words(make_stage_schedule(ScheduleKind::kGpipe, 2, 1, 2)),
            "<a0 F0 <a1 F1 B0 >g0 B1 >g1");
}

TEST(PipelineSchedule, FewerMicrobatchesThanStagesStillCompletes) {
  auto ops = make_stage_schedule(ScheduleKind::kOneFOneB, 4, 0, 2);
  EXPECT_EQ(peak_stash(ops), 2);
  expect_well_formed(ops, 4, 0, 2);
}

TEST(PipelineSchedule, NamesParseAndBadOnesAreConfigErrors) {
  EXPECT_EQ(parse_schedule_kind("gpipe"), ScheduleKind::kGpipe);
  EXPECT_EQ(parse_schedule_kind("1f1b"), ScheduleKind::kOneFOneB);
  EXPECT_THROW(parse_schedule_kind("interleaved"), ConfigError);
  EXPECT_THROW(make_stage_schedule(ScheduleKind::kGpipe, 2, 2, 4), ConfigError);
  EXPECT_THROW(make_stage_schedule(ScheduleKind::kGpipe, 2, 0, 0), ConfigError);
}

TEST(PipelineSchedule, TheoreticalBubbleIsPMinusOneOverMPlusPMinusOne) {
  EXPECT_DOUBLE_EQ(theoretical_bubble(4, 8), 3.0 / 11.0);
  EXPECT_DOUBLE_EQ(theoretical_bubble(1, 8), 0.0);
}

TEST(PipelineSchedule, ReplayWithEqualTimesGivesTheTheoreticalBubble) {
  for (auto kind : {ScheduleKind::kGpipe, ScheduleKind::kOneFOneB})
    for (int p : {2, 4})
      for (int m : {4, 8, 16}) {
        auto b = replay_bubble(kind, m, std::vector<double>(size_t(p), 1.0),
                               std::vector<double>(size_t(p), 2.0));
        for (int s = 0; s < p; ++s)
          EXPECT_NEAR(b[size_t(s)], theoretical_bubble(p, m), 1e-12)
              << to_string(kind) << " p=" << p << " m=" << m << " s=" << s;
      }
}

TEST(PipelineSchedule, ReplayChargesASlowStageToTheOthers) {
  // Stage 1 twice as slow: it is never idle after its first input; stage 0 waits on it.
  auto b = replay_bubble(ScheduleKind::kOneFOneB, 8, {1, 2}, {1, 2});
  EXPECT_LT(b[1], b[0]);
  EXPECT_GT(b[0], theoretical_bubble(2, 8));
}

TEST(PipelineSchedule, FormattedScheduleHasOneLinePerStage) {
  std::string text = format_schedule(ScheduleKind::kOneFOneB, 4, 8);
  for (int s = 0; s < 4; ++s)
    EXPECT_NE(text.find("stage " + std::to_string(s) + " (warm-up " + std::to_string(3 - s) +
                        ", peak stash " + std::to_string(4 - s) + ")"),
              std::string::npos)
        << text;
  EXPECT_NE(text.find("ideal bubble 27.3%"), std::string::npos) << text;
}

}  // namespace
}  // namespace ptrain::parallel
