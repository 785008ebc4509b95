// Every bad input of the spec issue, through the library: one ConfigError line that starts with
// "file:line:col: key.path:" and carries a hint, exit code 2.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "ptrain/core/error.h"
#include "ptrain/spec/spec.h"
#include "spec_test_util.h"

namespace ptrain::spec {
namespace {

using testing::BadInput;
using testing::TempDir;

// Loads `path` and returns the ConfigError's message; fails the test when nothing is thrown.
std::string load_error(const std::string& path, const std::vector<std::string>& overrides = {}) {
  try {
    load_file(path, overrides);
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_FALSE(e.hint().empty()) << e.message();
    EXPECT_EQ(e.message().find('\n'), std::string::npos) << e.message();
    return e.message();
  }
  ADD_FAILURE() << path << " loaded without an error";
  return {};
}

class BadSpec : public ::testing::TestWithParam<BadInput> {};

TEST_P(BadSpec, FailsWithPositionKeyAndHint) {
  const BadInput& bad = GetParam();
  TempDir dir;
  std::string path = dir.write("job.yaml", bad.text);
  std::string msg = load_error(path);
  std::string prefix = path + ":";
  if (!bad.position.empty()) prefix += bad.position + ":";
  if (!bad.key.empty()) prefix += " " + bad.key + ":";
  EXPECT_EQ(msg.rfind(prefix, 0), 0u) << "expected prefix: " << prefix << "\n got: " << msg;
  EXPECT_NE(msg.find(bad.what), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(Spec, BadSpec, ::testing::ValuesIn(testing::bad_inputs()),
                         [](const auto& info) { return info.param.name; });

TEST(BadSpecFile, MissingFileIsNamed) {
  TempDir dir;
  std::string msg = load_error(dir.path() + "/nope.yaml");
  EXPECT_EQ(msg.rfind(dir.path() + "/nope.yaml: no such file", 0), 0u) << msg;
}

TEST(BadSpecFile, DirectoryIsRefused) {
  TempDir dir;
  std::string msg = load_error(dir.path());
  EXPECT_EQ(msg.rfind(dir.path() + ": is a directory", 0), 0u) << msg;
}

TEST(BadSpecFile, FileOverOneMebibyteIsRefusedBeforeReading) {
  TempDir dir;
  std::string path = dir.write("big.yaml", "name: a\n" + std::string(kMaxSpecBytes, '#'));
  std::string msg = load_error(path);
  EXPECT_EQ(msg.rfind(path + ": the file is", 0), 0u) << msg;
  EXPECT_NE(msg.find("over the 1048576 byte limit"), std::string::npos) << msg;
}

TEST(BadSpecFile, AliasBombIsRefusedWithoutExpanding) {
  TempDir dir;
  std::string path = dir.write("bomb.yaml", testing::billion_laughs());
  auto start = std::chrono::steady_clock::now();
  std::string msg = load_error(path);
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_NE(msg.find("aliases expand to more than"), std::string::npos) << msg;
  // Expanding 9^9 nodes would take minutes and gigabytes; refusing takes milliseconds. The
  // bound is loose so that a loaded machine does not fail it.
  EXPECT_LT(std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count(), 2000);
}

TEST(BadSpecFile, ModestAliasesAreAccepted) {
  JobSpec s = load_string("env: &e {A: '1'}\nname: x\ncommand: [a, b]\n", "a.yaml");
  EXPECT_EQ(s.env.at("A"), "1");
}

TEST(BadOverride, UnknownKeyNamesTheSetAndSuggests) {
  TempDir dir;
  std::string path = dir.write("job.yaml", "name: a\n");
  std::string msg = load_error(path, {"modle.layers=2"});
  EXPECT_EQ(msg.rfind("--set modle.layers=2: modle: unknown key; did you mean `model`?", 0), 0u)
      << msg;
}

TEST(BadOverride, WrongTypeNamesTheSet) {
  TempDir dir;
  std::string path = dir.write("job.yaml", "model: {layers: 2}\n");
  std::string msg = load_error(path, {"model.layers=many"});
  EXPECT_EQ(msg.rfind("--set model.layers=many: model.layers: expected an integer", 0), 0u) << msg;
}

TEST(BadOverride, MissingEqualsSignIsRefused) {
  TempDir dir;
  std::string path = dir.write("job.yaml", "name: a\n");
  std::string msg = load_error(path, {"model.layers"});
  EXPECT_EQ(msg.rfind("--set model.layers: expected key.path=value", 0), 0u) << msg;
}

TEST(BadOverride, ValueCannotReplaceASection) {
  TempDir dir;
  std::string path = dir.write("job.yaml", "name: a\n");
  std::string msg = load_error(path, {"name.first=x"});
  EXPECT_EQ(msg.rfind("--set name.first=x: name: is a value, not a section", 0), 0u) << msg;
}

TEST(BadHostfile, ErrorsCarryTheHostfileLine) {
  TempDir dir;
  dir.write("hosts", "# cluster\nnode1 slots=4\n\nnode2 slots=four\n");
  std::string path = dir.write("job.yaml", "nodes: {hostfile: hosts}\n");
  std::string msg = load_error(path);
  EXPECT_EQ(msg.rfind(dir.path() + "/hosts:4:13: slots must be a whole number", 0), 0u) << msg;
}

TEST(BadHostfile, MissingHostfileIsReportedAtTheSpecKey) {
  TempDir dir;
  std::string path = dir.write("job.yaml", "nodes:\n  hostfile: hosts.txt\n");
  std::string msg = load_error(path);
  EXPECT_EQ(msg.rfind(path + ":2:13: nodes.hostfile: hostfile", 0), 0u) << msg;
}

}  // namespace
}  // namespace ptrain::spec
