// The console without a TTY: one line per logged step, rank 0's trainer line replaced by the
// progress line from the same step's Report; other lines untouched.
#include "ptrain/launch/console.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace ptrain::launch {
namespace {

// Console output captured through a memory stream.
class Captured {
 public:
  Captured() { f_ = open_memstream(&buf_, &len_); }
  ~Captured() {
    if (f_) std::fclose(f_);
    std::free(buf_);
  }
  std::FILE* file() { return f_; }
  std::string text() {
    std::fflush(f_);
    return std::string(buf_, len_);
  }

 private:
  char* buf_ = nullptr;
  size_t len_ = 0;
  std::FILE* f_ = nullptr;
};

int count(const std::string& hay, const std::string& needle) {
  int n = 0;
  for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1)) ++n;
  return n;
}

const char* kReport2 =
    R"({"step":2,"total_steps":4,"loss":1.5,"lr":0.001,"tokens_per_s":1000,"step_ms":3.5})";

TEST(StepLine, RecognizesTheTrainersStepLine) {
  EXPECT_TRUE(is_step_line("step 2/4 | loss 1.5000 | lr 1.000e-03"));
  EXPECT_TRUE(is_step_line("step 12 | loss 1.5"));
  EXPECT_FALSE(is_step_line("step | loss"));
  EXPECT_FALSE(is_step_line("stepping 2/4 | loss"));
  EXPECT_FALSE(is_step_line("checkpoint: saved step 2 to x"));
}

TEST(NonTtyConsole, ShowsOneLinePerLoggedStep) {
  Captured out;
  Console console(out.file(), /*tty=*/false, ConsoleMode::Rank0, /*log_every=*/2);
  console.report(kReport2, 1.0);
  console.worker_line(0, "", false, "step 2/4 | loss 1.5000 | lr 1.000e-03 | 3.5 ms");
  std::string text = out.text();
  EXPECT_EQ(count(text, "step 2/4"), 1) << text;
  EXPECT_NE(text.find("lr 1.000e-03"), std::string::npos) << text;
  EXPECT_NE(text.find("3.5 ms/step"), std::string::npos) << text;
}

TEST(NonTtyConsole, KeepsRankZerosOtherLines) {
  Captured out;
  Console console(out.file(), /*tty=*/false, ConsoleMode::Rank0, 2);
  console.report(kReport2, 1.0);
  console.worker_line(0, "", false, "checkpoint: saved step 2 to x");
  EXPECT_NE(out.text().find("[rank 0] checkpoint: saved step 2 to x"), std::string::npos);
}

TEST(NonTtyConsole, ShowsStepLinesOfAProgramThatSendsNoReports) {
  Captured out;
  Console console(out.file(), /*tty=*/false, ConsoleMode::Rank0, 2);
  console.worker_line(0, "", false, "step 5/10 | loss 2.0");
  EXPECT_NE(out.text().find("[rank 0] step 5/10 | loss 2.0"), std::string::npos);
}

TEST(TtyConsole, KeepsTheStepLinesAboveTheLiveLine) {
  Captured out;
  Console console(out.file(), /*tty=*/true, ConsoleMode::Rank0, 2);
  console.report(kReport2, 1.0);
  console.worker_line(0, "", false, "step 2/4 | loss 1.5000");
  EXPECT_NE(out.text().find("[rank 0] step 2/4 | loss 1.5000"), std::string::npos);
}

TEST(Report, ReturnsItsStepAndReadsTheProgressFields) {
  Captured out;
  Console console(out.file(), /*tty=*/false, ConsoleMode::Rank0, 2);
  EXPECT_EQ(console.report(kReport2, 1.0), std::optional<int64_t>(2));
  EXPECT_EQ(console.progress().step, 2);
  EXPECT_EQ(console.progress().total, 4);
  EXPECT_EQ(console.progress().loss, std::optional<double>(1.5));
  EXPECT_EQ(console.progress().step_ms, std::optional<double>(3.5));
  EXPECT_EQ(console.report(R"({"step":1})", 2.0), std::optional<int64_t>(1));  // an older one
  EXPECT_EQ(console.progress().step, 2);
}

TEST(Report, IgnoresTextWithoutANumericStep) {
  Captured out;
  Console console(out.file(), /*tty=*/false, ConsoleMode::Rank0, 2);
  EXPECT_EQ(console.report("not json", 1.0), std::nullopt);
  EXPECT_EQ(console.report(R"({"step":"3"})", 1.0), std::nullopt);
  EXPECT_EQ(console.report(R"([{"step":3}])", 1.0), std::nullopt);
  EXPECT_FALSE(console.has_progress());
}

}  // namespace
}  // namespace ptrain::launch
