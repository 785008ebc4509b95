// The Chrome trace pieces and their merge into trace.json.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "ptrain/core/time.h"
#include "ptrain/parallel/pipeline.h"

namespace ptrain::parallel {
namespace {

namespace fs = std::filesystem;

std::string read(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(Trace, RecorderKeepsSpansInUnixMicrosecondsAndBoundsThem) {
  TraceRecorder rec(2);
  double t = mono_seconds();
  rec.add("F0", "compute", t, t + 0.002);
  rec.add("B0", "compute", t + 0.002, t + 0.005);
  rec.add("F1", "compute", t + 0.005, t + 0.006);
  ASSERT_EQ(rec.spans().size(), 2u);
  EXPECT_EQ(rec.dropped(), 1u);
  EXPECT_NEAR(rec.spans()[0].dur_us, 2000, 1);
  EXPECT_NEAR(rec.spans()[1].start_us - rec.spans()[0].start_us, 2000, 1);
  EXPECT_NEAR(rec.spans()[0].start_us, double(unix_micros()), 5e6);
}

TEST(Trace, PiecesOfEveryRankMergeIntoOneTraceFile) {
  fs::path dir = fs::temp_directory_path() / ("ptrain-trace-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  double t = mono_seconds();
  for (int r = 0; r < 3; ++r) {
    TraceRecorder rec;
    rec.add("F0", "compute", t, t + 0.001);
    rec.add("send act 0", "comm", t + 0.001, t + 0.0011);
    write_trace_piece(dir.string(), r, rec.spans(), "rank " + std::to_string(r) + " \"q\"");
  }
  EXPECT_EQ(merge_trace_pieces(dir.string(), 3), 3);
  EXPECT_FALSE(fs::exists(dir / "trace-rank-0.json"));
  std::string text = read(dir / "trace.json");
  EXPECT_EQ(text.rfind("{\"displayTimeUnit\": \"ms\", \"traceEvents\": [", 0), 0u) << text;
  EXPECT_EQ(count(text, "\"ph\": \"X\""), 6u);
  EXPECT_EQ(count(text, "\"process_name\""), 3u);
  EXPECT_NE(text.find("\"pid\": 2"), std::string::npos);
  EXPECT_NE(text.find(R"(rank 1 \"q\")"), std::string::npos) << text;
  EXPECT_EQ(text.substr(text.size() - 3), "]}\n");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ptrain::parallel
