// Tensor (Megatron) parallelism: the loss curve of t = 2 and 4 tensor-parallel ranks, alone and
// with data parallelism, equals one process (fp32, 20 steps, relative 1e-4); checkpoints hold
// the full tensors and load on any t.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "ptrain/data/safetensors.h"
#include "support/rank_threads.h"

namespace ptrain {
namespace {

namespace fs = std::filesystem;

void expect_same_curve(const train::TrainResult& a, const train::TrainResult& b, double rel,
                       size_t a_from = 0) {
  ASSERT_EQ(a.history.size(), b.history.size() + a_from);
  for (size_t i = 0; i < b.history.size(); ++i) {
    double x = a.history[a_from + i].loss, y = b.history[i].loss;
    EXPECT_LE(std::abs(x - y), rel * std::abs(x))
        << "step " << a_from + i + 1 << ": " << x << " vs " << y;
  }
}

spec::JobSpec tp_spec(int t, int dp, int steps, bool sgd = false) {
  auto s = testing::tiny_gpt_spec(steps);
  s.parallel.tensor = t;
  s.parallel.data = dp;
  if (sgd) {
    // Parameters move linearly in the gradients (Adam magnifies the rounding differences of
    // near-zero gradients), for comparing saved tensors element by element.
    s.train.optimizer.type = "sgd";
    s.train.optimizer.momentum = 0.9;
  }
  return s;
}

TEST(TensorParallel, TwoAndFourRanksMatchOneProcess) {
  auto single = testing::run_ranks(tp_spec(1, 1, 20));
  EXPECT_LT(single[0].result.history.back().loss, single[0].result.history.front().loss);
  for (int t : {2, 4}) {
    auto runs = testing::run_ranks(tp_spec(t, 1, 20));
    expect_same_curve(single[0].result, runs[0].result, 1e-4);
    // The vocab-parallel loss is the full loss on every rank of the group.
    expect_same_curve(runs[0].result, runs[t - 1].result, 0);
    // So is the gradient norm (split parameters summed over the group, replicated ones once).
    for (size_t i = 0; i < runs[0].result.history.size(); ++i)
      EXPECT_NEAR(runs[0].result.history[i].grad_norm, single[0].result.history[i].grad_norm,
                  1e-4 * single[0].result.history[i].grad_norm)
          << "t=" << t << " step " << i + 1;
  }
}

TEST(TensorParallel, WithDataParallelMatchesOneProcess) {
  auto single = testing::run_ranks(tp_spec(1, 1, 20));
  auto runs = testing::run_ranks(tp_spec(2, 2, 20));  // 4 ranks
  expect_same_curve(single[0].result, runs[0].result, 1e-4);
  expect_same_curve(runs[0].result, runs[3].result, 0);
}

TEST(TensorParallel, WithPipelineAndDataParallelMatchesOneProcess) {
  auto single = testing::run_ranks(tp_spec(1, 1, 10));
  auto spec = tp_spec(2, 2, 10);  // 3-D: 2 x 2 x 2 = 8 ranks
  spec.parallel.pipeline = 2;
  spec.parallel.microbatches = 2;
  auto runs = testing::run_ranks(spec);
  expect_same_curve(single[0].result, runs[0].result, 1e-4);
}

TEST(TensorParallel, WithZeroOneMatchesOneProcess) {
  auto single = testing::run_ranks(tp_spec(1, 1, 10));
  auto spec = tp_spec(2, 2, 10);
  spec.parallel.zero = 1;
  auto runs = testing::run_ranks(spec);
  expect_same_curve(single[0].result, runs[0].result, 1e-4);
}

TEST(TensorParallel, ReportsTheBytesOfFourAllreducesPerLayer) {
  auto spec = tp_spec(2, 1, 2);
  auto runs = testing::run_ranks(spec);
  ASSERT_FALSE(runs[0].reports.empty());
  const auto& line = runs[0].reports.back();
  // Per step: 4 allreduces of B*T*D per layer, plus the embedding and the head input gradient
  // (2 of B*T*D) and the vocab-parallel softmax (3 of B*T floats).
  const double BTD = 8.0 * 16 * 32, BT = 8.0 * 16;
  const double bytes = 4 * ((4 * 4 + 2) * BTD + 3 * BT);
  auto pos = line.find("\"tp_comm_mb\":");
  ASSERT_NE(pos, std::string::npos) << line;
  double mb = std::stod(line.substr(pos + 13));
  EXPECT_NEAR(mb, bytes / 1e6, 1e-3) << line;
  // 2 per layer each way, the embedding, the head input gradient, max and sum of the softmax.
  EXPECT_NE(line.find("\"tp_allreduces\": 20"), std::string::npos) << line;
}

spec::JobSpec mlp_spec(std::vector<int> hidden, int t) {
  spec::JobSpec s;
  s.name = "mlp";
  s.nodes.device = "cpu";
  s.nodes.threads_per_proc = 1;
  s.model.type = "mlp";
  s.model.set("input", 16).set("hidden", hidden).set("classes", 4);
  s.data.type = "csv";
  s.data.path = std::string(PTRAIN_SOURCE_DIR) + "/configs/data/blobs.csv";
  s.data.batch_size = 32;
  s.train.steps = 20;
  s.train.seed = 3;
  s.train.log_every = 1;
  s.train.optimizer.type = "adamw";
  s.train.optimizer.lr = 3e-3;
  s.train.optimizer.grad_clip = 1.0;
  s.checkpoint.resume = "never";
  s.parallel.tensor = t;
  return s;
}

TEST(TensorParallel, MlpColumnThenRowSplitsMatchOneProcess) {
  // {32}: column, row. {32, 32}: column, row, then the classifier whole on every rank.
  for (auto hidden : {std::vector<int>{32}, std::vector<int>{32, 32}}) {
    auto single = testing::run_ranks(mlp_spec(hidden, 1));
    for (int t : {2, 4}) {
      auto runs = testing::run_ranks(mlp_spec(hidden, t));
      expect_same_curve(single[0].result, runs[0].result, 1e-4);
      expect_same_curve(runs[0].result, runs[t - 1].result, 0);
    }
  }
}

// The same names, shapes and values (to `tol`) in two safetensors files.
void expect_same_tensors(const std::string& path_a, const std::string& path_b, double tol) {
  auto a = data::SafetensorsFile::open(path_a);
  auto b = data::SafetensorsFile::open(path_b);
  ASSERT_EQ(a.tensors().size(), b.tensors().size()) << path_b;
  std::vector<float> x, y;
  for (const auto& t : a.tensors()) {
    const auto* u = b.find(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    ASSERT_EQ(u->shape, t.shape) << t.name;
    size_t n = 1;
    for (auto d : t.shape) n *= size_t(d);
    x.resize(n);
    y.resize(n);
    a.read_f32(t.name, x.data());
    b.read_f32(t.name, y.data());
    for (size_t i = 0; i < n; ++i) ASSERT_NEAR(x[i], y[i], tol) << t.name << "[" << i << "]";
  }
}

TEST(TensorParallel, CheckpointSavedWithTwoLoadsWithOneAndFour) {
  fs::path root = fs::temp_directory_path() / ("ptrain-tp-ckpt-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto single_spec = tp_spec(1, 1, 3, true);
  single_spec.checkpoint.dir = (root / "single").string();
  testing::run_ranks(single_spec);
  auto spec = tp_spec(2, 1, 3, true);
  spec.checkpoint.dir = (root / "tp2").string();
  testing::run_ranks(spec);
  // Gathered into the single-process file: GPT-2 names and full shapes, model and momentum.
  for (std::string file : {"step-3.safetensors", "step-3.optim.safetensors"})
    expect_same_tensors((root / "single" / file).string(), (root / "tp2" / file).string(), 1e-5);

  auto straight = testing::run_ranks(tp_spec(1, 1, 5, true));
  for (int t : {1, 4}) {
    auto resume = tp_spec(t, 1, 5, true);
    resume.checkpoint.dir = (root / ("resume" + std::to_string(t))).string();
    resume.checkpoint.resume = (root / "tp2").string();
    auto runs = testing::run_ranks(resume);
    EXPECT_EQ(runs[0].result.first_step, 3) << "t=" << t;
    expect_same_curve(straight[0].result, runs[0].result, 1e-4, 3);
  }
  fs::remove_all(root);
}

TEST(TensorParallel, CheckpointOfATensorAndPipelineMeshIsTheSingleProcessFile) {
  fs::path root = fs::temp_directory_path() / ("ptrain-tp-pp-ckpt-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto single_spec = tp_spec(1, 1, 3, true);
  single_spec.checkpoint.dir = (root / "single").string();
  testing::run_ranks(single_spec);
  auto spec = tp_spec(2, 1, 3, true);
  spec.parallel.pipeline = 2;
  spec.parallel.microbatches = 2;
  spec.checkpoint.dir = (root / "tp2pp2").string();
  testing::run_ranks(spec);
  for (std::string file : {"step-3.safetensors", "step-3.optim.safetensors"})
    expect_same_tensors((root / "single" / file).string(), (root / "tp2pp2" / file).string(), 1e-5);
  fs::remove_all(root);
}

}  // namespace
}  // namespace ptrain
