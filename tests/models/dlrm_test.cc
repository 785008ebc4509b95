// The dlrm family: its spec keys and bad input, the model's gradients against finite
// differences, and 2 data-parallel workers equal to one process over 20 SGD steps.
#include "dlrm/dlrm.h"

#include <gtest/gtest.h>

#include <cmath>

#include "ptrain/core/error.h"
#include "ptrain/models/registry.h"
#include "ptrain/spec/plan.h"
#include "ptrain/spec/spec.h"
#include "support/rank_threads.h"

namespace ptrain::models {
namespace {

using spec::JobSpec;

const char* kBase =
    "model: {type: dlrm, dense: 4, sparse: 3, table_rows: 50, embedding_dim: 4,\n"
    "        bottom_mlp: [8, 4], top_mlp: [8, 1]}\n"
    "data: {type: synthetic-criteo, batch_size: 16, eval_fraction: 0.1}\n"
    "nodes: {device: cpu, threads_per_proc: 1}\n"
    "train: {steps: 20, seed: 3, eval_every: 20, optimizer: {type: sgd, lr: 0.5}}\n"
    "checkpoint: {resume: never}\n";

JobSpec load(const std::string& extra = "") {
  return spec::load_string(std::string(kBase) + extra, "dlrm.yaml");
}

TEST(DlrmFamily, LoadsWithDlrmNamesAndCountsParameters) {
  JobSpec s = load();
  auto model = family_of(s).make_model(s, {});
  EXPECT_GE(model->find_param("emb_l.2.weight"), 0);
  EXPECT_GE(model->find_param("bot_l.2.bias"), 0);
  EXPECT_GE(model->find_param("top_l.2.weight"), 0);
  const auto& t = model->params()[size_t(model->find_param("emb_l.0.weight"))];
  EXPECT_EQ(t.shape, (std::vector<int64_t>{50, 4}));
  EXPECT_FALSE(t.decay);
  const auto& w = model->params()[size_t(model->find_param("bot_l.0.weight"))];
  EXPECT_EQ(w.shape, (std::vector<int64_t>{8, 4}));  // [out, in]
  // Interaction width 4 + 4*3/2 = 10 feeds the top MLP.
  const auto& top = model->params()[size_t(model->find_param("top_l.0.weight"))];
  EXPECT_EQ(top.shape, (std::vector<int64_t>{8, 10}));
  EXPECT_EQ(spec::make_plan(s).parameters, int64_t(model->num_params()));
  EXPECT_EQ(spec::load_string(spec::to_yaml(s), "back.yaml"), s);
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

TEST(DlrmFamily, BottomMlpNotEndingAtEmbeddingDimIsAConfigError) {
  expect_config_error(
      "model: {type: dlrm, embedding_dim: 16, bottom_mlp: [64, 8]}\n"
      "data: {type: synthetic-criteo}\n",
      "model.bottom_mlp");
}

TEST(DlrmFamily, TopMlpNotEndingAtOneIsAConfigError) {
  expect_config_error(
      "model: {type: dlrm, top_mlp: [64, 2]}\n"
      "data: {type: synthetic-criteo}\n",
      "model.top_mlp");
}

TEST(DlrmFamily, CudaIsRefusedAtValidateTime) {
  expect_config_error(
      "model: {type: dlrm}\n"
      "data: {type: synthetic-criteo}\n"
      "nodes: {device: cuda}\n",
      "nodes.device");
}

TEST(DlrmFamily, TablesTooBigForOneWorkerAreAConfigError) {
  expect_config_error(
      "model: {type: dlrm, sparse: 26, table_rows: 100000000, embedding_dim: 16}\n"
      "data: {type: synthetic-criteo}\n",
      "model.table_rows");
}

// Loss of the model with parameter element i replaced, in double around float params.
TEST(DlrmModel, GradientsMatchFiniteDifferences) {
  JobSpec s = load();
  auto model = family_of(s).make_model(s, {});
  model->init(7);
  auto data = family_of(s).make_data(s);
  HostBatch hb(family_of(s).batch_schema(s, 16), 16, 1);
  data->fill(0, 0, 1, 0, 1, data::Split::kTrain, hb);
  auto acts = model->make_activations(16, 1);
  model->zero_grad();
  model->forward(hb.view(), *acts);
  model->backward(*acts, 1.0f / 16);
  std::vector<float> grad(model->grad_data(), model->grad_data() + model->num_params());
  float* p = model->param_data();
  // Every parameter tensor: its first element and the element with the largest gradient.
  int checked = 0;
  for (const auto& info : model->params()) {
    size_t best = info.offset;
    for (size_t j = info.offset; j < info.offset + info.numel; ++j)
      if (std::fabs(grad[j]) > std::fabs(grad[best])) best = j;
    for (size_t j : {info.offset, best}) {
      const float keep = p[j], h = 1e-2f;
      p[j] = keep + h;
      const double up = model->forward(hb.view(), *acts) / 16;
      p[j] = keep - h;
      const double down = model->forward(hb.view(), *acts) / 16;
      p[j] = keep;
      const double num = (up - down) / (2 * double(h));
      EXPECT_NEAR(grad[j], num, 2e-3 + 2e-2 * std::fabs(num)) << info.name << " element " << j;
      ++checked;
    }
  }
  EXPECT_EQ(checked, int(2 * model->params().size()));
}

TEST(DlrmTraining, TwoDataParallelWorkersEqualOneProcessOver20Steps) {
  JobSpec one = load();
  JobSpec two = load();
  two.parallel.data = 2;
  two.parallel.data_auto = false;
  auto a = ptrain::testing::run_ranks(one)[0].result.history;
  auto b = ptrain::testing::run_ranks(two)[0].result.history;
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(b[i].loss, a[i].loss, 1e-5 * std::abs(a[i].loss)) << "step " << i + 1;
  ASSERT_EQ(a.back().eval_metrics.size(), 1u);
  EXPECT_EQ(a.back().eval_metrics[0].first, "eval_auc");
  EXPECT_NEAR(b.back().eval_metrics[0].second, a.back().eval_metrics[0].second, 1e-9);
  EXPECT_LT(a.back().loss, a.front().loss);  // it learns
}

}  // namespace
}  // namespace ptrain::models
