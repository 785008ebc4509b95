// `ptrain validate` as users run it: every shipped config passes, every bad input exits 2 with
// one `ptrain: error: file:line:col: ...` line on stderr.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include "ptrain/spec/spec.h"
#include "spec_test_util.h"

namespace ptrain::spec {
namespace {

using testing::BadInput;
using testing::TempDir;

struct Result {
  int status = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string slurp(const std::string& path) {
  std::string text;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    std::array<char, 4096> buf;
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) text.append(buf.data(), n);
    std::fclose(f);
  }
  return text;
}

// Runs `ptrain <args>` (bounded by `timeout`), capturing stdout and stderr separately.
Result run_ptrain(const std::string& args) {
  TempDir dir;
  std::string cmd = "timeout 20 " + std::string(PTRAIN_BINARY) + " " + args + " >" + dir.path() +
                    "/out 2>" + dir.path() + "/err";
  int rc = std::system(cmd.c_str());
  Result r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = slurp(dir.path() + "/out");
  r.err = slurp(dir.path() + "/err");
  return r;
}

std::string quote(const std::string& s) {
  return "'" + s + "'";
}

class BadSpecCli : public ::testing::TestWithParam<BadInput> {};

TEST_P(BadSpecCli, ExitsTwoWithOneErrorLine) {
  const BadInput& bad = GetParam();
  TempDir dir;
  std::string path = dir.write("job.yaml", bad.text);
  Result r = run_ptrain("validate " + quote(path));
  EXPECT_EQ(r.status, 2) << r.err;
  std::string prefix = "ptrain: error: " + path + ":";
  if (!bad.position.empty()) prefix += bad.position + ":";
  if (!bad.key.empty()) prefix += " " + bad.key + ":";
  EXPECT_EQ(r.err.rfind(prefix, 0), 0u) << "expected prefix: " << prefix << "\n got: " << r.err;
  EXPECT_NE(r.err.find(bad.what), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line: " << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

INSTANTIATE_TEST_SUITE_P(Spec, BadSpecCli, ::testing::ValuesIn(testing::bad_inputs()),
                         [](const auto& info) { return info.param.name; });

TEST(ValidateCli, MissingFileExitsTwo) {
  Result r = run_ptrain("validate /nonexistent/job.yaml");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err,
            "ptrain: error: /nonexistent/job.yaml: no such file; check the path; example "
            "specs are in configs/\n");
}

TEST(ValidateCli, DirectoryExitsTwo) {
  TempDir dir;
  Result r = run_ptrain("validate " + dir.path());
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err.rfind("ptrain: error: " + dir.path() + ": is a directory", 0), 0u) << r.err;
}

TEST(ValidateCli, OversizedFileExitsTwo) {
  TempDir dir;
  std::string path = dir.write("big.yaml", std::string(kMaxSpecBytes + 1, '#'));
  Result r = run_ptrain("validate " + path);
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err.rfind("ptrain: error: " + path + ": the file is 1048577 bytes", 0), 0u) << r.err;
}

TEST(ValidateCli, EveryShippedConfigValidates) {
  int seen = 0;
  for (const auto& entry : std::filesystem::directory_iterator(PTRAIN_SOURCE_DIR "/configs")) {
    if (entry.path().extension() != ".yaml") continue;
    ++seen;
    Result r = run_ptrain("validate " + entry.path().string());
    EXPECT_EQ(r.status, 0) << entry.path() << ": " << r.err;
    EXPECT_NE(r.out.find("world"), std::string::npos) << r.out;
  }
  EXPECT_GE(seen, 8);
}

TEST(ValidateCli, PrintsThePlan) {
  Result r = run_ptrain("validate " PTRAIN_SOURCE_DIR "/configs/quickstart.yaml");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("2 workers = data 2 x tensor 1 x pipeline 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("parameters"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tokens per step"), std::string::npos) << r.out;
}

TEST(ValidateCli, SetOverridesAndJsonPrintsTheResolvedSpec) {
  Result r =
      run_ptrain("validate " PTRAIN_SOURCE_DIR
                 "/configs/quickstart.yaml --set model.layers=3 --set train.steps=70 --json");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.front(), '{');
  EXPECT_NE(r.out.find("\"layers\": 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"steps\": 70"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("configs/data/tiny.txt\""), std::string::npos) << r.out;
}

TEST(ValidateCli, BadSetExitsTwoNamingTheSet) {
  Result r =
      run_ptrain("validate " PTRAIN_SOURCE_DIR "/configs/quickstart.yaml --set parallel.data=3");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err.rfind("ptrain: error: --set parallel.data=3: parallel.data: data x tensor", 0),
            0u)
      << r.err;
}

}  // namespace
}  // namespace ptrain::spec
