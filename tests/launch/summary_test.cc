// summary.json's writer: nlohmann values on one spaced line, as users and the end-to-end tests
// read them.
#include "ptrain/launch/summary.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <climits>
#include <cmath>

#include "ptrain/launch/restart.h"

namespace ptrain::launch {
namespace {

TEST(DumpLine, WritesOneSpacedLineInInsertionOrder) {
  Json v = {{"status", "failed"},
            {"exit_codes", {0, 137}},
            {"nested", {{"a", 1}, {"b", Json::array()}}},
            {"empty", Json::object()},
            {"text", "two\nlines, \"quoted\""}};
  EXPECT_EQ(dump_line(v),
            R"({"status": "failed", "exit_codes": [0, 137], "nested": {"a": 1, "b": []}, )"
            R"("empty": {}, "text": "two\nlines, \"quoted\""})");
}

TEST(DumpLine, WritesNonFiniteNumbersAsNullAndReplacesBadUtf8) {
  Json v = {{"x", std::nan("")}, {"s", "a\xff"}};
  EXPECT_EQ(dump_line(v), "{\"x\": null, \"s\": \"a\xef\xbf\xbd\"}");
}

TEST(Summary, ExitCodesAreNullForRanksThatDidNotExit) {
  EXPECT_EQ(dump_line(exit_codes_json({0, INT_MIN, 9})), "[0, null, 9]");
}

TEST(Summary, ProgressMembersKeepTheirTypes) {
  ProgressState p;
  p.loss = 2.5;
  p.last_report = R"({"step":3,"loss":2.5})";
  Json s = Json::object();
  add_progress(s, 3, 10, p, 1.25);
  EXPECT_EQ(dump_line(s),
            R"({"steps": 3, "total_steps": 10, "final_loss": 2.5, "wall_time_s": 1.25, )"
            R"("tokens_per_s": null, "last_report": {"step": 3, "loss": 2.5}})");
}

}  // namespace
}  // namespace ptrain::launch

namespace ptrain::launch {
namespace {

FailureRecord failure(int rank, int code, std::string reason, int64_t step) {
  FailureRecord f;
  f.rank = rank;
  f.exit_code = code;
  f.reason = std::move(reason);
  f.last_step = step;
  f.block = fmt::format("ptrain: rank {} {}", rank, f.reason);
  return f;
}

TEST(RestartPolicy, BadInputIsNeverRestarted) {
  RestartLog log(1000);
  auto why = log.refuse_restart(failure(0, 2, "exited with status 2", 0));
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("bad input"), std::string::npos) << *why;
  EXPECT_FALSE(log.refuse_restart(failure(0, 1, "exited with status 1", 0)).has_value());
}

TEST(RestartPolicy, TheSameFailureWithoutProgressStopsTheRestarts) {
  RestartLog log(10);
  log.add_failure(failure(1, 137, "was killed by SIGKILL", 6));
  log.begin_next_round();
  EXPECT_TRUE(log.refuse_restart(failure(1, 137, "was killed by SIGKILL", 6)).has_value());
  // Progress, another rank or another reason: a restart is worth it.
  EXPECT_FALSE(log.refuse_restart(failure(1, 137, "was killed by SIGKILL", 9)).has_value());
  EXPECT_FALSE(log.refuse_restart(failure(0, 137, "was killed by SIGKILL", 6)).has_value());
  EXPECT_FALSE(log.refuse_restart(failure(1, 1, "exited with status 1", 6)).has_value());
}

TEST(RestartPolicy, BackoffDoublesUpToThirtySeconds) {
  RestartLog log(100);
  std::vector<double> waits;
  for (int i = 0; i < 8; ++i) {
    waits.push_back(log.backoff_s());
    log.add_failure(failure(0, 1, "exited with status 1", i));
    log.begin_next_round();
  }
  EXPECT_EQ(waits, (std::vector<double>{0, 1, 2, 4, 8, 16, 30, 30}));
}

TEST(RestartPolicy, RepeatedRootCausesCollapseIntoOneBlockWithACount) {
  RestartLog log(10);
  for (int i = 0; i < 3; ++i) {
    log.add_failure(failure(1, 137, "was killed by SIGKILL", i));
    log.begin_next_round();
  }
  log.add_failure(failure(0, 1, "exited with status 1", 3));
  log.begin_next_round();
  std::string block = log.history_block();
  EXPECT_NE(block.find("--- rounds 0-2: the same failure 3 times ---"), std::string::npos) << block;
  EXPECT_NE(block.find("--- round 3 ---\nptrain: rank 0 exited with status 1"), std::string::npos)
      << block;
  EXPECT_NE(block.find("--- round 4 ---"), std::string::npos) << block;
  size_t n = 0;
  for (size_t at = block.find("rank 1 was killed"); at != std::string::npos;
       at = block.find("rank 1 was killed", at + 1))
    ++n;
  EXPECT_EQ(n, 1u) << block;
}

}  // namespace
}  // namespace ptrain::launch
