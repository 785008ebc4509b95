// The pipeline from the command line: `ptrain validate --schedule` prints every stage's list,
// `ptrain run --trace` trains a 2-stage job and writes RUN_DIR/trace.json with both ranks' spans.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace ptrain {
namespace {

namespace fs = std::filesystem;

struct Result {
  int status = -1;
  std::string out;  // stdout and stderr
};

Result run_ptrain(const std::string& args, int timeout_s) {
  std::string cmd = "timeout " + std::to_string(timeout_s) + " " + std::string(PTRAIN_BINARY) +
                    " " + args + " 2>&1";
  Result r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string config(const std::string& name) {
  return std::string(PTRAIN_SOURCE_DIR) + "/configs/" + name;
}

TEST(PipelineCli, ValidateScheduleListsEveryStage) {
  auto r = run_ptrain("validate " + config("gpt-pipeline.yaml") +
                          " --schedule --set parallel.schedule=gpipe --set parallel.microbatches=2",
                      20);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("pipeline schedule gpipe: 2 stages, 2 microbatches"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("stage 0 (warm-up 1, peak stash 2): F0 >a0 F1 >a1 <g0 B0 <g1 B1"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("stage 1 (warm-up 1, peak stash 2): <a0 F0 <a1 F1 B0 >g0 B1 >g1"),
            std::string::npos)
      << r.out;
}

TEST(PipelineCli, RunTraceWritesEveryRanksSpans) {
  fs::path dir = fs::temp_directory_path() / ("ptrain-pp-cli-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  auto r = run_ptrain(
      "run " + config("gpt-pipeline.yaml") +
          " --trace --set train.steps=3 --set model.dim=32 --set logging.dir=" + dir.string(),
      120);
  ASSERT_EQ(r.status, 0) << r.out;
  fs::path run;
  for (const auto& e : fs::directory_iterator(dir)) run = e.path();
  ASSERT_TRUE(fs::exists(run / "trace.json")) << r.out;
  EXPECT_FALSE(fs::exists(run / "trace-rank-1.json"));
  std::ifstream f(run / "trace.json");
  std::stringstream s;
  s << f.rdbuf();
  std::string text = s.str();
  // Every rank ran forward and backward of the last microbatch.
  for (int rank : {0, 1})
    for (std::string op : {"F3", "B3"}) {
      bool found = false;
      std::istringstream lines(text);
      for (std::string line; std::getline(lines, line);)
        found |= line.find("\"name\": \"" + op + "\"") != std::string::npos &&
                 line.find("\"pid\": " + std::to_string(rank) + ",") != std::string::npos;
      EXPECT_TRUE(found) << op << " of rank " << rank;
    }
  // Stage 0 sends activations and receives gradients; stage 1 the reverse.
  for (std::string span : {"send act 0", "recv grad 0", "recv act 0", "send grad 0", "B3"})
    EXPECT_NE(text.find("\"name\": \"" + span + "\""), std::string::npos) << span;
  // Rank 0's metrics carry the pipeline figures.
  std::ifstream m(run / "metrics.jsonl");
  std::stringstream ms;
  ms << m.rdbuf();
  EXPECT_NE(ms.str().find("\"peak_stash\": 2"), std::string::npos) << ms.str();
  EXPECT_NE(ms.str().find("\"bubble\": "), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ptrain
