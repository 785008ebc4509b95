// The CPU op table against naive double-precision references.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "ptrain/tensor/ops.h"
#include "ptrain/tensor/tensor.h"

using namespace ptrain::tensor;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

const Ops& cpu() {
  return cpu_ops();
}

}  // namespace

class GemmTransposes : public ::testing::TestWithParam<std::pair<bool, bool>> {};

TEST_P(GemmTransposes, MatchesNaiveWithAlphaBetaAndLeadingDims) {
  auto [ta, tb] = GetParam();
  const int M = 5, N = 7, K = 3, pad = 2;
  // Stored shapes: A is MxK (or KxM when transposed), B is KxN (or NxK).
  int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
  int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
  auto A = randn(a_rows * lda, 1), B = randn(b_rows * ldb, 2), C = randn(M * ldc, 3);
  auto expect = C;
  const float alpha = 0.7f, beta = -1.3f;
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int k = 0; k < K; ++k) {
        double a = ta ? A[k * lda + i] : A[i * lda + k];
        double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        s += a * b;
      }
      expect[i * ldc + j] = static_cast<float>(alpha * s + beta * C[i * ldc + j]);
    }
  }
  cpu().gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) EXPECT_NEAR(C[i * ldc + j], expect[i * ldc + j], 1e-5);
    for (int j = N; j < ldc; ++j) EXPECT_EQ(C[i * ldc + j], expect[i * ldc + j]) << "padding";
  }
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, GemmTransposes,
                         ::testing::Values(std::pair{false, false}, std::pair{false, true},
                                           std::pair{true, false}, std::pair{true, true}));

TEST(CpuOps, StridedBatchedGemmRunsEachBatch) {
  const int M = 3, N = 4, K = 2, count = 3;
  auto A = randn(count * M * K, 4), B = randn(count * K * N, 5);
  std::vector<float> C(count * M * N, 0.0f);
  cpu().gemm_strided_batched(false, false, M, N, K, 1.0f, A.data(), K, M * K, B.data(), N, K * N,
                             0.0f, C.data(), N, M * N, count);
  for (int c = 0; c < count; ++c) {
    for (int i = 0; i < M; ++i) {
      for (int j = 0; j < N; ++j) {
        double s = 0;
        for (int k = 0; k < K; ++k) s += A[c * M * K + i * K + k] * B[c * K * N + k * N + j];
        EXPECT_NEAR(C[c * M * N + i * N + j], s, 1e-5);
      }
    }
  }
}

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = float_to_bf16(x[i]);
  return out;
}

TEST(CpuOps, Bf16ConversionsMatchTheScalarHelpers) {
  auto x = randn(1000, 11, 100.0f);
  x[0] = std::nanf("");
  x[1] = 1.0f + std::ldexp(1.0f, -8);  // a tie: rounds to even (1.0)
  std::vector<uint16_t> h(x.size());
  cpu().f32_to_bf16(h.data(), x.data(), x.size());
  std::vector<float> back(x.size());
  cpu().bf16_to_f32(back.data(), h.data(), h.size());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(h[i], float_to_bf16(x[i])) << i;
    if (i == 0) {
      EXPECT_TRUE(std::isnan(back[i]));
    } else {
      EXPECT_EQ(back[i], bf16_to_float(h[i])) << i;
    }
  }
  EXPECT_EQ(back[1], 1.0f);
}

TEST(CpuOps, Bf16GemmIsTheFp32GemmOfTheRoundedInputs) {
  const int M = 5, N = 7, K = 3, pad = 2;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "trans_a " << ta << " trans_b " << tb);
      int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
      int lda = a_cols + pad, ldb = b_cols + pad;
      auto A = to_bf16(randn(a_rows * lda, 12)), B = to_bf16(randn(b_rows * ldb, 13));
      auto C = randn(M * N, 14);
      std::vector<float> expect(M * N);
      for (int i = 0; i < M; ++i) {
        for (int j = 0; j < N; ++j) {
          double sum = 0;
          for (int k = 0; k < K; ++k) {
            double a = bf16_to_float(ta ? A[k * lda + i] : A[i * lda + k]);
            double b = bf16_to_float(tb ? B[j * ldb + k] : B[k * ldb + j]);
            sum += a * b;
          }
          expect[i * N + j] = static_cast<float>(0.5 * sum + 2.0 * C[i * N + j]);
        }
      }
      cpu().gemm_bf16(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 2.0f, C.data(), N);
      for (int i = 0; i < M * N; ++i) EXPECT_NEAR(C[i], expect[i], 1e-5) << i;
    }
  }
}

TEST(CpuOps, Bf16StridedBatchedGemmRunsEachBatch) {
  const int M = 3, N = 4, K = 2, count = 3;
  auto A = to_bf16(randn(count * M * K, 15)), B = to_bf16(randn(count * K * N, 16));
  std::vector<float> C(count * M * N, 1.0f);
  cpu().gemm_bf16_strided_batched(false, false, M, N, K, 1.0f, A.data(), K, M * K, B.data(), N,
                                  K * N, 1.0f, C.data(), N, M * N, count);
  for (int c = 0; c < count; ++c) {
    for (int i = 0; i < M; ++i) {
      for (int j = 0; j < N; ++j) {
        double s = 1.0;
        for (int k = 0; k < K; ++k)
          s += double(bf16_to_float(A[c * M * K + i * K + k])) *
               bf16_to_float(B[c * K * N + k * N + j]);
        EXPECT_NEAR(C[c * M * N + i * N + j], s, 1e-5);
      }
    }
  }
}

TEST(CpuOps, ElementwiseOps) {
  auto a = randn(37, 6), b = randn(37, 7);
  std::vector<float> out(37);
  cpu().add(out.data(), a.data(), b.data(), 37);
  for (int i = 0; i < 37; ++i) EXPECT_EQ(out[i], a[i] + b[i]);
  cpu().accumulate(out.data(), a.data(), 37);
  for (int i = 0; i < 37; ++i) EXPECT_FLOAT_EQ(out[i], (a[i] + b[i]) + a[i]);
  cpu().scale(out.data(), 0.5f, 37);
  cpu().fill(b.data(), 3.0f, 37);
  EXPECT_EQ(b[36], 3.0f);
  double ss = 0;
  for (float x : a) ss += static_cast<double>(x) * x;
  EXPECT_NEAR(cpu().sum_squares(a.data(), 37), ss, 1e-9 * ss);
}

TEST(CpuOps, BiasAddAndBackward) {
  const int N = 3, OC = 5;
  auto x = randn(N * OC, 8), bias = randn(OC, 9);
  auto y = x;
  cpu().bias_add(y.data(), bias.data(), N, OC);
  EXPECT_EQ(y[2 * OC + 4], x[2 * OC + 4] + bias[4]);
  std::vector<float> db(OC, 1.0f);
  cpu().bias_backward(db.data(), x.data(), N, OC);
  EXPECT_NEAR(db[1], 1.0f + x[1] + x[OC + 1] + x[2 * OC + 1], 1e-6);
}

TEST(CpuOps, GeluMatchesTanhFormula) {
  std::vector<float> x(201), y(201);
  for (int i = 0; i < 201; ++i) x[i] = -10.0f + 0.1f * i;
  cpu().gelu_forward(y.data(), x.data(), x.size());
  for (int i = 0; i < 201; ++i) {
    double v = x[i];
    double ref = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    EXPECT_NEAR(y[i], ref, 1e-6 * std::max(1.0, std::abs(ref))) << "x=" << v;
  }
}

TEST(CpuOps, LayerNormNormalizesRows) {
  const int N = 4, C = 33;
  auto x = randn(N * C, 10, 3.0f), w = randn(C, 11), b = randn(C, 12);
  std::vector<float> y(N * C), mean(N), rstd(N);
  cpu().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  for (int n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += x[n * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[n * C + c] - m) * (x[n * C + c] - m);
    v /= C;
    double s = 1 / std::sqrt(v + 1e-5);
    EXPECT_NEAR(mean[n], m, 1e-5);
    EXPECT_NEAR(rstd[n], s, 1e-5 * s);
    for (int c = 0; c < C; ++c)
      EXPECT_NEAR(y[n * C + c], (x[n * C + c] - m) * s * w[c] + b[c], 1e-5);
  }
}

TEST(CpuOps, AttentionMatchesNaiveCausalSoftmax) {
  const int B = 2, T = 70, C = 12, NH = 3, hd = C / NH;  // T > one row block
  auto qkv = randn(B * T * 3 * C, 13);
  std::vector<float> out(B * T * C), lse(B * NH * T);
  cpu().attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  const double scale = 1 / std::sqrt(static_cast<double>(hd));
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      for (int i = 0; i < T; ++i) {
        const float* q = &qkv[(b * T + i) * 3 * C + h * hd];
        std::vector<double> s(i + 1);
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          const float* k = &qkv[(b * T + j) * 3 * C + C + h * hd];
          double d = 0;
          for (int c = 0; c < hd; ++c) d += static_cast<double>(q[c]) * k[c];
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (double v : s) sum += std::exp(v - mx);
        EXPECT_NEAR(lse[(b * NH + h) * T + i], mx + std::log(sum), 1e-5);
        for (int c = 0; c < hd; ++c) {
          double o = 0;
          for (int j = 0; j <= i; ++j) {
            o += std::exp(s[j] - mx) / sum * qkv[(b * T + j) * 3 * C + 2 * C + h * hd + c];
          }
          EXPECT_NEAR(out[(b * T + i) * C + h * hd + c], o, 1e-5);
        }
      }
    }
  }
}

TEST(CpuOps, CrossEntropyMatchesNaiveAndIgnoresNegativeTargets) {
  const int N = 3, V = 9;
  auto logits = randn(N * V, 14, 2.0f);
  std::vector<int32_t> targets = {4, -1, 0};
  std::vector<float> losses(N), lse(N), dlogits(N * V);
  cpu().crossentropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V);
  for (int n = 0; n < N; ++n) {
    double sum = 0;
    for (int v = 0; v < V; ++v) sum += std::exp(static_cast<double>(logits[n * V + v]));
    double ref = targets[n] < 0 ? 0.0 : std::log(sum) - logits[n * V + targets[n]];
    EXPECT_NEAR(losses[n], ref, 1e-5);
  }
  cpu().crossentropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), 0.5f, N,
                              V);
  for (int v = 0; v < V; ++v) EXPECT_EQ(dlogits[V + v], 0.0f);
  double row_sum = 0;
  for (int v = 0; v < V; ++v) row_sum += dlogits[v];
  EXPECT_NEAR(row_sum, 0.0, 1e-6);  // softmax sums to one, minus the one-hot
}

TEST(CpuOps, AdamWMatchesHandComputedSteps) {
  float p = 1.0f, g = 0.5f, m = 0.0f, v = 0.0f;
  const float lr = 0.1f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f;
  cpu().adamw_update(&p, &g, &m, &v, 1, lr, b1, b2, eps, wd, 1);
  // step 1: p = 1*(1 - 0.001) = 0.999; m = 0.05, v = 0.00025; mhat = 0.5, vhat = 0.25
  double expect = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8);
  EXPECT_NEAR(p, expect, 1e-6);
  EXPECT_NEAR(m, 0.05, 1e-7);
  EXPECT_NEAR(v, 0.00025, 1e-8);  // 1 - 0.999f is not exact in float
  float g2 = -1.0f;
  cpu().adamw_update(&p, &g2, &m, &v, 1, lr, b1, b2, eps, wd, 2);
  double m2 = 0.9 * 0.05 - 0.1, v2 = 0.999 * 0.00025 + 0.001;
  double mhat = m2 / (1 - 0.81), vhat = v2 / (1 - 0.998001);
  double expect2 = expect * (1 - 0.001) - 0.1 * mhat / (std::sqrt(vhat) + 1e-8);
  EXPECT_NEAR(p, expect2, 1e-5);
}

TEST(CpuOps, SgdMomentumAndNesterovMatchPyTorch) {
  float p = 1.0f, g = 0.5f, buf = 0.0f;
  cpu().sgd_update(&p, &g, &buf, 1, 0.1f, 0.9f, false, 0.1f, true);
  // g' = 0.5 + 0.1 = 0.6; buf = 0.6; p = 1 - 0.06
  EXPECT_NEAR(p, 0.94f, 1e-7);
  EXPECT_NEAR(buf, 0.6f, 1e-7);
  cpu().sgd_update(&p, &g, &buf, 1, 0.1f, 0.9f, false, 0.1f, false);
  // g' = 0.5 + 0.094 = 0.594; buf = 0.54 + 0.594 = 1.134; p = 0.94 - 0.1134
  EXPECT_NEAR(p, 0.8266f, 1e-6);
  float q = 1.0f, qbuf = 0.0f;
  cpu().sgd_update(&q, &g, &qbuf, 1, 0.1f, 0.9f, true, 0.0f, true);
  // nesterov: buf = 0.5; update = 0.5 + 0.45 = 0.95
  EXPECT_NEAR(q, 0.905f, 1e-7);
}

TEST(CpuOps, EmbeddingForwardAddsPositions) {
  const int B = 1, T = 2, C = 3;
  std::vector<float> wte = {0, 1, 2, 10, 11, 12}, wpe = {100, 200, 300, 400, 500, 600};
  std::vector<int32_t> tok = {1, 0};
  std::vector<float> out(6);
  cpu().embedding_forward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
  EXPECT_EQ(out, (std::vector<float>{110, 211, 312, 400, 501, 602}));
}
