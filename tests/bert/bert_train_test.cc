// BERT through the real trainer: tensor, pipeline (both schedules), data parallel with ZeRO-1
// and the 3-D mix each equal one process over 20 steps; checkpoints hold full tensors under
// Hugging Face names whatever the mesh; init_from with a longer position table; bad input.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "ptrain/data/checkpoint.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/data/token_stream.h"
#include "ptrain/spec/spec.h"
#include "ptrain/tensor/tensor.h"
#include "support/ptrain_process.h"
#include "support/rank_threads.h"

namespace ptrain {
namespace {

using spec::JobSpec;

// A tiny BERT on synthetic data; vocab 33 splits unevenly over 2 tensor ranks (17 + 16).
JobSpec tiny_bert(const std::string& extra = "") {
  return spec::load_string(
      "name: tiny-bert\n"
      "model: {type: bert, layers: 2, heads: 2, dim: 16, seq_len: 8, vocab: 33}\n"
      "data: {type: synthetic, batch_size: 8, eval_fraction: 0.1, mask_prob: 0.25}\n"
      "nodes: {device: cpu, threads_per_proc: 1}\n"
      "train: {steps: 20, seed: 7, eval_every: 10,\n"
      "        optimizer: {type: adamw, lr: 3.0e-3, weight_decay: 0.1, grad_clip: 1.0}}\n"
      "checkpoint: {resume: never}\n" +
          extra,
      "tiny-bert.yaml");
}

JobSpec with_mesh(JobSpec s, int data, int tensor, int pipeline) {
  s.parallel.data = data;
  s.parallel.data_auto = false;
  s.parallel.tensor = tensor;
  s.parallel.pipeline = pipeline;
  s.nodes.procs_per_node = data * tensor * pipeline;
  return s;
}

void expect_same_curve(const std::vector<testing::RankRun>& a,
                       const std::vector<testing::RankRun>& b) {
  const auto& x = a[0].result.history;
  const auto& y = b[0].result.history;
  ASSERT_EQ(x.size(), 20u);
  ASSERT_EQ(y.size(), 20u);
  for (size_t i = 0; i < x.size(); ++i)
    EXPECT_NEAR(y[i].loss, x[i].loss, 1e-5 * std::abs(x[i].loss)) << "step " << i + 1;
  for (size_t i : {9u, 19u}) {
    ASSERT_GE(x[i].eval_loss, 0);
    EXPECT_NEAR(y[i].eval_loss, x[i].eval_loss, 1e-5 * x[i].eval_loss) << "eval at " << i + 1;
    ASSERT_EQ(x[i].eval_metrics.size(), 1u);
    ASSERT_EQ(y[i].eval_metrics.size(), 1u);
    EXPECT_EQ(y[i].eval_metrics[0].first, "eval_mlm_accuracy");
    EXPECT_NEAR(y[i].eval_metrics[0].second, x[i].eval_metrics[0].second, 1e-9);
  }
}

class BertTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { single_ = new auto(testing::run_ranks(tiny_bert())); }
  static void TearDownTestSuite() { delete single_; }
  static const std::vector<testing::RankRun>& single() { return *single_; }
  static inline std::vector<testing::RankRun>* single_ = nullptr;
};

TEST_F(BertTrain, OneProcessLearnsAndReportsMlmMetrics) {
  const auto& h = single()[0].result.history;
  ASSERT_EQ(h.size(), 20u);
  EXPECT_LT(h.back().loss, h.front().loss);
  EXPECT_NEAR(h.front().loss, std::log(33.0), 0.5);  // starts near uniform over the vocabulary
  const std::string& line = single()[0].reports[9];
  EXPECT_NE(line.find("\"eval_loss\""), std::string::npos) << line;
  EXPECT_NE(line.find("\"eval_mlm_accuracy\""), std::string::npos) << line;
}

TEST_F(BertTrain, TensorParallelTwoEqualsOneProcess) {
  auto runs = testing::run_ranks(with_mesh(tiny_bert(), 1, 2, 1));
  expect_same_curve(single(), runs);
  EXPECT_NE(runs[0].reports[0].find("\"tp_comm_mb\""), std::string::npos);
}

TEST_F(BertTrain, PipelineTwoGpipeEqualsOneProcess) {
  JobSpec s = with_mesh(tiny_bert(), 1, 1, 2);
  s.parallel.schedule = "gpipe";
  s.parallel.microbatches = 2;
  expect_same_curve(single(), testing::run_ranks(s));
}

TEST_F(BertTrain, PipelineTwoOneFOneBEqualsOneProcess) {
  JobSpec s = with_mesh(tiny_bert(), 1, 1, 2);
  s.parallel.schedule = "1f1b";
  s.parallel.microbatches = 4;
  expect_same_curve(single(), testing::run_ranks(s));
}

TEST_F(BertTrain, DataParallelTwoWithZero1EqualsOneProcess) {
  JobSpec s = with_mesh(tiny_bert(), 2, 1, 1);
  s.parallel.zero = 1;
  expect_same_curve(single(), testing::run_ranks(s));
}

TEST_F(BertTrain, ThreeDMeshEqualsOneProcess) {
  JobSpec s = with_mesh(tiny_bert(), 2, 2, 2);
  s.parallel.zero = 1;
  s.parallel.microbatches = 2;
  expect_same_curve(single(), testing::run_ranks(s));
}

// The global batch's masked positions are the loss denominator: the same number for any split.
TEST_F(BertTrain, CheckpointsHoldFullHuggingFaceTensorsOnAnyMesh) {
  testing::TempDir one_dir, tp_dir;
  JobSpec one = tiny_bert(), tp = with_mesh(tiny_bert(), 1, 2, 2);
  one.train.steps = tp.train.steps = 3;
  one.train.eval_every = tp.train.eval_every = 0;
  one.checkpoint.dir = one_dir.path();
  tp.checkpoint.dir = tp_dir.path();
  testing::run_ranks(one);
  testing::run_ranks(tp);
  auto a = data::SafetensorsFile::open(data::find_latest_complete(one_dir.path())->model_path());
  auto b = data::SafetensorsFile::open(data::find_latest_complete(tp_dir.path())->model_path());
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (const char* name : {"bert.embeddings.word_embeddings.weight", "cls.predictions.bias",
                           "bert.encoder.layer.1.attention.self.query.weight",
                           "bert.encoder.layer.1.output.dense.weight"}) {
    const auto* ta = a.find(name);
    const auto* tb = b.find(name);
    ASSERT_NE(ta, nullptr) << name;
    ASSERT_NE(tb, nullptr) << name;
    EXPECT_EQ(ta->shape, tb->shape) << name;
    std::vector<float> va(size_t(tensor::shape_numel(ta->shape))), vb(va.size());
    a.read_f32(name, va.data());
    b.read_f32(name, vb.data());
    for (size_t i = 0; i < va.size(); ++i) ASSERT_NEAR(va[i], vb[i], 1e-5) << name << " " << i;
  }
  EXPECT_EQ(a.find("bert.embeddings.word_embeddings.weight")->shape,
            (std::vector<int64_t>{33, 16}));
  EXPECT_EQ(a.find("cls.predictions.bias")->shape, (std::vector<int64_t>{33}));
  EXPECT_EQ(a.find("cls.predictions.decoder.weight"), nullptr);
}

// Masking is a pure function of the position: a run resumed at step 10 on another mesh (data 2)
// continues the curve of the uninterrupted one.
TEST_F(BertTrain, ResumedOnAnotherMeshContinuesTheSameCurve) {
  testing::TempDir dir;
  JobSpec first = tiny_bert();
  first.train.steps = 10;
  first.train.eval_every = 0;
  first.checkpoint.dir = dir.path();
  testing::run_ranks(first);
  JobSpec rest = with_mesh(tiny_bert(), 2, 1, 1);
  rest.train.eval_every = 0;
  rest.checkpoint.dir = dir.path();
  rest.checkpoint.resume = "auto";
  auto runs = testing::run_ranks(rest);
  const auto& h = runs[0].result.history;
  const auto& x = single()[0].result.history;
  ASSERT_EQ(runs[0].result.first_step, 10);
  ASSERT_EQ(h.size(), 10u);
  for (size_t i = 0; i < h.size(); ++i)
    EXPECT_NEAR(h[i].loss, x[10 + i].loss, 1e-5 * x[10 + i].loss) << "step " << 11 + i;
}

// An init_from position table longer than seq_len (HF's 512): the first rows are used, all
// are kept; a seq_len beyond it is refused with the key.
TEST(BertInitFrom, LongerPositionTableIsKeptAndShorterRefused) {
  testing::TempDir dir;
  // A checkpoint of the tiny model whose position table has 12 rows instead of seq_len 8.
  JobSpec first = tiny_bert();
  first.train.steps = 1;
  first.train.eval_every = 0;
  first.checkpoint.dir = dir.path() + "/first";
  testing::run_ranks(first);
  auto saved =
      data::SafetensorsFile::open(data::find_latest_complete(first.checkpoint.dir)->model_path());
  std::vector<std::vector<float>> keep;
  data::SafetensorsWriter w;
  for (const auto& t : saved.tensors()) {
    keep.emplace_back(size_t(tensor::shape_numel(t.shape)));
    saved.read_f32(t.name, keep.back().data());
    if (t.name == "bert.embeddings.position_embeddings.weight") {
      keep.back().resize(12 * 16, 0.01f);
      w.add(t.name, keep.back().data(), {12, 16});
    } else {
      w.add(t.name, keep.back().data(), t.shape);
    }
  }
  const std::string path = dir.path() + "/init.safetensors";
  {
    std::ofstream f(path, std::ios::binary);
    f << w.serialize();
  }
  JobSpec s = tiny_bert();
  s.checkpoint.dir = dir.path() + "/ck";
  s.model.init_from = path;
  s.train.steps = 2;
  s.train.eval_every = 0;
  testing::run_ranks(s);
  auto out =
      data::SafetensorsFile::open(data::find_latest_complete(dir.path() + "/ck")->model_path());
  EXPECT_EQ(out.find("bert.embeddings.position_embeddings.weight")->shape,
            (std::vector<int64_t>{12, 16}));
  try {
    spec::load_string(fmt::format("model: {{type: bert, seq_len: 16, init_from: {}}}\n"
                                  "nodes: {{device: cpu}}\n",
                                  path),
                      "bad.yaml");
    FAIL() << "no throw";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.seq_len"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("12 rows"), std::string::npos) << e.what();
  }
}

void expect_refused(const std::string& yaml, const std::string& key, const std::string& what) {
  try {
    spec::load_string(yaml, "bad.yaml");
    FAIL() << "no throw for " << yaml;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(BertBadInput, MaskProbOutsideTheOpenUnitInterval) {
  for (const char* p : {"0", "1", "1.5", "-0.1"})
    expect_refused(fmt::format("model: {{type: bert}}\ndata: {{mask_prob: {}}}\n", p),
                   "data.mask_prob", "");
}

TEST(BertBadInput, HeadsNotDividingDimOrTensor) {
  expect_refused("model: {type: bert, dim: 10, heads: 4}\n", "model.dim", "not divisible by heads");
  expect_refused(
      "model: {type: bert, dim: 12, heads: 3}\nparallel: {tensor: 2}\n"
      "nodes: {procs_per_node: 2}\n",
      "model.heads", "not divisible by tensor");
}

TEST(BertBadInput, CudaDeviceIsRefused) {
  expect_refused("model: {type: bert}\nnodes: {device: cuda}\n", "nodes.device", "CPU only");
}

TEST(BertBadInput, TokenIdAtOrAboveTheMaskTokenNamesFileAndOffset) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/toks.bin";
  std::vector<int32_t> ids(100, 5);
  ids[37] = 32;  // the mask token of vocab 33
  data::write_token_file(path, ids.data(), int64_t(ids.size()));
  expect_refused(fmt::format("model: {{type: bert, vocab: 33, seq_len: 8}}\n"
                             "data: {{type: tokens, path: {}}}\n",
                             path),
                 "data.path", fmt::format("'{}' has token id 32 at offset 37", path));
  // Through the binary: one line and exit status 2.
  const std::string spec_path = dir.path() + "/bad.yaml";
  std::ofstream(spec_path) << "model: {type: bert, vocab: 33, seq_len: 8}\n"
                           << "data: {type: tokens, path: toks.bin}\n";
  testing::PtrainProcess p({"validate", spec_path});
  EXPECT_EQ(p.finish(), 2) << p.err;
  EXPECT_NE(p.err.find("data.path"), std::string::npos) << p.err;
  EXPECT_NE(p.err.find("at offset 37"), std::string::npos) << p.err;
}

TEST(BertBadInput, MaskTokenOutsideTheVocabulary) {
  expect_refused("model: {type: bert, vocab: 300, mask_token: 300}\n", "model.mask_token",
                 "not below vocab");
  expect_refused(
      "model: {type: bert, vocab: 300, mask_token: 100}\n"
      "data: {type: text, path: x.txt}\n",
      "model.mask_token", "byte ids");
}

}  // namespace
}  // namespace ptrain
