// The Criteo TSV reader: the feature transforms, empty fields, and each malformed line named by
// file and line (or skipped with data.bad_lines: skip), through the parser and a dlrm job.
#include "dlrm/criteo.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "ptrain/core/error.h"
#include "ptrain/models/registry.h"
#include "ptrain/spec/spec.h"
#include "support/rank_threads.h"

namespace ptrain::models::criteo {
namespace {

const std::vector<int64_t> kRows(26, 1000);

// label, 13 dense, 26 categorical; `dense0` and `cat0` replace the first of each.
std::string line(const std::string& label, const std::string& dense0 = "5",
                 const std::string& cat0 = "68fd1e64") {
  std::string s = label;
  s.append(1, '\t').append(dense0);
  for (int j = 1; j < 13; ++j) s.append(1, '\t').append(std::to_string(j));
  s.append(1, '\t').append(cat0);
  for (int k = 1; k < 26; ++k) s.append(1, '\t').append(k % 3 == 0 ? "" : "a");
  s.append(1, '\n');
  return s;
}

TEST(Criteo, DenseIsLog1pOfTheClippedValueAndCategoricalIsHexModRows) {
  auto s = parse(line("1") + line("0", "", "") + line("0", "-3", "FF"), "day_0.tsv", kRows, false);
  ASSERT_EQ(s.size(), 3);
  EXPECT_EQ(s.labels[0], 1.f);
  EXPECT_FLOAT_EQ(s.dense[0], float(std::log1p(5.0)));
  EXPECT_FLOAT_EQ(s.dense[1], float(std::log1p(1.0)));
  EXPECT_EQ(s.sparse[0], int32_t(0x68fd1e64ull % 1000));
  EXPECT_EQ(s.sparse[1], 10);  // "a"
  EXPECT_EQ(s.sparse[2], 10);
  EXPECT_EQ(s.sparse[3], 0);    // empty
  EXPECT_EQ(s.dense[13], 0.f);  // empty dense
  EXPECT_EQ(s.sparse[26], 0);   // empty categorical
  EXPECT_EQ(s.dense[26], 0.f);  // negative clipped to 0
  EXPECT_EQ(s.sparse[52], 255);
}

void expect_bad(const std::string& text, const std::string& needle) {
  try {
    parse(text, "day_0.tsv", kRows, false);
    FAIL() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Criteo, WrongNumberOfFieldsNamesFileAndLine) {
  expect_bad(line("1") + "1\t2\t3\n", "day_0.tsv:2: 3 fields, expected 40");
}

TEST(Criteo, NonHexCategoricalNamesFileAndLine) {
  expect_bad(line("1") + line("0") + line("1", "5", "xyz"),
             "day_0.tsv:3: categorical feature 1 'xyz' is not hex");
}

TEST(Criteo, LabelThatIsNotZeroOrOneNamesFileAndLine) {
  expect_bad(line("2"), "day_0.tsv:1: label '2' is not 0 or 1");
}

TEST(Criteo, SkipDropsAndCountsBadLines) {
  auto s = parse(line("1") + line("2") + "x\n" + line("0"), "day_0.tsv", kRows, true);
  EXPECT_EQ(s.size(), 2);
  EXPECT_EQ(s.skipped, 2);
}

TEST(Criteo, ADlrmJobTrainsOnAFileAndRefusesABadOneWithExitTwoSemantics) {
  const std::string dir = ::testing::TempDir();
  const std::string good = dir + "/criteo_good.tsv", bad = dir + "/criteo_bad.tsv";
  {
    std::ofstream g(good), b(bad);
    for (int i = 0; i < 40; ++i) g << line(i % 3 ? "0" : "1", std::to_string(i));
    b << line("1") << line("7");
  }
  auto spec_for = [](const std::string& path) {
    return spec::load_string(
        "model: {type: dlrm, table_rows: 100, embedding_dim: 4, bottom_mlp: [4], top_mlp: [1]}\n"
        "data: {type: criteo, path: " +
            path +
            ", batch_size: 8}\n"
            "nodes: {device: cpu, threads_per_proc: 1}\n"
            "train: {steps: 3, optimizer: {type: sgd, lr: 0.1}}\n"
            "checkpoint: {resume: never}\n",
        "job.yaml");
  };
  auto runs = ptrain::testing::run_ranks(spec_for(good));
  EXPECT_EQ(runs[0].result.steps_done, 3);
  try {
    ptrain::testing::run_ranks(spec_for(bad));
    FAIL() << "no ConfigError";
  } catch (const ConfigError& e) {  // the CLI maps ConfigError to exit 2
    EXPECT_NE(std::string(e.what()).find("criteo_bad.tsv:2: label '7'"), std::string::npos)
        << e.what();
  }
}

TEST(Criteo, BadLinesKeyAcceptsSkipAndErrorOnly) {
  try {
    spec::load_string("model: {type: dlrm}\ndata: {type: criteo, path: x.tsv, bad_lines: drop}\n",
                      "bad.yaml");
    FAIL() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.yaml:2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("data.bad_lines"), std::string::npos) << e.what();
  }
}

TEST(Criteo, AnEvaluationCoversTheEvalSplitsWholeBatches) {
  const std::string path = ::testing::TempDir() + "/criteo_eval.tsv";
  {
    std::ofstream f(path);
    for (int i = 0; i < 100; ++i) f << line(i % 2 ? "0" : "1");
  }
  auto s = spec::load_string(
      "model: {type: dlrm, table_rows: 100, embedding_dim: 4, bottom_mlp: [4], top_mlp: [1]}\n"
      "data: {type: criteo, path: " +
          path + ", batch_size: 8, eval_fraction: 0.3}\n",
      "job.yaml");
  auto data = family_of(s).make_data(s);
  EXPECT_EQ(data->eval_batches(), 3);  // 30 eval lines: 3 whole batches of 8
}

}  // namespace
}  // namespace ptrain::models::criteo
