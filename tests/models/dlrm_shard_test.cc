// Sharded DLRM embedding tables (parallel.embeddings: table | row): the placement, 2 workers
// equal to one process over 20 SGD steps (final tables included), sparse SGD equal to dense
// SGD, row-wise Adagrad against a hand computation, checkpoints across placements and world
// sizes, the all-to-all bytes against their formula, exact AUC, and the spec's refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "dlrm/dlrm_ops.h"
#include "dlrm/sharded_tables.h"
#include "ptrain/core/error.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/optim/sparse.h"
#include "ptrain/spec/plan.h"
#include "ptrain/spec/spec.h"
#include "ptrain/train/checkpointing.h"
#include "support/rank_threads.h"

namespace ptrain::models {
namespace {

using nn::dlrm::Placement;
using spec::JobSpec;

// Tables of unequal size so that table placement is not symmetric.
const char* kModel =
    "model: {type: dlrm, dense: 4, tables: [50, 30, 40], embedding_dim: 4,\n"
    "        bottom_mlp: [8, 4], top_mlp: [8, 1]}\n"
    "data: {type: synthetic-criteo, batch_size: 16, eval_fraction: 0.1}\n"
    "nodes: {device: cpu, threads_per_proc: 1}\n"
    "checkpoint: {resume: never}\n";
const std::string kBase = std::string(kModel) +
                          "train: {steps: 20, seed: 3, eval_every: 20, optimizer: {type: sgd, "
                          "lr: 0.5}}\n";

JobSpec job(const std::string& embeddings, int dp, const std::string& dir = "") {
  JobSpec s = spec::load_string(kBase, "dlrm.yaml");
  s.parallel.embeddings = embeddings;
  s.parallel.data = dp;
  s.parallel.data_auto = false;
  s.checkpoint.dir = dir;
  return s;
}

std::string fresh_dir(const std::string& name) {
  std::string d = ::testing::TempDir() + "/dlrm_shard_" + name;
  std::filesystem::remove_all(d);
  return d;
}

// Every tensor of the newest checkpoint in `dir` (model file, then optimizer file).
std::map<std::string, std::vector<float>> tensors_of(const std::string& dir) {
  auto point = train::find_resume_point("auto", dir);
  EXPECT_TRUE(point.has_value()) << dir;
  std::map<std::string, std::vector<float>> out;
  if (!point) return out;
  std::vector<std::string> files{point->model_path()};
  if (std::filesystem::exists(point->optim_path())) files.push_back(point->optim_path());
  for (const auto& f : files) {
    auto file = data::SafetensorsFile::open(f);
    for (const auto& t : file.tensors()) {
      std::vector<float> v(size_t(tensor::shape_numel(t.shape)));
      file.read_f32(t.name, v.data());
      out[t.name] = std::move(v);
    }
  }
  return out;
}

void expect_same_tensors(const std::map<std::string, std::vector<float>>& a,
                         const std::map<std::string, std::vector<float>>& b, double rel) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, va] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    const auto& vb = b.at(name);
    ASSERT_EQ(va.size(), vb.size()) << name;
    double worst = 0;
    for (size_t i = 0; i < va.size(); ++i)
      worst = std::max(worst, std::fabs(double(va[i]) - vb[i]) / (std::fabs(double(va[i])) + 1e-3));
    EXPECT_LE(worst, rel) << name;
  }
}

void expect_same_curves(const std::vector<train::StepMetrics>& a,
                        const std::vector<train::StepMetrics>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(b[i].loss, a[i].loss, 1e-5 * std::abs(a[i].loss)) << "step " << i + 1;
    EXPECT_NEAR(b[i].grad_norm, a[i].grad_norm, 1e-5 * std::abs(a[i].grad_norm)) << i + 1;
  }
}

TEST(DlrmPlacement, TableGivesEachTableToTheLeastLoadedRankLargestFirst) {
  // 100 -> r0, 60 -> r1, 50 -> r1 (60 < 100), 10 -> r0 (100 < 110).
  auto s = nn::dlrm::place_tables({100, 60, 50, 10}, Placement::kTable, 2);
  EXPECT_EQ(s[0], (std::vector<int64_t>{0, 100, 100}));
  EXPECT_EQ(s[1], (std::vector<int64_t>{0, 0, 60}));
  EXPECT_EQ(s[2], (std::vector<int64_t>{0, 0, 50}));
  EXPECT_EQ(s[3], (std::vector<int64_t>{0, 10, 10}));
  EXPECT_EQ(nn::dlrm::owner_of(s[1], 59), 1);
  EXPECT_EQ(nn::dlrm::owner_of(s[0], 0), 0);
}

TEST(DlrmPlacement, RowSplitsEveryTableEvenly) {
  auto s = nn::dlrm::place_tables({10, 2}, Placement::kRow, 3);
  EXPECT_EQ(s[0], (std::vector<int64_t>{0, 3, 6, 10}));
  EXPECT_EQ(s[1], (std::vector<int64_t>{0, 0, 1, 2}));
  EXPECT_EQ(nn::dlrm::owner_of(s[0], 6), 2);
  EXPECT_EQ(nn::dlrm::owner_of(s[1], 0), 1);  // rank 0 holds no row of table 1
}

TEST(DlrmSharded, TwoWorkersWithTableOrRowEqualOneProcessOver20StepsTablesIncluded) {
  JobSpec one = job("replicated", 1, fresh_dir("one"));
  one.train.optimizer.grad_clip = 0.05;  // clipping must count each sharded row once
  auto ref = ptrain::testing::run_ranks(one)[0].result.history;
  ASSERT_EQ(ref.size(), 20u);
  EXPECT_LT(ref.back().loss, ref.front().loss);
  for (const std::string placement : {"table", "row"}) {
    SCOPED_TRACE(placement);
    JobSpec two = job(placement, 2, fresh_dir("two_" + placement));
    two.train.optimizer.grad_clip = 0.05;
    auto runs = ptrain::testing::run_ranks(two);
    expect_same_curves(ref, runs[0].result.history);
    ASSERT_FALSE(runs[0].result.history.back().eval_metrics.empty());
    EXPECT_NEAR(runs[0].result.history.back().eval_metrics[0].second,
                ref.back().eval_metrics[0].second, 1e-6);
    expect_same_tensors(tensors_of(one.checkpoint.dir), tensors_of(two.checkpoint.dir), 1e-5);
  }
}

TEST(DlrmSharded, AWorkerThatOwnsNoTableStillTrainsTheDenseParts) {
  // 3 tables on 4 workers: dp 3 holds no rows, yet joins every all-to-all and checkpoint.
  JobSpec one = job("replicated", 1, fresh_dir("none_one"));
  JobSpec four = job("table", 4, fresh_dir("none_four"));
  one.data.batch_size = four.data.batch_size = 24;
  one.train.steps = four.train.steps = 8;
  one.train.eval_every = four.train.eval_every = 8;
  expect_same_curves(ptrain::testing::run_ranks(one)[0].result.history,
                     ptrain::testing::run_ranks(four)[0].result.history);
  expect_same_tensors(tensors_of(one.checkpoint.dir), tensors_of(four.checkpoint.dir), 1e-5);
}

TEST(DlrmSharded, SparseSgdEqualsDenseSgd) {
  // One process: sharded tables updated row by row where looked up, against replicated
  // tables updated densely by the job's SGD.
  JobSpec dense = job("replicated", 1, fresh_dir("dense"));
  JobSpec sparse = job("table", 1, fresh_dir("sparse"));
  sparse.train.optimizer.embeddings.type = "sgd";
  expect_same_curves(ptrain::testing::run_ranks(dense)[0].result.history,
                     ptrain::testing::run_ranks(sparse)[0].result.history);
  expect_same_tensors(tensors_of(dense.checkpoint.dir), tensors_of(sparse.checkpoint.dir), 1e-6);
}

TEST(DlrmSharded, ZeroOneShardsTheDenseStateBesideRowShardedTables) {
  // AdamW on the MLPs with ZeRO-1 over 2 workers, row-wise Adagrad on the row-split tables,
  // against one process.
  auto setup = [](JobSpec s) {
    s.train.optimizer.type = "adamw";
    s.train.optimizer.lr = 0.01;
    s.train.optimizer.weight_decay = 0.1;
    s.train.optimizer.embeddings.type = "adagrad";
    s.train.optimizer.embeddings.lr = 0.1;
    return s;
  };
  JobSpec one = setup(job("row", 1, fresh_dir("zero_one")));
  JobSpec two = setup(job("row", 2, fresh_dir("zero_two")));
  two.parallel.zero = 1;
  expect_same_curves(ptrain::testing::run_ranks(one)[0].result.history,
                     ptrain::testing::run_ranks(two)[0].result.history);
  expect_same_tensors(tensors_of(one.checkpoint.dir), tensors_of(two.checkpoint.dir), 1e-4);
}

TEST(DlrmSharded, EmbeddingLrDefaultsToTheJobsAndCanDiffer) {
  JobSpec a = job("row", 1), b = job("row", 1);
  b.train.optimizer.embeddings.lr = 0.05;
  auto ha = ptrain::testing::run_ranks(a)[0].result.history;
  auto hb = ptrain::testing::run_ranks(b)[0].result.history;
  EXPECT_EQ(ha[0].loss, hb[0].loss);          // the same start
  EXPECT_NE(ha.back().loss, hb.back().loss);  // another embedding lr, another curve
}

TEST(RowSparseOptimizer, RowWiseAdagradEqualsAHandComputation) {
  // 3 rows of 2; steps touch rows {0, 2} then {2}: row 1 never changes.
  optim::RowSparseOptions o;
  o.type = "adagrad";
  o.eps = 1e-8f;
  optim::RowSparseOptimizer opt(o);
  ASSERT_EQ(opt.add_table(3, 2), 0u);
  std::vector<float> w{1, 2, 3, 4, 5, 6};
  std::vector<float> g1{0.5f, -1.5f, 9, 9, 2, 0}, g2{0, 0, 0, 0, -1, 3};
  opt.step(0, w.data(), g1.data(), {0, 2}, 0.1f);
  opt.step(0, w.data(), g2.data(), {2}, 0.1f);
  // Row 0: acc = (0.25 + 2.25) / 2 = 1.25; w -= 0.1 g / (sqrt(1.25) + eps).
  const double a0 = 1.25, s0 = 0.1 / (std::sqrt(a0) + 1e-8);
  EXPECT_NEAR(w[0], 1 - s0 * 0.5, 1e-6);
  EXPECT_NEAR(w[1], 2 + s0 * 1.5, 1e-6);
  EXPECT_EQ(w[2], 3);
  EXPECT_EQ(w[3], 4);
  // Row 2: acc = 2 after step 1, then + (1 + 9) / 2 = 7.
  const double s1 = 0.1 / (std::sqrt(2.0) + 1e-8), s2 = 0.1 / (std::sqrt(7.0) + 1e-8);
  EXPECT_NEAR(w[4], 5 - s1 * 2 - s2 * -1, 1e-6);
  EXPECT_NEAR(w[5], 6 - s1 * 0 - s2 * 3, 1e-6);
  EXPECT_FLOAT_EQ(opt.accumulator(0)[0], 1.25f);
  EXPECT_FLOAT_EQ(opt.accumulator(0)[1], 0.f);
  EXPECT_FLOAT_EQ(opt.accumulator(0)[2], 7.f);
}

TEST(RowSparseOptimizer, UnknownTypeIsAConfigError) {
  optim::RowSparseOptions o;
  o.type = "adam";
  EXPECT_THROW(optim::RowSparseOptimizer{o}, ConfigError);
}

TEST(DlrmSharded, CheckpointUnderOnePlacementResumesExactlyUnderAnotherWorldAndPlacement) {
  auto adagrad = [](JobSpec s) {
    s.train.optimizer.embeddings.type = "adagrad";
    s.train.optimizer.embeddings.lr = 0.1;
    return s;
  };
  // 10 steps under table placement on 2 workers, saved with full tables and accumulators.
  const std::string first = fresh_dir("resume_first");
  JobSpec a = adagrad(job("table", 2, first));
  a.train.steps = 10;
  ptrain::testing::run_ranks(a);
  auto saved = tensors_of(first);
  ASSERT_TRUE(saved.count("emb_l.0.weight.sum"));  // the accumulators, full [rows]
  EXPECT_EQ(saved.at("emb_l.0.weight.sum").size(), 50u);
  EXPECT_EQ(saved.at("emb_l.1.weight").size(), 30u * 4);
  // Then 10 more under row placement on 1 and on 2 workers: the same as 20 straight steps of
  // row placement on 2 workers (whose dense gradients sum in the same order as the first 10).
  JobSpec ref = adagrad(job("row", 2, fresh_dir("resume_ref")));
  ptrain::testing::run_ranks(ref);
  for (int dp : {2, 1}) {
    SCOPED_TRACE(dp);
    const std::string dir = fresh_dir(fmt::format("resume_{}", dp));
    std::filesystem::copy(first, dir, std::filesystem::copy_options::recursive);
    JobSpec b = adagrad(job("row", dp, dir));
    b.checkpoint.resume = "auto";
    auto runs = ptrain::testing::run_ranks(b);
    EXPECT_EQ(runs[0].result.first_step, 10);
    expect_same_tensors(tensors_of(ref.checkpoint.dir), tensors_of(dir), dp == 2 ? 1e-6 : 1e-4);
  }
}

TEST(DlrmSharded, AllToAllBytesPerStepMatchTheFormula) {
  // Tables [50, 30, 40] on 2 workers: 50 -> r0, 40 -> r1, 30 -> r1. Rank 0 (8 samples) sends
  // one count (4 B), the keys of its 2 lookups per sample into rank 1's tables (8 B each) and
  // their gradients (4D B each), and returns rank 1's 1 lookup per sample into table 0 (4D B).
  JobSpec s = job("table", 2);
  s.train.steps = 3;
  auto runs = ptrain::testing::run_ranks(s);
  const double D = 4, B = 8;
  const double expected = 4 + B * 2 * (8 + 4 * D) + B * 1 * 4 * D;
  ASSERT_EQ(runs[0].reports.size(), 3u);
  for (const auto& line : runs[0].reports) {
    auto j = nlohmann::json::parse(line);
    ASSERT_TRUE(j.contains("a2a_mb")) << line;
    EXPECT_NEAR(j["a2a_mb"].get<double>() * 1e6, expected, 1e-3) << line;
    EXPECT_GE(j["a2a_ms"].get<double>(), 0.0);
  }
}

TEST(DlrmAuc, ExactAucCountsTiesHalfLikeThePairwiseDefinition) {
  std::vector<float> s{0.1f, 0.4f, 0.35f, 0.8f, 0.4f, 0.4f, 0.2f, 0.9f};
  std::vector<float> y{0, 1, 0, 1, 0, 1, 1, 0};
  double wins = 0, pairs = 0;  // the naive reference: every (positive, negative) pair
  for (size_t i = 0; i < s.size(); ++i)
    for (size_t j = 0; j < s.size(); ++j)
      if (y[i] == 1 && y[j] == 0) {
        pairs += 1;
        wins += s[i] > s[j] ? 1 : s[i] == s[j] ? 0.5 : 0;
      }
  EXPECT_NEAR(nn::dlrm::roc_auc(s.data(), y.data(), s.size()), wins / pairs, 1e-12);
  std::vector<float> one_class{1, 1};
  EXPECT_EQ(nn::dlrm::roc_auc(s.data(), one_class.data(), 2), 0.5);
}

void expect_config_error(const std::string& yaml, const std::string& needle) {
  try {
    spec::load_string(yaml, "bad.yaml");
    FAIL() << "no ConfigError for " << yaml;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.yaml:"), std::string::npos) << e.what();
  }
}

TEST(DlrmShardSpec, EmbeddingsKeyTakesReplicatedTableOrRow) {
  expect_config_error(kBase + "parallel: {embeddings: column}\n", "parallel.embeddings");
  JobSpec s = spec::load_string(std::string(kModel) +
                                    "parallel: {data: 1, embeddings: row}\n"
                                    "train: {steps: 20, optimizer: {type: sgd, lr: 0.5, "
                                    "embeddings: {type: adagrad, lr: 0.05}}}\n",
                                "ok.yaml");
  EXPECT_EQ(s.parallel.embeddings, "row");
  EXPECT_EQ(s.train.optimizer.embeddings.type, "adagrad");
  EXPECT_EQ(spec::load_string(spec::to_yaml(s), "back.yaml"), s);
  // Without an lr of its own (the job's), as the workers read it back from job.yaml.
  JobSpec t = spec::load_string(std::string(kModel) +
                                    "parallel: {embeddings: table}\n"
                                    "train: {optimizer: {type: sgd, lr: 0.5, "
                                    "embeddings: {type: adagrad}}}\n",
                                "ok.yaml");
  EXPECT_EQ(t.train.optimizer.embeddings.lr, 0.0);
  EXPECT_EQ(spec::load_string(spec::to_yaml(t), "back.yaml"), t);
}

TEST(DlrmShardSpec, EmbeddingOptimizerNeedsShardedTablesAndAKnownType) {
  expect_config_error(
      std::string(kModel) + "train: {optimizer: {type: sgd, lr: 0.5, embeddings: {type: adam}}}\n",
      "train.optimizer.embeddings.type");
  expect_config_error(std::string(kModel) +
                          "train: {optimizer: {type: sgd, lr: 0.5, embeddings: {type: adagrad}}}\n",
                      "train.optimizer.embeddings");
}

TEST(DlrmShardSpec, AFamilyWithoutTablesRefusesShardedEmbeddings) {
  expect_config_error(
      "model: {type: mlp, input: 4, classes: 2}\n"
      "data: {type: synthetic}\n"
      "parallel: {embeddings: table}\n",
      "parallel.embeddings");
}

TEST(DlrmShardSpec, ReplicatedTablesTooBigForAWorkerGetTheTableOrRowHint) {
  try {
    spec::load_string(
        "model: {type: dlrm, sparse: 26, table_rows: 100000000, embedding_dim: 16}\n"
        "data: {type: synthetic-criteo}\n",
        "bad.yaml");
    FAIL() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.table_rows"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.hint()).find("parallel.embeddings: table or row"), std::string::npos)
        << e.hint();
  }
}

TEST(DlrmShardSpec, ValidateShowsWhichWorkerHoldsWhichTablesAndItsMemory) {
  JobSpec s = job("table", 2);
  auto notes = spec::make_plan(s).notes;
  ASSERT_EQ(notes.size(), 4u);
  EXPECT_NE(notes[3].find("the planted model's AUC on the eval samples: 0."), std::string::npos)
      << notes[3];
  EXPECT_NE(notes[0].find("embeddings table: 3 tables over 2"), std::string::npos) << notes[0];
  // 50 -> dp 0; 40, 30 -> dp 1; 8 bytes (value + gradient) per element.
  EXPECT_NE(notes[1].find("dp   0  50 rows, 1.6 KiB  tables 0"), std::string::npos) << notes[1];
  EXPECT_NE(notes[2].find("dp   1  70 rows, 2.2 KiB  tables 1 2"), std::string::npos) << notes[2];
  s.parallel.embeddings = "row";
  notes = spec::make_plan(s).notes;
  EXPECT_NE(notes[1].find("tables 0[0:25] 1[0:15] 2[0:20]"), std::string::npos) << notes[1];
}

}  // namespace
}  // namespace ptrain::models
