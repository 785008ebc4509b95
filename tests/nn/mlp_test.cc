// MLP: names and layout, whole-model gradients against finite differences, learning.
#include "mlp/mlp.h"

#include <gtest/gtest.h>

#include <cmath>

#include "grad_check.h"
#include "ptrain/core/error.h"

using namespace ptrain;
using namespace ptrain::nn;
using namespace ptrain::nn::testing;

namespace {
MlpConfig small_mlp() {
  MlpConfig c;
  c.input_dim = 5;
  c.hidden = {7, 6};
  c.classes = 4;
  return c;
}
}  // namespace

TEST(Mlp, ParametersUsePyTorchLinearLayout) {
  Mlp m(small_mlp());
  ASSERT_EQ(m.params().size(), 6u);
  EXPECT_EQ(m.params()[0].name, "layers.0.weight");
  EXPECT_EQ(m.params()[0].shape, (std::vector<int64_t>{7, 5}));
  EXPECT_EQ(m.params()[5].name, "layers.2.bias");
  EXPECT_EQ(m.params()[5].shape, (std::vector<int64_t>{4}));
}

TEST(Mlp, InitIsUniformWithinFanInBound) {
  Mlp m(small_mlp());
  m.init(2);
  const auto& w = m.params()[2];  // layers.1.weight, fan_in 7
  float bound = 1.0f / std::sqrt(7.0f);
  float mx = 0;
  for (size_t j = 0; j < w.numel; ++j) mx = std::max(mx, std::abs(m.param_data()[w.offset + j]));
  EXPECT_LE(mx, bound);
  EXPECT_GT(mx, 0.5f * bound);
}

TEST(Mlp, GradientsMatchFiniteDifferences) {
  Mlp m(small_mlp());
  m.init(1);
  const int B = 6;
  auto x = randn(B * 5, 3);
  std::vector<int32_t> y = {0, 3, 1, 2, -1, 3};
  Batch batch;
  batch.B = B;
  batch.add("features", tensor::DType::kF32, {B, 5}, x.data());
  batch.add("targets", tensor::DType::kI32, {B}, y.data());
  auto acts = m.make_activations(B, 1);
  m.zero_grad();
  m.forward(batch, *acts);
  m.backward(*acts, 0.5f);
  std::vector<float> analytic(m.grad_data(), m.grad_data() + m.num_params());
  std::vector<double> fd(m.num_params());
  const float eps = 1e-3f;
  float* w = m.param_data();
  for (size_t i = 0; i < m.num_params(); ++i) {
    float keep = w[i];
    w[i] = keep + eps;
    double up = m.forward(batch, *acts);
    w[i] = keep - eps;
    double down = m.forward(batch, *acts);
    w[i] = keep;
    fd[i] = 0.5 * (up - down) / (2.0 * eps);
  }
  expect_grad_close(analytic, fd, 2e-3, 1e-2, "mlp grads");
}

TEST(Mlp, SgdLearnsASeparableProblem) {
  Mlp m(small_mlp());
  m.init(4);
  const int B = 32;
  auto x = randn(B * 5, 5);
  std::vector<int32_t> y(B);
  for (int i = 0; i < B; ++i) y[i] = (x[i * 5] > 0 ? 1 : 0) + (x[i * 5 + 1] > 0 ? 2 : 0);
  Batch batch;
  batch.B = B;
  batch.add("features", tensor::DType::kF32, {B, 5}, x.data());
  batch.add("targets", tensor::DType::kI32, {B}, y.data());
  auto acts = m.make_activations(B, 1);
  std::vector<float> buf(m.num_params());
  double first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    m.zero_grad();
    double loss = m.forward(batch, *acts) / B;
    m.backward(*acts, 1.0f / B);
    tensor::cpu_ops().sgd_update(m.param_data(), m.grad_data(), buf.data(), m.num_params(), 0.1f,
                                 0.9f, false, 0.0f, step == 0);
    if (step == 0) first = loss;
    last = loss;
  }
  EXPECT_LT(last, 0.2 * first);
}

TEST(Mlp, LabelOutsideClassesIsAConfigError) {
  Mlp m(small_mlp());
  auto x = randn(5, 6);
  int32_t y = 4;
  Batch batch;
  batch.B = 1;
  batch.add("features", tensor::DType::kF32, {1, 5}, x.data());
  batch.add("targets", tensor::DType::kI32, {1}, &y);
  auto acts = m.make_activations(1, 1);
  EXPECT_THROW(m.forward(batch, *acts), ConfigError);
}
