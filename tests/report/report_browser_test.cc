// A real run's report.html (written at the end of `ptrain run`) loaded in headless Chromium:
// the DOM has the SVG charts with their data, the console has no error or blocked fetch, and
// the screenshot lands in this test's output folder (build/tests/report/output/report.png).
// Without a working chromium the test fails with the reason.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <filesystem>
#include <regex>
#include <sstream>

#include "support/ptrain_process.h"

namespace ptrain::launch {
namespace {

namespace fs = std::filesystem;
using ptrain::testing::read_file;
using ptrain::testing::TempDir;

struct Shell {
  int status;
  std::string out, err;
};

Shell sh(const std::string& cmd, const TempDir& dir) {
  std::string full = cmd + " >" + dir.path() + "/sh.out 2>" + dir.path() + "/sh.err";
  int st = std::system(full.c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, read_file(dir.path() + "/sh.out"),
          read_file(dir.path() + "/sh.err")};
}

std::string tail(const std::string& s, size_t n = 1500) {
  return s.size() > n ? s.substr(s.size() - n) : s;
}

// The chromium command line for a headless load of `page` with `what` (--dump-dom, ...).
std::string chromium(const TempDir& dir, const std::string& what, const std::string& page) {
  return "timeout 90 chromium --headless --no-sandbox --disable-gpu --no-first-run "
         "--disable-extensions --hide-scrollbars --user-data-dir=" +
         dir.path() + "/profile --enable-logging=stderr --v=0 " + what + " file://" + page;
}

TEST(ReportBrowser, ARunsReportRendersItsChartsInChromium) {
  TempDir dir;
  std::string spec = dir.path() + "/job.yaml";
  std::ofstream(spec) << "name: report\nlogging: {dir: " << dir.path() << "/runs}\n"
                      << "nodes: {procs_per_node: 2, device: cpu}\n"
                      << "parallel: {data: 2}\n"
                      << "model: {type: gpt, layers: 1, heads: 2, dim: 16, seq_len: 8, vocab: 32}\n"
                      << "data: {type: synthetic, batch_size: 4, eval_fraction: 0.1}\n"
                      << "train: {steps: 12, eval_every: 4}\n";
  ptrain::testing::PtrainProcess p({"run", spec});
  ASSERT_EQ(p.finish(Millis(120000)), 0) << p.err;
  std::string run;
  for (const auto& e : fs::directory_iterator(dir.path() + "/runs")) run = e.path().string();
  ASSERT_FALSE(run.empty());
  const std::string page = run + "/report.html";
  ASSERT_TRUE(fs::exists(page)) << "the run did not write report.html; launcher.log:\n"
                                << read_file(run + "/launcher.log");

  Shell which = sh("command -v chromium", dir);
  ASSERT_EQ(which.status, 0) << "chromium is not installed (scripts/setup.sh installs Debian's "
                                "chromium); the report cannot be checked in a browser";
  Shell dom = sh(chromium(dir, "--dump-dom", page), dir);
  ASSERT_EQ(dom.status, 0) << "chromium --dump-dom failed (exit " << dom.status << "):\n"
                           << tail(dom.err);
  ASSERT_NE(dom.out.find("</html>"), std::string::npos) << "no DOM came back:\n" << tail(dom.err);
  for (const char* id :
       {"chart-loss", "chart-throughput", "chart-step-time", "chart-memory", "chart-lr", "mesh"})
    EXPECT_NE(dom.out.find(std::string("id=\"") + id + "\""), std::string::npos) << id;
  // Series paths with real data: "M x y L x y ..." with one point per logged step.
  std::regex path(
      "<path class=\"series\" data-series=\"([^\"]+)\" data-points=\"(\\d+)\" "
      "d=\"M[0-9. ]+(L[0-9. ]+)+\"");
  int drawn = 0;
  for (auto it = std::sregex_iterator(dom.out.begin(), dom.out.end(), path);
       it != std::sregex_iterator(); ++it) {
    if ((*it)[1] == "loss") {
      EXPECT_EQ((*it)[2], "12");
    }
    ++drawn;
  }
  EXPECT_NE(dom.out.find("data-series=\"eval_loss\" data-points=\"3\""), std::string::npos);
  EXPECT_GE(drawn, 6) << tail(dom.out, 4000);
  // Console messages (errors, a blocked fetch) are logged as ":CONSOLE(...)" lines.
  std::istringstream lines(dom.err);
  for (std::string line; std::getline(lines, line);)
    EXPECT_EQ(line.find(":CONSOLE"), std::string::npos) << line;

  fs::create_directories(PTRAIN_TEST_OUTPUT);
  const std::string shot = std::string(PTRAIN_TEST_OUTPUT) + "/report.png";
  fs::remove(shot);
  Shell png = sh(chromium(dir, "--window-size=1280,2400 --screenshot=" + shot, page), dir);
  ASSERT_EQ(png.status, 0) << "chromium --screenshot failed:\n" << tail(png.err);
  ASSERT_TRUE(fs::exists(shot)) << tail(png.err);
  std::string bytes = read_file(shot);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_GT(bytes.size(), 20000u);  // a blank page compresses to a few KB
  fs::copy_file(page, std::string(PTRAIN_TEST_OUTPUT) + "/report.html",
                fs::copy_options::overwrite_existing);
}

}  // namespace
}  // namespace ptrain::launch
