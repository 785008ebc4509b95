// Every layer's float forward/backward (through the CPU op table) against a double-precision
// reference: forward values directly, gradients by central finite differences of
// loss = sum(out * R) for a fixed random R.
#include <gtest/gtest.h>

#include <cmath>

#include "grad_check.h"
#include "ptrain/nn/layers.h"
#include "ptrain/tensor/ops.h"

using namespace ptrain;
using namespace ptrain::nn::testing;
using tensor::cpu_ops;

namespace {

double dot(const std::vector<double>& a, const std::vector<float>& r) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * r[i];
  return s;
}

void expect_forward_close(const std::vector<float>& got, const std::vector<double>& ref,
                          double tol) {
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], ref[i], tol) << "element " << i;
}

// --- double references ---
std::vector<double> ref_conv1d(const std::vector<double>& x, const std::vector<double>& w,
                               const std::vector<double>& b, int N, int IC, int OC) {
  std::vector<double> y(N * OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = b[o];
      for (int i = 0; i < IC; ++i) s += x[n * IC + i] * w[i * OC + o];
      y[n * OC + o] = s;
    }
  return y;
}

std::vector<double> ref_linear(const std::vector<double>& x, const std::vector<double>& w,
                               const std::vector<double>& b, int N, int IC, int OC) {
  std::vector<double> y(N * OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = b[o];
      for (int i = 0; i < IC; ++i) s += x[n * IC + i] * w[o * IC + i];
      y[n * OC + o] = s;
    }
  return y;
}

std::vector<double> ref_layernorm(const std::vector<double>& x, const std::vector<double>& w,
                                  const std::vector<double>& b, int N, int C) {
  std::vector<double> y(N * C);
  for (int n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += x[n * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[n * C + c] - m) * (x[n * C + c] - m);
    v /= C;
    double s = 1 / std::sqrt(v + 1e-5);
    for (int c = 0; c < C; ++c) y[n * C + c] = (x[n * C + c] - m) * s * w[c] + b[c];
  }
  return y;
}

double ref_gelu(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

std::vector<double> ref_attention(const std::vector<double>& qkv, int B, int T, int C, int NH) {
  const int hd = C / NH;
  std::vector<double> out(B * T * C);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < T; ++i) {
        std::vector<double> s(i + 1);
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= i; ++j) {
          double d = 0;
          for (int c = 0; c < hd; ++c)
            d += qkv[(b * T + i) * 3 * C + h * hd + c] * qkv[(b * T + j) * 3 * C + C + h * hd + c];
          s[j] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[j]);
        }
        for (double& v : s) sum += (v = std::exp(v - mx));
        for (int c = 0; c < hd; ++c) {
          double o = 0;
          for (int j = 0; j <= i; ++j)
            o += s[j] / sum * qkv[(b * T + j) * 3 * C + 2 * C + h * hd + c];
          out[(b * T + i) * C + h * hd + c] = o;
        }
      }
  return out;
}

}  // namespace

TEST(LayerGrad, Conv1dMatchesFiniteDifferences) {
  const int N = 3, IC = 4, OC = 5;
  auto x = randn(N * IC, 1), w = randn(IC * OC, 2), b = randn(OC, 3), r = randn(N * OC, 4);
  std::vector<float> y(N * OC), dx(N * IC), dw(IC * OC, 0.0f), db(OC, 0.0f);
  nn::conv1d_forward(cpu_ops(), y.data(), x.data(), w.data(), b.data(), N, IC, OC);
  expect_forward_close(y, ref_conv1d(to_double(x), to_double(w), to_double(b), N, IC, OC), 1e-5);
  nn::conv1d_backward(cpu_ops(), dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), N,
                      IC, OC);
  auto loss = [&](const std::vector<double>& xx, const std::vector<double>& ww,
                  const std::vector<double>& bb) {
    return dot(ref_conv1d(xx, ww, bb, N, IC, OC), r);
  };
  auto X = to_double(x), W = to_double(w), Bv = to_double(b);
  expect_grad_close(dx, fd_grad([&](auto& v) { return loss(v, W, Bv); }, X), 1e-5, 1e-4, "dx");
  expect_grad_close(dw, fd_grad([&](auto& v) { return loss(X, v, Bv); }, W), 1e-5, 1e-4, "dw");
  expect_grad_close(db, fd_grad([&](auto& v) { return loss(X, W, v); }, Bv), 1e-5, 1e-4, "db");
}

TEST(LayerGrad, LinearMatchesFiniteDifferences) {
  const int N = 3, IC = 4, OC = 5;
  auto x = randn(N * IC, 5), w = randn(OC * IC, 6), b = randn(OC, 7), r = randn(N * OC, 8);
  std::vector<float> y(N * OC), dx(N * IC), dw(OC * IC, 0.0f), db(OC, 0.0f);
  nn::linear_forward(cpu_ops(), y.data(), x.data(), w.data(), b.data(), N, IC, OC);
  expect_forward_close(y, ref_linear(to_double(x), to_double(w), to_double(b), N, IC, OC), 1e-5);
  nn::linear_backward(cpu_ops(), dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), N,
                      IC, OC);
  auto loss = [&](const std::vector<double>& xx, const std::vector<double>& ww,
                  const std::vector<double>& bb) {
    return dot(ref_linear(xx, ww, bb, N, IC, OC), r);
  };
  auto X = to_double(x), W = to_double(w), Bv = to_double(b);
  expect_grad_close(dx, fd_grad([&](auto& v) { return loss(v, W, Bv); }, X), 1e-5, 1e-4, "dx");
  expect_grad_close(dw, fd_grad([&](auto& v) { return loss(X, v, Bv); }, W), 1e-5, 1e-4, "dw");
  expect_grad_close(db, fd_grad([&](auto& v) { return loss(X, W, v); }, Bv), 1e-5, 1e-4, "db");
}

TEST(LayerGrad, LayerNormMatchesFiniteDifferences) {
  const int N = 3, C = 7;
  auto x = randn(N * C, 9, 2.0f), w = randn(C, 10), b = randn(C, 11), r = randn(N * C, 12);
  std::vector<float> y(N * C), mean(N), rstd(N), dx(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
  cpu_ops().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                              C);
  expect_forward_close(y, ref_layernorm(to_double(x), to_double(w), to_double(b), N, C), 1e-5);
  cpu_ops().layernorm_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(),
                               mean.data(), rstd.data(), N, C);
  auto X = to_double(x), W = to_double(w), Bv = to_double(b);
  auto loss = [&](auto& xx, auto& ww, auto& bb) { return dot(ref_layernorm(xx, ww, bb, N, C), r); };
  expect_grad_close(dx, fd_grad([&](auto& v) { return loss(v, W, Bv); }, X), 1e-4, 1e-3, "dx");
  expect_grad_close(dw, fd_grad([&](auto& v) { return loss(X, v, Bv); }, W), 1e-4, 1e-3, "dw");
  expect_grad_close(db, fd_grad([&](auto& v) { return loss(X, W, v); }, Bv), 1e-4, 1e-3, "db");
}

TEST(LayerGrad, GeluMatchesFiniteDifferences) {
  const int n = 64;
  auto x = randn(n, 13, 2.0f), r = randn(n, 14);
  std::vector<float> y(n), dx(n, 0.0f);
  cpu_ops().gelu_forward(y.data(), x.data(), n);
  cpu_ops().gelu_backward(dx.data(), x.data(), r.data(), n);
  auto loss = [&](const std::vector<double>& xx) {
    double s = 0;
    for (int i = 0; i < n; ++i) s += ref_gelu(xx[i]) * r[i];
    return s;
  };
  std::vector<double> yref(n);
  for (int i = 0; i < n; ++i) yref[i] = ref_gelu(x[i]);
  expect_forward_close(y, yref, 1e-6);
  expect_grad_close(dx, fd_grad(loss, to_double(x)), 1e-5, 1e-4, "dx");
}

TEST(LayerGrad, ReluMatchesFiniteDifferences) {
  const int n = 32;
  auto x = randn(n, 15), r = randn(n, 16);
  for (auto& v : x) v += v > 0 ? 0.1f : -0.1f;  // keep away from the kink
  std::vector<float> y(n), dx(n, 0.0f);
  cpu_ops().relu_forward(y.data(), x.data(), n);
  cpu_ops().relu_backward(dx.data(), x.data(), r.data(), n);
  auto loss = [&](const std::vector<double>& xx) {
    double s = 0;
    for (int i = 0; i < n; ++i) s += std::max(0.0, xx[i]) * r[i];
    return s;
  };
  for (int i = 0; i < n; ++i) EXPECT_EQ(y[i], std::max(0.0f, x[i]));
  expect_grad_close(dx, fd_grad(loss, to_double(x)), 1e-6, 1e-5, "dx");
}

TEST(LayerGrad, CausalAttentionMatchesFiniteDifferences) {
  const int B = 2, T = 5, C = 8, NH = 2;
  auto qkv = randn(B * T * 3 * C, 17), r = randn(B * T * C, 18);
  std::vector<float> out(B * T * C), lse(B * NH * T), dqkv(qkv.size(), 0.0f);
  cpu_ops().attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  expect_forward_close(out, ref_attention(to_double(qkv), B, T, C, NH), 1e-5);
  cpu_ops().attention_backward(dqkv.data(), r.data(), qkv.data(), out.data(), lse.data(), B, T, C,
                               NH);
  auto loss = [&](const std::vector<double>& v) { return dot(ref_attention(v, B, T, C, NH), r); };
  expect_grad_close(dqkv, fd_grad(loss, to_double(qkv)), 1e-5, 1e-3, "dqkv");
}

TEST(LayerGrad, CausalAttentionAcrossRowBlocksMatchesFiniteDifferences) {
  const int B = 1, T = 67, C = 4, NH = 1;  // more rows than one CPU row block
  auto qkv = randn(B * T * 3 * C, 19), r = randn(B * T * C, 20);
  std::vector<float> out(B * T * C), lse(B * NH * T), dqkv(qkv.size(), 0.0f);
  cpu_ops().attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  cpu_ops().attention_backward(dqkv.data(), r.data(), qkv.data(), out.data(), lse.data(), B, T, C,
                               NH);
  auto loss = [&](const std::vector<double>& v) { return dot(ref_attention(v, B, T, C, NH), r); };
  expect_grad_close(dqkv, fd_grad(loss, to_double(qkv)), 1e-5, 1e-3, "dqkv");
}

TEST(LayerGrad, EmbeddingMatchesFiniteDifferences) {
  const int B = 2, T = 3, C = 4, V = 5;
  auto wte = randn(V * C, 21), wpe = randn(T * C, 22), r = randn(B * T * C, 23);
  std::vector<int32_t> tok = {1, 4, 1, 0, 2, 1};
  std::vector<float> out(B * T * C), dwte(V * C, 0.0f), dwpe(T * C, 0.0f);
  cpu_ops().embedding_forward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
  cpu_ops().embedding_backward(dwte.data(), dwpe.data(), r.data(), tok.data(), B, T, C);
  auto ref = [&](const std::vector<double>& e, const std::vector<double>& p) {
    std::vector<double> y(B * T * C);
    for (int n = 0; n < B * T; ++n)
      for (int c = 0; c < C; ++c) y[n * C + c] = e[tok[n] * C + c] + p[(n % T) * C + c];
    return y;
  };
  auto E = to_double(wte), P = to_double(wpe);
  expect_forward_close(out, ref(E, P), 1e-6);
  expect_grad_close(dwte, fd_grad([&](auto& v) { return dot(ref(v, P), r); }, E), 1e-6, 1e-5,
                    "dwte");
  expect_grad_close(dwpe, fd_grad([&](auto& v) { return dot(ref(E, v), r); }, P), 1e-6, 1e-5,
                    "dwpe");
}

TEST(LayerGrad, CrossEntropyMatchesFiniteDifferences) {
  const int N = 4, V = 6;
  const float dloss = 0.25f;
  auto logits = randn(N * V, 24, 2.0f);
  std::vector<int32_t> targets = {0, 5, -1, 2};
  std::vector<float> losses(N), lse(N), dlogits(N * V);
  cpu_ops().crossentropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V);
  cpu_ops().crossentropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), dloss,
                                  N, V);
  auto loss = [&](const std::vector<double>& z) {
    double total = 0;
    for (int n = 0; n < N; ++n) {
      if (targets[n] < 0) continue;
      double s = 0;
      for (int v = 0; v < V; ++v) s += std::exp(z[n * V + v]);
      total += std::log(s) - z[n * V + targets[n]];
    }
    return dloss * total;
  };
  expect_grad_close(dlogits, fd_grad(loss, to_double(logits)), 1e-6, 1e-4, "dlogits");
}

TEST(LayerGrad, BackwardAccumulatesIntoExistingGradients) {
  const int N = 2, C = 4;
  auto x = randn(N * C, 25), w = randn(C, 26), b = randn(C, 27), r = randn(N * C, 28);
  std::vector<float> y(N * C), mean(N), rstd(N), dx1(N * C, 0.0f), dw1(C, 0.0f), db1(C, 0.0f);
  cpu_ops().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                              C);
  cpu_ops().layernorm_backward(dx1.data(), dw1.data(), db1.data(), r.data(), x.data(), w.data(),
                               mean.data(), rstd.data(), N, C);
  auto dx2 = dx1, dw2 = dw1, db2 = db1;
  cpu_ops().layernorm_backward(dx2.data(), dw2.data(), db2.data(), r.data(), x.data(), w.data(),
                               mean.data(), rstd.data(), N, C);
  for (int i = 0; i < N * C; ++i) EXPECT_FLOAT_EQ(dx2[i], 2 * dx1[i]);
  for (int i = 0; i < C; ++i) EXPECT_FLOAT_EQ(dw2[i], 2 * dw1[i]);
}
