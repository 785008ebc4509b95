// The DLRM host kernels against naive references and finite differences (in double): the
// embedding lookup and its scatter-add backward, the dot interaction, BCE with logits.
#include "dlrm/dlrm_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "ptrain/core/error.h"

namespace ptrain::nn::dlrm {
namespace {

std::vector<double> randn(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d;
  std::vector<double> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

// Central differences of a scalar function of x, element by element.
std::vector<double> numeric_grad(std::vector<double> x,
                                 const std::function<double(const std::vector<double>&)>& f) {
  std::vector<double> g(x.size());
  const double h = 1e-6;
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = f(x);
    x[i] = keep - h;
    const double down = f(x);
    x[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

TEST(DlrmOps, EmbeddingLookupCopiesTheIndexedRows) {
  const int rows = 5, D = 3, B = 4;
  auto table = randn(rows * D, 1);
  std::vector<int32_t> idx{4, 0, 4, 2};
  std::vector<double> out(B * D);
  embedding_lookup(out.data(), table.data(), idx.data(), B, rows, D);
  for (int b = 0; b < B; ++b)
    for (int d = 0; d < D; ++d) EXPECT_EQ(out[b * D + d], table[idx[b] * D + d]);
}

TEST(DlrmOps, EmbeddingIndexOutsideTheTableIsRefused) {
  std::vector<float> table(6), out(2);
  std::vector<int32_t> idx{3};
  EXPECT_THROW(embedding_lookup(out.data(), table.data(), idx.data(), 1, 3, 2), Error);
}

TEST(DlrmOps, EmbeddingBackwardMatchesFiniteDifferencesWithRepeatedIndices) {
  const int rows = 5, D = 3, B = 4;
  std::vector<int32_t> idx{4, 0, 4, 2};
  auto w = randn(B * D, 2);  // loss = sum(w * lookup(table))
  auto f = [&](const std::vector<double>& table) {
    std::vector<double> out(B * D);
    embedding_lookup(out.data(), table.data(), idx.data(), B, rows, D);
    double s = 0;
    for (int i = 0; i < B * D; ++i) s += w[i] * out[i];
    return s;
  };
  auto table = randn(rows * D, 3);
  std::vector<double> grad(rows * D, 0.0);
  embedding_backward(grad.data(), w.data(), idx.data(), B, rows, D);
  auto num = numeric_grad(table, f);
  for (int i = 0; i < rows * D; ++i) EXPECT_NEAR(grad[i], num[i], 1e-7) << i;
  for (int d = 0; d < D; ++d) {  // rows 1 and 3 were not looked up
    EXPECT_EQ(grad[1 * D + d], 0.0);
    EXPECT_EQ(grad[3 * D + d], 0.0);
  }
}

TEST(DlrmOps, DotInteractionIsTheBottomOutputThenTheLowerTriangleOfVVt) {
  const int B = 2, F = 4, D = 3, W = interaction_width(F, D);
  ASSERT_EQ(W, 3 + 6);
  auto v = randn(B * F * D, 4);
  std::vector<double> z(B * W);
  dot_interaction_forward(z.data(), v.data(), B, F, D);
  for (int b = 0; b < B; ++b) {
    const double* vb = v.data() + b * F * D;
    for (int d = 0; d < D; ++d) EXPECT_EQ(z[b * W + d], vb[d]);
    // The naive reference: the Gram matrix, then (i, j) with j < i row by row.
    std::vector<double> gram(F * F, 0.0);
    for (int i = 0; i < F; ++i)
      for (int j = 0; j < F; ++j)
        for (int d = 0; d < D; ++d) gram[i * F + j] += vb[i * D + d] * vb[j * D + d];
    int at = D;
    for (int i = 1; i < F; ++i)
      for (int j = 0; j < i; ++j) EXPECT_NEAR(z[b * W + at++], gram[i * F + j], 1e-12);
  }
}

TEST(DlrmOps, DotInteractionBackwardMatchesFiniteDifferences) {
  const int B = 2, F = 4, D = 3, W = interaction_width(F, D);
  auto w = randn(B * W, 5);
  auto f = [&](const std::vector<double>& v) {
    std::vector<double> z(B * W);
    dot_interaction_forward(z.data(), v.data(), B, F, D);
    double s = 0;
    for (int i = 0; i < B * W; ++i) s += w[i] * z[i];
    return s;
  };
  auto v = randn(B * F * D, 6);
  std::vector<double> dv(B * F * D);
  dot_interaction_backward(dv.data(), w.data(), v.data(), B, F, D);
  auto num = numeric_grad(v, f);
  for (int i = 0; i < B * F * D; ++i) EXPECT_NEAR(dv[i], num[i], 1e-7) << i;
}

TEST(DlrmOps, BceWithLogitsMatchesTheNaiveFormulaAndIsStableForLargeLogits) {
  std::vector<double> x{-3.0, -0.5, 0.0, 0.7, 4.0, 60.0, -60.0};
  std::vector<float> y{0, 1, 1, 0, 1, 0, 1};
  std::vector<double> loss(x.size());
  double sum = bce_with_logits_forward(loss.data(), x.data(), y.data(), int(x.size()));
  double want_sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    double want = x[i] > 0 ? (1 - y[i]) * x[i] + std::log1p(std::exp(-x[i]))
                           : -y[i] * x[i] + std::log1p(std::exp(x[i]));
    if (std::fabs(x[i]) < 20) {  // the textbook form where it does not overflow
      double s = 1 / (1 + std::exp(-x[i]));
      EXPECT_NEAR(loss[i], -(y[i] * std::log(s) + (1 - y[i]) * std::log(1 - s)), 1e-12);
    }
    EXPECT_NEAR(loss[i], want, 1e-12);
    EXPECT_TRUE(std::isfinite(loss[i]));
    want_sum += loss[i];
  }
  EXPECT_NEAR(sum, want_sum, 1e-12);
}

TEST(DlrmOps, BceWithLogitsBackwardMatchesFiniteDifferences) {
  std::vector<double> x{-3.0, -0.5, 0.1, 0.7, 4.0};
  std::vector<float> y{0, 1, 1, 0, 1};
  const int B = int(x.size());
  auto f = [&](const std::vector<double>& xs) {
    std::vector<double> loss(B);
    return 0.25 * bce_with_logits_forward(loss.data(), xs.data(), y.data(), B);
  };
  std::vector<double> dx(B);
  bce_with_logits_backward(dx.data(), x.data(), y.data(), 0.25, B);
  auto num = numeric_grad(x, f);
  for (int i = 0; i < B; ++i) EXPECT_NEAR(dx[i], num[i], 1e-7) << i;
}

}  // namespace
}  // namespace ptrain::nn::dlrm
