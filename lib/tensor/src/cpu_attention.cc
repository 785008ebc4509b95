// Causal multi-head self-attention on the CPU. Per (batch, head) and per block of query rows,
// the scores against the keys that block may see (the causal prefix) come from one sgemm into a
// per-thread scratch, softmax runs in place, and a second sgemm applies it to V. Backward
// recomputes the probabilities from the saved log-sum-exp instead of storing [T,T] per head.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_gemm.h"
#include "cpu_math.h"
#include "cpu_ops_internal.h"
#include "cpu_parallel.h"

namespace ptrain::tensor::cpu {
namespace {

// Query rows per block: smaller blocks skip more of the masked half, larger ones run bigger GEMMs.
constexpr int kRowBlock = 64;

float* scratch(std::vector<float>& buf, size_t n) {
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

void sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
  gemm_f32(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

// Row i of s (length `len` = i + 1 visible keys): in place softmax, returns the log-sum-exp.
PTRAIN_HOT float softmax_row(float* s, int len, int width) {
  float mx = s[0];
  for (int j = 1; j < len; ++j) mx = std::max(mx, s[j]);
  float sum = 0.0f;
  for (int j = 0; j < len; ++j) {
    float e = fast_exp(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  float inv = 1.0f / sum;
  for (int j = 0; j < len; ++j) s[j] *= inv;
  for (int j = len; j < width; ++j) s[j] = 0.0f;
  return mx + std::log(sum);
}

// P from saved lse, then dS = P * (dP - D) in place of dP; P is kept for dV.
PTRAIN_HOT void softmax_grad_row(float* p, float* dp, const float* s, float lse, float d, int len,
                                 int width) {
  for (int j = 0; j < len; ++j) {
    float pj = fast_exp(s[j] - lse);
    p[j] = pj;
    dp[j] = pj * (dp[j] - d);
  }
  for (int j = len; j < width; ++j) {
    p[j] = 0.0f;
    dp[j] = 0.0f;
  }
}

// Runs fn(b, h) for every (batch, head) pair, pairs split across the CPU threads. Each pair writes
// only its own slices, so results match the serial loop; OpenBLAS runs single-threaded inside so
// the two pools do not oversubscribe the cores, and gets its thread count back afterwards.
template <typename Fn>
void for_each_head(int B, int NH, Fn fn) {
  const int64_t pairs = static_cast<int64_t>(B) * NH;
  auto body = [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) fn(static_cast<int>(p / NH), static_cast<int>(p % NH));
  };
  if (parallel_threads(pairs, 1) <= 1) {
    body(0, pairs);
    return;
  }
  const int blas_threads = openblas_get_num_threads();
  openblas_set_num_threads(1);
  try {
    parallel_for(pairs, 1, body);
  } catch (...) {
    openblas_set_num_threads(blas_threads);
    throw;
  }
  openblas_set_num_threads(blas_threads);
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
  const int hd = C / NH;
  const size_t C3 = static_cast<size_t>(3) * C;
  const float sc = 1.0f / std::sqrt(static_cast<float>(hd));
  for_each_head(B, NH, [&](int b, int h) {
    thread_local std::vector<float> s_buf;
    float* S = scratch(s_buf, static_cast<size_t>(kRowBlock) * T);  // [rows, keys]
    const float* q = qkv + static_cast<size_t>(b) * T * C3 + static_cast<size_t>(h) * hd;
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* o = out + static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * hd;
    float* l = lse + (static_cast<size_t>(b) * NH + h) * T;
    for (int i0 = 0; i0 < T; i0 += kRowBlock) {
      const int rows = std::min(kRowBlock, T - i0);
      const int keys = i0 + rows;  // causal prefix the block can see
      // S[rows, keys] = scale * Q[i0:i0+rows] . K[0:keys]^T
      sgemm(false, true, rows, keys, hd, sc, q + i0 * C3, C3, k, C3, 0.0f, S, keys);
      for (int r = 0; r < rows; ++r) {
        l[i0 + r] = softmax_row(S + static_cast<size_t>(r) * keys, i0 + r + 1, keys);
      }
      // O[i0:i0+rows] = P . V[0:keys]
      sgemm(false, false, rows, hd, keys, 1.0f, S, keys, v, C3, 0.0f, o + i0 * C, C);
    }
  });
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH) {
  const int hd = C / NH;
  const size_t C3 = static_cast<size_t>(3) * C;
  const float sc = 1.0f / std::sqrt(static_cast<float>(hd));
  for_each_head(B, NH, [&](int b, int h) {
    thread_local std::vector<float> s_buf, p_buf, dp_buf;
    float* S = scratch(s_buf, static_cast<size_t>(kRowBlock) * T);
    float* P = scratch(p_buf, static_cast<size_t>(kRowBlock) * T);
    float* dP = scratch(dp_buf, static_cast<size_t>(kRowBlock) * T);
    const size_t base = static_cast<size_t>(b) * T * C3 + static_cast<size_t>(h) * hd;
    const float* q = qkv + base;
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* dq = dqkv + base;
    float* dk = dq + C;
    float* dv = dq + 2 * C;
    const size_t obase = static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * hd;
    const float* o = out + obase;
    const float* dO = dout + obase;
    const float* l = lse + (static_cast<size_t>(b) * NH + h) * T;
    for (int i0 = 0; i0 < T; i0 += kRowBlock) {
      const int rows = std::min(kRowBlock, T - i0);
      const int keys = i0 + rows;
      sgemm(false, true, rows, keys, hd, sc, q + i0 * C3, C3, k, C3, 0.0f, S, keys);
      // dP[rows, keys] = dO[i0:i0+rows] . V[0:keys]^T
      sgemm(false, true, rows, keys, hd, 1.0f, dO + i0 * C, C, v, C3, 0.0f, dP, keys);
      for (int r = 0; r < rows; ++r) {
        const float* orow = o + (i0 + r) * static_cast<size_t>(C);
        const float* dorow = dO + (i0 + r) * static_cast<size_t>(C);
        float d = 0.0f;  // D_i = sum_j P_ij dP_ij = dO_i . O_i
        for (int c = 0; c < hd; ++c) d += dorow[c] * orow[c];
        const size_t off = static_cast<size_t>(r) * keys;
        softmax_grad_row(P + off, dP + off, S + off, l[i0 + r], d, i0 + r + 1, keys);
      }
      // dQ[i0:] += scale * dS . K ; dK[0:keys] += scale * dS^T . Q ; dV[0:keys] += P^T . dO
      sgemm(false, false, rows, hd, keys, sc, dP, keys, k, C3, 1.0f, dq + i0 * C3, C3);
      sgemm(true, false, keys, hd, rows, sc, dP, keys, q + i0 * C3, C3, 1.0f, dk, C3);
      sgemm(true, false, keys, hd, rows, 1.0f, P, keys, dO + i0 * C, C, 1.0f, dv, C3);
    }
  });
}

}  // namespace ptrain::tensor::cpu
