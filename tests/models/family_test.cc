// The registry is the only door: a family defined and registered in this test alone (linear
// regression with a non-parameter buffer) validates, plans, trains under data parallelism through
// the real trainer and checkpoints, without a line of it outside this file.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "ptrain/data/checkpoint.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/models/registry.h"
#include "ptrain/nn/init.h"
#include "ptrain/spec/plan.h"
#include "ptrain/spec/spec.h"
#include "support/ptrain_process.h"
#include "support/rank_threads.h"

namespace ptrain::models {
namespace {

using spec::JobSpec;

// y = x · w + b over `features` inputs; loss 0.5 (y - target)² per sample. The buffer `seen`
// counts the training samples this rank's model has looked at.
class LinReg : public nn::Model {
 public:
  explicit LinReg(int features) : Model(tensor::Device::kCpu), F_(features) {
    add_param("linear.weight", {1, F_});
    add_param("linear.bias", {1});
    add_buffer("seen", {1});
    allocate_params();
  }
  void init(uint64_t seed) override {
    nn::fill_uniform(param_data(), num_params(), nn::param_key(seed, "linear"), -0.5f, 0.5f);
  }
  struct Acts : nn::Activations {
    int B = 0;
    std::vector<float> x, err;
    int batch() const override { return B; }
    int seq() const override { return 1; }
    const float* output() const override { return nullptr; }
    const float* input_grad() const override { return nullptr; }
  };
  std::unique_ptr<nn::Activations> make_activations(int B, int) const override {
    auto a = std::make_unique<Acts>();
    a->B = B;
    a->x.resize(size_t(B) * F_);
    a->err.resize(size_t(B));
    return a;
  }
  double forward(const nn::Batch& batch, nn::Activations& base) override {
    auto& a = static_cast<Acts&>(base);
    const float *x = batch.f32("x"), *y = batch.f32("y"), *w = param_data();
    double loss = 0;
    for (int i = 0; i < a.B; ++i) {
      double pred = w[F_];
      for (int j = 0; j < F_; ++j) pred += double(w[j]) * x[i * F_ + j];
      a.err[i] = float(pred - y[i]);
      loss += 0.5 * double(a.err[i]) * a.err[i];
    }
    std::copy_n(x, a.x.size(), a.x.data());
    if (training()) buffer_data()[0] += float(a.B);
    return loss;
  }
  void backward(nn::Activations& base, float scale, const float*) override {
    auto& a = static_cast<Acts&>(base);
    float* g = grad_data();
    for (int i = 0; i < a.B; ++i) {
      for (int j = 0; j < F_; ++j) g[j] += scale * a.err[i] * a.x[i * F_ + j];
      g[F_] += scale * a.err[i];
    }
    grad_ready(1);
    grad_ready(0);
  }
  double train_flops(int B, int) const override { return 6.0 * B * F_; }
  void eval_sums(const nn::Activations& base, nn::EvalSums& sums) const override {
    const auto& a = static_cast<const Acts&>(base);
    for (int i = 0; i < a.B; ++i) sums["abs_err"] += std::abs(a.err[i]);
    sums["count"] += a.B;
  }

 private:
  int F_;
};

// Targets from a planted model, a pure function of (seed, sample index).
class PlantedData : public DataSet {
 public:
  PlantedData(const JobSpec& s) : F_(s.model.i("features")), batch_(s.data.batch_size) {
    seed_ = s.train.seed;
  }
  int64_t rows(int dp, int micro) const override { return batch_ / (dp * micro); }
  bool has_eval() const override { return true; }
  void fill(int64_t step, int rank, int dp, int micro, int micro_total, data::Split split,
            HostBatch& out) const override {
    const int64_t n = rows(dp, micro_total);
    const int64_t base = split == data::Split::kEval ? (int64_t{1} << 32) : 0;
    const int64_t first = base + step * batch_ + (rank * micro_total + micro) * n;
    float *x = out.f32("x"), *y = out.f32("y");
    for (int64_t i = 0; i < n; ++i) {
      double t = 0.25;
      for (int j = 0; j < F_; ++j) {
        x[i * F_ + j] = float(nn::normal01(seed_, uint64_t((first + i) * F_ + j)));
        t += (j + 1) * 0.1 * x[i * F_ + j];
      }
      y[i] = float(t);
    }
  }
  double global_targets(int64_t, data::Split) const override { return double(batch_); }

 private:
  int F_;
  int64_t batch_;
  uint64_t seed_;
};

class LinRegFamily : public Family {
 public:
  std::string type() const override { return "linreg"; }
  std::string summary() const override { return "linear regression (test only)"; }
  const std::vector<spec::ModelKey>& keys() const override {
    static const std::vector<spec::ModelKey> k = {
        spec::ModelKey::integer("features", 4, 1, 1024, "inputs per sample")};
    return k;
  }
  std::vector<std::string> data_types() const override { return {"synthetic"}; }
  void check(const JobSpec&, const spec::SpecChecker&) const override {}
  int pipeline_layers(const spec::ModelSpec&) const override { return 1; }
  std::string layers_key() const override { return "model.features"; }
  std::string layer_word() const override { return "layers"; }
  bool supports_pipeline() const override { return false; }
  int64_t parameters(const spec::ModelSpec& m) const override { return m.integer("features") + 1; }
  spec::StageFigures stage_figures(const JobSpec& s, int, int, int, int64_t, int64_t,
                                   int) const override {
    return {parameters(s.model), 1, 0};
  }
  std::vector<TensorSpec> batch_schema(const JobSpec& s, int64_t rows) const override {
    return {{"x", tensor::DType::kF32, {rows, s.model.integer("features")}},
            {"y", tensor::DType::kF32, {rows}}};
  }
  std::unique_ptr<DataSet> make_data(const JobSpec& s) const override {
    return std::make_unique<PlantedData>(s);
  }
  std::vector<std::string> eval_sum_names() const override { return {"abs_err", "count"}; }
  std::vector<std::pair<std::string, double>> eval_metrics(const nn::EvalSums& s) const override {
    return {{"eval_mae", s.at("abs_err") / s.at("count")}, {"eval_count", s.at("count")}};
  }
  std::unique_ptr<nn::Model> make_model(const JobSpec& s, const ModelPlace&) const override {
    return std::make_unique<LinReg>(s.model.i("features"));
  }
};

class TestFamily : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { register_family(std::make_shared<LinRegFamily>()); }
  JobSpec load(const std::string& extra = "") {
    return spec::load_string(
        "model: {type: linreg, features: 3}\n"
        "data: {type: synthetic, batch_size: 8, eval_fraction: 0.1}\n"
        "nodes: {device: cpu, threads_per_proc: 1}\n"
        "train: {steps: 20, seed: 5, eval_every: 10, optimizer: {type: sgd, lr: 0.1}}\n"
        "checkpoint: {resume: never}\n" +
            extra,
        "linreg.yaml");
  }
};

TEST_F(TestFamily, LoadsValidatesAndPlansThroughItsSchema) {
  JobSpec s = load();
  EXPECT_EQ(s.model.integer("features"), 3);
  spec::Plan plan = spec::make_plan(s);
  EXPECT_EQ(plan.parameters, 4);
  EXPECT_NE(spec::format_plan(plan).find("buffers 4 B"), std::string::npos)
      << spec::format_plan(plan);
  EXPECT_EQ(spec::load_string(spec::to_yaml(s), "back.yaml"), s);
  try {
    spec::load_string("model: {type: linreg, heads: 2}\n", "bad.yaml");
    FAIL() << "no throw";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.heads: not a key of model type linreg"),
              std::string::npos)
        << e.what();
    EXPECT_EQ(e.hint(), "keys are features, init_from");
  }
}

TEST_F(TestFamily, TwoDataParallelWorkersEqualOneProcess) {
  JobSpec one = load();
  JobSpec two = load();
  two.parallel.data = 2;
  two.parallel.data_auto = false;
  auto single = ptrain::testing::run_ranks(one);
  auto pair = ptrain::testing::run_ranks(two);
  const auto& a = single[0].result.history;
  const auto& b = pair[0].result.history;
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(b[i].loss, a[i].loss, 1e-5 * std::abs(a[i].loss)) << "step " << i + 1;
  EXPECT_LT(a.back().loss, 0.1 * a.front().loss);  // it learns the planted model
  // The family's eval metrics, from sums over the whole eval batches of both workers.
  ASSERT_EQ(a[9].eval_metrics.size(), 2u);
  ASSERT_EQ(b[9].eval_metrics.size(), 2u);
  EXPECT_EQ(a[9].eval_metrics[1].second, 4 * 8);  // kEvalBatches global batches of 8
  EXPECT_EQ(b[9].eval_metrics[1].second, 4 * 8);
  EXPECT_NEAR(b[9].eval_metrics[0].second, a[9].eval_metrics[0].second, 1e-5);
  EXPECT_NE(pair[0].reports[9].find("\"eval_mae\""), std::string::npos) << pair[0].reports[9];
}

TEST_F(TestFamily, CheckpointsHoldParametersAndBuffers) {
  ptrain::testing::TempDir dir;
  JobSpec s = load("");
  s.checkpoint.dir = dir.path();
  ptrain::testing::run_ranks(s);
  auto point = data::find_latest_complete(dir.path());
  ASSERT_TRUE(point.has_value());
  auto file = data::SafetensorsFile::open(point->model_path());
  ASSERT_NE(file.find("linear.weight"), nullptr);
  ASSERT_NE(file.find("seen"), nullptr);
  float seen = 0;
  file.read_f32("seen", &seen);
  EXPECT_EQ(seen, 20.0f * 8);  // 20 steps of 8 samples on the one rank (eval counts none)
  EXPECT_EQ(point->metadata.at("model"), "linreg");
  EXPECT_EQ(point->metadata.at("config"), R"({"features":3})");
}

}  // namespace
}  // namespace ptrain::models

namespace ptrain::models {
namespace {

// The mlp family's synthetic blobs: a pure function of the sample index, so two data-parallel
// workers see the global batch one process sees, and the curves agree.
TEST(MlpSynthetic, TwoDataParallelWorkersEqualOneProcess) {
  auto load = [](int data) {
    return spec::load_string(
        fmt::format("model: {{type: mlp, input: 6, hidden: [16], classes: 3}}\n"
                    "data: {{type: synthetic, batch_size: 12, eval_fraction: 0.1}}\n"
                    "nodes: {{device: cpu, threads_per_proc: 1, procs_per_node: {}}}\n"
                    "train: {{steps: 20, seed: 2, eval_every: 10}}\n"
                    "checkpoint: {{resume: never}}\n",
                    data),
        "mlp.yaml");
  };
  auto single = ptrain::testing::run_ranks(load(1));
  auto pair = ptrain::testing::run_ranks(load(2));
  const auto& a = single[0].result.history;
  const auto& b = pair[0].result.history;
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(b[i].loss, a[i].loss, 1e-5 * std::abs(a[i].loss)) << "step " << i + 1;
  EXPECT_GE(a[9].eval_loss, 0);
  EXPECT_NEAR(b[9].eval_loss, a[9].eval_loss, 1e-5 * a[9].eval_loss);
  EXPECT_LT(a.back().loss, a.front().loss);
}

}  // namespace
}  // namespace ptrain::models
