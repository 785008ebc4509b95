// report.html from a hand-made run folder: charts with data (restarts marked, resumed steps as
// separate segments, per-rank series), the root cause, the mesh, and one-line errors for a
// folder that is not a run or a run without metrics.
#include "ptrain/launch/report.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include "../../lib/launch/src/svg_chart.h"
#include "ptrain/core/error.h"
#include "support/ptrain_process.h"

namespace ptrain::launch {
namespace {

namespace fs = std::filesystem;
using ptrain::testing::count;
using ptrain::testing::read_file;
using ptrain::testing::TempDir;

void write(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

// A failed 2x2x2 run with one restart that resumed from step 4.
std::string make_run(const TempDir& dir) {
  std::string run = dir.path() + "/run-20261202-010203";
  fs::create_directories(run);
  write(run + "/job.yaml",
        "name: <demo & co>\nparallel: {data: 2, tensor: 2, pipeline: 2, microbatches: 4}\n"
        "model: {type: gpt}\ntrain: {steps: 8}\n");
  std::string m;
  for (int s : {1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8})
    m += fmt::format(
        R"({{"step": {}, "total_steps": 8, "loss": {}, "lr": 0.001, "tokens_per_s": [{}, {}], )"
        R"("step_ms": 12.5, "mem_mb": 100, "bubble": 0.27, "custom_figure": {}{}}})"
        "\n",
        s, 5.0 - 0.3 * s, 1000 + s, 990 + s, s * 2, s % 4 == 0 ? R"(, "eval_loss": 4.1)" : "");
  m += "not json\n";
  write(run + "/metrics.jsonl", m);
  write(run + "/summary.json",
        R"({"status": "failed", "exit_code": 137, "name": "demo", "world_size": 8, )"
        R"("exit_codes": [0, 137, 0, 0, 0, 0, 0, 0], "failed_rank": 1, )"
        R"("reason": "rank 1 was killed by SIGKILL", "steps": 8, "restarts": [{"round": 1, )"
        R"("rank": 3, "reason": "exit 1", "exit_code": 1, "last_step": 6}]})"
        "\n");
  return run;
}

TEST(Report, DrawsEveryMetricWithItsData) {
  TempDir dir;
  std::string html = render_report(make_run(dir));
  for (const char* id : {"chart-loss", "chart-throughput", "chart-step-time", "chart-memory",
                         "chart-lr", "chart-bubble", "chart-custom_figure"})
    EXPECT_NE(html.find(std::string("id=\"") + id + "\""), std::string::npos) << id;
  // loss: 11 points in two segments (the resume rewinds the step).
  std::smatch m;
  ASSERT_TRUE(std::regex_search(html, m,
                                std::regex("data-series=\"loss\" data-points=\"11\" "
                                           "d=\"(M[^\"]*)\"")));
  EXPECT_EQ(count(m[1].str(), "M"), 2u) << m[1];
  EXPECT_EQ(count(m[1].str(), "L"), 9u) << m[1];
  EXPECT_NE(html.find("data-series=\"eval_loss\" data-points=\"3\""), std::string::npos);
  EXPECT_NE(html.find("data-series=\"tokens_per_s rank 0\""), std::string::npos);
  EXPECT_NE(html.find("data-series=\"tokens_per_s rank 1\""), std::string::npos);
  EXPECT_GE(count(html, "<g class=\"marker\"><title>restart 1: rank 3 exit 1</title>"), 5u);
  EXPECT_NE(html.find("unreadable metric lines</td><td>1"), std::string::npos);
}

TEST(Report, ShowsTheRootCauseMeshAndSpec) {
  TempDir dir;
  std::string html = render_report(make_run(dir));
  EXPECT_NE(html.find("id=\"root-cause\""), std::string::npos);
  EXPECT_NE(html.find("rank 1 was killed by SIGKILL"), std::string::npos);
  EXPECT_NE(html.find("class=\"status-failed\""), std::string::npos);
  EXPECT_EQ(count(html, "<g class=\"rank\">"), 8u);
  EXPECT_NE(html.find("rank 5 (dp 0, tp 1, pp 1)"), std::string::npos);
  EXPECT_NE(html.find("(p−1)/(m+p−1) = 20.0%"), std::string::npos);
  EXPECT_NE(html.find("&lt;demo &amp; co&gt;"), std::string::npos);  // escaped
  EXPECT_EQ(html.find("<demo"), std::string::npos);
}

TEST(Report, IsSelfContained) {
  TempDir dir;
  std::string html = render_report(make_run(dir));
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find(" src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  EXPECT_NE(html.find("Content-Security-Policy"), std::string::npos);
}

TEST(Report, WriteReportPutsItInTheRunFolder) {
  TempDir dir;
  std::string run = make_run(dir);
  EXPECT_EQ(write_report(run), run + "/report.html");
  EXPECT_EQ(read_file(run + "/report.html"), render_report(run));
}

TEST(Report, AFolderThatIsNotARunIsAConfigError) {
  TempDir dir;
  EXPECT_THROW(render_report(dir.path() + "/missing"), ConfigError);
  try {
    render_report(dir.path());
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("is not a run folder"), std::string::npos) << e.what();
  }
}

TEST(Report, ARunWithoutMetricsIsAConfigError) {
  TempDir dir;
  write(dir.path() + "/job.yaml", "name: x\ncommand: [true]\n");
  try {
    render_report(dir.path());
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("has no metrics (no metrics.jsonl)"), std::string::npos)
        << e.what();
  }
  write(dir.path() + "/metrics.jsonl", "");
  EXPECT_THROW(render_report(dir.path()), ConfigError);
}

TEST(ReportCommand, BadInputIsOneLineAndExit2) {
  TempDir dir;
  for (const std::string& arg : {dir.path(), dir.path() + "/nope"}) {
    ptrain::testing::PtrainProcess p({"report", arg});
    EXPECT_EQ(p.finish(Millis(30000)), 2) << p.err;
    EXPECT_EQ(count(p.err, "\n"), 1u) << p.err;
  }
}

TEST(SvgChart, TicksAreRoundAndCoverTheRange) {
  EXPECT_EQ(detail::nice_ticks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  auto t = detail::nice_ticks(0.013, 0.071, 5);
  ASSERT_FALSE(t.empty());
  EXPECT_GE(t.front(), 0.013);
  EXPECT_LE(t.back(), 0.071 + 1e-12);
  detail::Chart c;
  c.id = "x";
  EXPECT_EQ(detail::render_chart(c), "");  // nothing to draw
  c.series.push_back({"s", {1}, {NAN}, {}});
  EXPECT_EQ(detail::render_chart(c), "");
}

}  // namespace
}  // namespace ptrain::launch
