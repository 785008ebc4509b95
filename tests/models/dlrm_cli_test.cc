// The dlrm family through the real binary: bad input exits 2 with one line naming the key or
// the file and line, data.bad_lines: skip trains past bad lines, a .gz Criteo file trains, a
// sharded job on 2 workers runs and reports its all-to-all, and `ptrain validate` shows where
// the tables live.
#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <string>

#include "support/ptrain_process.h"

namespace ptrain::models {
namespace {

using ptrain::testing::contains;
using ptrain::testing::PtrainProcess;
using ptrain::testing::TempDir;

// label, 13 dense, 26 categorical.
std::string line(const std::string& label, const std::string& cat0 = "68fd1e64", int fields = 40) {
  std::string s = label;
  for (int j = 1; j < fields; ++j) s.append(1, '\t').append(j == 14 ? cat0 : std::to_string(j));
  return s + "\n";
}

std::string job(const TempDir& dir, const std::string& data, const std::string& extra = "") {
  std::string spec = dir.path() + "/job.yaml";
  std::ofstream(spec) << "name: dlrm\nlogging: {dir: " << dir.path() << "/runs}\n"
                      << "nodes: {procs_per_node: 1, device: cpu, threads_per_proc: 1}\n"
                      << "model: {type: dlrm, table_rows: 100, embedding_dim: 4, bottom_mlp: [4], "
                         "top_mlp: [1]}\n"
                      << "data: " << data << "\n"
                      << "train: {steps: 3, optimizer: {type: sgd, lr: 0.1}}\n"
                      << "checkpoint: {resume: never}\n"
                      << extra;
  return spec;
}

std::string criteo_file(const TempDir& dir, const std::string& name, const std::string& bad) {
  std::string path = dir.path() + "/" + name;
  std::ofstream f(path);
  for (int i = 0; i < 30; ++i) f << line(i % 3 ? "0" : "1");
  f << bad;
  for (int i = 0; i < 10; ++i) f << line("1");
  return path;
}

TEST(DlrmCli, BottomMlpNotEndingAtEmbeddingDimExitsTwoWithTheKey) {
  TempDir dir;
  std::string spec = dir.path() + "/job.yaml";
  std::ofstream(spec) << "model: {type: dlrm, embedding_dim: 16, bottom_mlp: [64, 8]}\n"
                      << "data: {type: synthetic-criteo}\n";
  PtrainProcess p({"validate", spec});
  EXPECT_EQ(p.finish(), 2) << p.err;
  EXPECT_TRUE(contains(p.err, "model.bottom_mlp")) << p.err;
}

TEST(DlrmCli, MalformedCriteoLinesExitTwoNamingFileAndLine) {
  struct Case {
    std::string bad, needle;
  };
  for (const Case& c : {Case{line("1", "a", 12), ":31: 12 fields, expected 40"},
                        Case{line("0", "zz9"), ":31: categorical feature 1 'zz9' is not hex"},
                        Case{line("7"), ":31: label '7' is not 0 or 1"}}) {
    TempDir dir;
    const std::string path = criteo_file(dir, "clicks.tsv", c.bad);
    PtrainProcess p({"run", job(dir, "{type: criteo, path: " + path + ", batch_size: 8}")});
    EXPECT_EQ(p.finish(), 2) << p.err;
    EXPECT_TRUE(contains(p.out + p.err, "clicks.tsv" + c.needle)) << p.out << p.err;
    EXPECT_TRUE(contains(p.out + p.err, "data.bad_lines: skip")) << p.out << p.err;
  }
}

TEST(DlrmCli, BadLinesSkipTrainsPastThem) {
  TempDir dir;
  const std::string path = criteo_file(dir, "clicks.tsv", line("7"));
  PtrainProcess p(
      {"run", job(dir, "{type: criteo, path: " + path + ", batch_size: 8, bad_lines: skip}")});
  EXPECT_EQ(p.finish(), 0) << p.out << p.err;
}

TEST(DlrmCli, AGzipCriteoFileTrains) {
  TempDir dir;
  const std::string path = dir.path() + "/clicks.tsv.gz";
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_TRUE(f);
  for (int i = 0; i < 40; ++i) {
    std::string l = line(i % 3 ? "0" : "1");
    ASSERT_EQ(gzwrite(f, l.data(), unsigned(l.size())), int(l.size()));
  }
  gzclose(f);
  PtrainProcess p({"run", job(dir, "{type: criteo, path: " + path + ", batch_size: 8}")});
  EXPECT_EQ(p.finish(), 0) << p.out << p.err;
  EXPECT_TRUE(contains(p.out, "step 3/3")) << p.out;
}

TEST(DlrmCli, ATablePlacedJobOnTwoWorkersRunsAndReportsItsAllToAll) {
  TempDir dir;
  std::string spec = job(dir, "{type: synthetic-criteo, batch_size: 16}",
                         "parallel: {data: 2, embeddings: table}\n");
  std::string text = ptrain::testing::read_file(spec);
  text.replace(text.find("procs_per_node: 1"), 17, "procs_per_node: 2");
  std::ofstream(spec) << text;
  PtrainProcess v({"validate", spec});
  ASSERT_EQ(v.finish(), 0) << v.err;
  EXPECT_TRUE(contains(v.out, "embeddings table: 26 tables over 2 data-parallel workers")) << v.out;
  EXPECT_TRUE(contains(v.out, "dp   1  1300 rows")) << v.out;
  PtrainProcess p({"run", spec});
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string metrics;
  for (const auto& run : std::filesystem::directory_iterator(dir.path() + "/runs"))
    metrics = ptrain::testing::read_file((run.path() / "metrics.jsonl").string());
  EXPECT_TRUE(contains(metrics, "\"a2a_mb\"")) << metrics;
}

}  // namespace
}  // namespace ptrain::models
