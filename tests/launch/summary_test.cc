// summary.json's writer: nlohmann values on one spaced line, as users and the end-to-end tests
// read them.
#include "ptrain/launch/summary.h"

#include <gtest/gtest.h>

#include <climits>
#include <cmath>

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
