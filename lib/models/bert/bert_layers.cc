// CPU loops for BERT's LayerNorm, erf GELU and bidirectional attention (bert_layers.h).
#include "bert/bert_layers.h"

#include <algorithm>
#include <cmath>

namespace ptrain::nn::bert {

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C, float eps) {
  for (int n = 0; n < N; ++n) {
    const float* x = inp + size_t(n) * C;
    double m = 0;
    for (int c = 0; c < C; ++c) m += x[c];
    m /= C;
    double var = 0;
    for (int c = 0; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    var /= C;
    const double r = 1.0 / std::sqrt(var + eps);
    float* y = out + size_t(n) * C;
    for (int c = 0; c < C; ++c) y[c] = float((x[c] - m) * r) * weight[c] + bias[c];
    mean[n] = float(m);
    rstd[n] = float(r);
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C) {
  for (int n = 0; n < N; ++n) {
    const float* x = inp + size_t(n) * C;
    const float* dy = dout + size_t(n) * C;
    const float m = mean[n], r = rstd[n];
    // xhat = (x - m) r; dxhat = dy * w; dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat)).
    double sum_dxhat = 0, sum_dxhat_xhat = 0;
    for (int c = 0; c < C; ++c) {
      const float xhat = (x[c] - m) * r, dxhat = dy[c] * weight[c];
      sum_dxhat += dxhat;
      sum_dxhat_xhat += double(dxhat) * xhat;
      dbias[c] += dy[c];
      dweight[c] += dy[c] * xhat;
    }
    const float a = float(sum_dxhat / C), b = float(sum_dxhat_xhat / C);
    float* dx = dinp + size_t(n) * C;
    for (int c = 0; c < C; ++c) {
      const float xhat = (x[c] - m) * r;
      dx[c] += r * (dy[c] * weight[c] - a - xhat * b);
    }
  }
}

namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
}  // namespace

void gelu_erf_forward(float* out, const float* inp, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const double x = inp[i];
    out[i] = float(0.5 * x * (1.0 + std::erf(x * kInvSqrt2)));
  }
}

void gelu_erf_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const double x = inp[i];
    const double d =
        0.5 * (1.0 + std::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * std::exp(-0.5 * x * x);
    dinp[i] += float(d * dout[i]);
  }
}

void attention_forward(const tensor::Ops& o, float* out, float* probs, const float* q,
                       const float* k, const float* v, const AttentionShape& s) {
  const int T = s.T, HD = s.HD, ld = s.ld();
  const float scale = float(1.0 / std::sqrt(double(HD)));
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h) {
      const size_t at = size_t(b) * T * ld + size_t(h) * HD;
      float* p = probs + (size_t(b) * s.NH + h) * T * T;
      // scores [T,T] = scale q_bh [T,HD] . k_bh^T
      o.gemm(false, true, T, T, HD, scale, q + at, ld, k + at, ld, 0.0f, p, T);
      for (int i = 0; i < T; ++i) {
        float* row = p + size_t(i) * T;
        const float mx = *std::max_element(row, row + T);
        double sum = 0;
        for (int j = 0; j < T; ++j) sum += (row[j] = std::exp(row[j] - mx));
        const float inv = float(1.0 / sum);
        for (int j = 0; j < T; ++j) row[j] *= inv;
      }
      // out_bh [T,HD] = probs [T,T] . v_bh
      o.gemm(false, false, T, HD, T, 1.0f, p, T, v + at, ld, 0.0f, out + at, ld);
    }
}

void attention_backward(const tensor::Ops& o, float* dq, float* dk, float* dv, float* scratch,
                        const float* dout, const float* probs, const float* q, const float* k,
                        const float* v, const AttentionShape& s) {
  const int T = s.T, HD = s.HD, ld = s.ld();
  const float scale = float(1.0 / std::sqrt(double(HD)));
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h) {
      const size_t at = size_t(b) * T * ld + size_t(h) * HD;
      const float* p = probs + (size_t(b) * s.NH + h) * T * T;
      float* ds = scratch;
      // dv_bh += p^T . dout_bh ; dp [T,T] = dout_bh . v_bh^T
      o.gemm(true, false, T, HD, T, 1.0f, p, T, dout + at, ld, 1.0f, dv + at, ld);
      o.gemm(false, true, T, T, HD, 1.0f, dout + at, ld, v + at, ld, 0.0f, ds, T);
      // Softmax backward per row: ds = p * (dp - sum_j dp p).
      for (int i = 0; i < T; ++i) {
        float* row = ds + size_t(i) * T;
        const float* pr = p + size_t(i) * T;
        double dot = 0;
        for (int j = 0; j < T; ++j) dot += double(row[j]) * pr[j];
        for (int j = 0; j < T; ++j) row[j] = pr[j] * (row[j] - float(dot));
      }
      // dq_bh += scale ds . k_bh ; dk_bh += scale ds^T . q_bh
      o.gemm(false, false, T, HD, T, scale, ds, T, k + at, ld, 1.0f, dq + at, ld);
      o.gemm(true, false, T, HD, T, scale, ds, T, q + at, ld, 1.0f, dk + at, ld);
    }
}

}  // namespace ptrain::nn::bert
