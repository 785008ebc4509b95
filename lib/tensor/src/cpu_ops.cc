// The CPU op table: oneDNN or OpenBLAS for GEMMs (cpu_gemm.h picks per shape; bf16 ones run on
// oneDNN's bf16 kernels, or widen their inputs to fp32 where the CPU has none), plain loops
// (vectorized by the compiler) for the rest. Attention lives in cpu_attention.cc. Conventions
// are those of ops.h.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu_gemm.h"
#include "cpu_math.h"
#include "cpu_ops_internal.h"
#include "cpu_parallel.h"
#include "ptrain/core/error.h"
#include "ptrain/tensor/cpu_kernels.h"
#include "ptrain/tensor/ops.h"
#include "ptrain/tensor/tensor.h"

namespace ptrain::tensor::cpu {
namespace {

// Smallest share of work worth handing to another thread (elements, or rows of about C floats).
constexpr int64_t kGrainElems = 32768;
constexpr int64_t kGrainRows = 64;

// --- memory ---
// Zeroed and 64-byte aligned. calloc clears only memory that was used before: a large buffer
// comes zeroed from the kernel, so it is not written twice and its pages are touched only when
// first used (the parameters, gradients, optimizer state and activations of a large model would
// otherwise be cleared twice before the first step). The block's own pointer sits just before
// the aligned one, for free_.
void* alloc(size_t bytes) {
  if (bytes > SIZE_MAX - 256)
    throw IoError(fmt::format("out of host memory allocating {} bytes", bytes));
  size_t rounded = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
  void* block = std::calloc(1, rounded + 64);
  if (!block) throw IoError(fmt::format("out of host memory allocating {} bytes", bytes));
  // calloc's alignment is at least 16, so the gap below the aligned pointer holds a pointer.
  auto aligned = (reinterpret_cast<uintptr_t>(block) + 64) & ~uintptr_t(63);
  reinterpret_cast<void**>(aligned)[-1] = block;
  return reinterpret_cast<void*>(aligned);
}
void free_(void* ptr) {
  if (ptr) std::free(static_cast<void**>(ptr)[-1]);
}
void copy(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
}
PTRAIN_HOT void fill(float* x, float value, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = value;
}
void synchronize() {}

// --- GEMM ---
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  gemm_f32(trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

void gemm_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                          const float* A, int lda, int64_t stride_a, const float* B, int ldb,
                          int64_t stride_b, float beta, float* C, int ldc, int64_t stride_c,
                          int count) {
  if (count <= 0) return;
  gemm_f32(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
           stride_c, count);
}

// --- bf16: conversions, and GEMMs on oneDNN's bf16 kernels (exact products of the rounded
// inputs, fp32 accumulation: what cuBLAS computes up to summation order), or, on a CPU without
// them or with PTRAIN_CPU_GEMM=openblas, by widening bf16 A and B to fp32 for the fp32 GEMM ---
// The scalar helpers of tensor.h (nearest even; NaN stays a quiet NaN), branch-free so that the
// loops vectorize: the bf16 path converts every GEMM input.
PTRAIN_HOT void f32_to_bf16_range(uint16_t* out, const float* inp, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &inp[i], 4);
    const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    out[i] = static_cast<uint16_t>(nan ? (bits >> 16) | 0x0040u : rounded);
  }
}
PTRAIN_HOT void bf16_to_f32_range(float* out, const uint16_t* inp, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(inp[i]) << 16;
    std::memcpy(&out[i], &bits, 4);
  }
}
void f32_to_bf16(uint16_t* out, const float* inp, size_t n) {
  parallel_for(n, kGrainElems,
               [&](int64_t i0, int64_t i1) { f32_to_bf16_range(out + i0, inp + i0, i1 - i0); });
}
void bf16_to_f32(float* out, const uint16_t* inp, size_t n) {
  parallel_for(n, kGrainElems,
               [&](int64_t i0, int64_t i1) { bf16_to_f32_range(out + i0, inp + i0, i1 - i0); });
}

// Elements a row-major operand of `rows` x `cols` with leading dimension `ld` spans, repeated
// `count` times `stride` apart: the last row of the last matrix ends at its last column.
size_t span_elems(int rows, int cols, int ld, int64_t stride, int count) {
  PTRAIN_CHECK(stride >= 0 && count >= 1, "bf16 GEMM with stride {} and count {}", stride, count);
  if (rows == 0 || cols == 0) return 0;
  return static_cast<size_t>(stride) * (count - 1) + static_cast<size_t>(rows - 1) * ld + cols;
}

std::vector<float> widen(const uint16_t* x, size_t n) {
  std::vector<float> out(std::max<size_t>(n, 1));  // never a null pointer for BLAS
  bf16_to_f32(out.data(), x, n);
  return out;
}

void gemm_bf16_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                               const uint16_t* A, int lda, int64_t stride_a, const uint16_t* B,
                               int ldb, int64_t stride_b, float beta, float* C, int ldc,
                               int64_t stride_c, int count) {
  if (count <= 0) return;
  record_bf16(trans_a, trans_b, M, N, K, alpha, lda, stride_a, ldb, stride_b, beta, ldc, stride_c,
              count);
  const CpuGemm mode = cpu_gemm_mode();
  if (mode == CpuGemm::kDnnl || (mode == CpuGemm::kAuto && dnnl_has_bf16())) {
    gemm_bf16_dnnl(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
                   ldc, stride_c, count);
    return;
  }
  // Stored shapes: A is MxK (KxM when transposed), B is KxN (NxK when transposed).
  auto a = widen(A, span_elems(trans_a ? K : M, trans_a ? M : K, lda, stride_a, count));
  auto b = widen(B, span_elems(trans_b ? N : K, trans_b ? K : N, ldb, stride_b, count));
  gemm_strided_batched(trans_a, trans_b, M, N, K, alpha, a.data(), lda, stride_a, b.data(), ldb,
                       stride_b, beta, C, ldc, stride_c, count);
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
               int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc) {
  gemm_bf16_strided_batched(trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0,
                            1);
}

// --- elementwise ---
PTRAIN_HOT void add_range(float* out, const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
void add(float* out, const float* a, const float* b, size_t n) {
  parallel_for(n, kGrainElems,
               [&](int64_t i0, int64_t i1) { add_range(out + i0, a + i0, b + i0, i1 - i0); });
}
PTRAIN_HOT void accumulate_range(float* dst, const float* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] += src[i];
}
void accumulate(float* dst, const float* src, size_t n) {
  parallel_for(n, kGrainElems,
               [&](int64_t i0, int64_t i1) { accumulate_range(dst + i0, src + i0, i1 - i0); });
}
PTRAIN_HOT void scale(float* x, float alpha, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] *= alpha;
}
double sum_squares(const float* x, size_t n) {
  // Four double partial sums: exact enough for clipping and cheap next to a GEMM.
  double s[4] = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int j = 0; j < 4; ++j) s[j] += static_cast<double>(x[i + j]) * x[i + j];
  }
  for (; i < n; ++i) s[0] += static_cast<double>(x[i]) * x[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}
PTRAIN_HOT void bias_add_rows(float* out, const float* bias, int N, int OC) {
  for (int n = 0; n < N; ++n) {
    float* row = out + static_cast<size_t>(n) * OC;
    for (int o = 0; o < OC; ++o) row[o] += bias[o];
  }
}
void bias_add(float* out, const float* bias, int N, int OC) {
  parallel_for(N, kGrainRows, [&](int64_t n0, int64_t n1) {
    bias_add_rows(out + n0 * OC, bias, static_cast<int>(n1 - n0), OC);
  });
}
// dbias[o0:o1] over all rows; ld is the row stride of dout.
PTRAIN_HOT void bias_backward_cols(float* dbias, const float* dout, int N, int cols, int ld) {
  for (int n = 0; n < N; ++n) {
    const float* row = dout + static_cast<size_t>(n) * ld;
    for (int o = 0; o < cols; ++o) dbias[o] += row[o];
  }
}
// Split over output columns, so each dbias[o] sums rows in the same order at any thread count.
void bias_backward(float* dbias, const float* dout, int N, int OC) {
  const int64_t col_grain = std::max<int64_t>(16, kGrainElems / std::max(N, 1));
  parallel_for(OC, col_grain, [&](int64_t o0, int64_t o1) {
    bias_backward_cols(dbias + o0, dout + o0, N, static_cast<int>(o1 - o0), OC);
  });
}

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

PTRAIN_HOT void gelu_forward_range(float* out, const float* inp, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float x = inp[i];
    float u = kGeluScale * (x + kGeluCubic * x * x * x);
    out[i] = 0.5f * x * (1.0f + fast_tanh(u));
  }
}
void gelu_forward(float* out, const float* inp, size_t n) {
  parallel_for(n, kGrainElems,
               [&](int64_t i0, int64_t i1) { gelu_forward_range(out + i0, inp + i0, i1 - i0); });
}
PTRAIN_HOT void gelu_backward_range(float* dinp, const float* inp, const float* dout, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float x = inp[i];
    float u = kGeluScale * (x + kGeluCubic * x * x * x);
    float th = fast_tanh(u);
    float du = kGeluScale * (1.0f + 3.0f * kGeluCubic * x * x);
    float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
    dinp[i] += grad * dout[i];
  }
}
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  parallel_for(n, kGrainElems, [&](int64_t i0, int64_t i1) {
    gelu_backward_range(dinp + i0, inp + i0, dout + i0, i1 - i0);
  });
}
PTRAIN_HOT void relu_forward(float* out, const float* inp, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}
PTRAIN_HOT void relu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  for (size_t i = 0; i < n; ++i) dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
}

// --- LayerNorm ---
constexpr float kLayerNormEps = 1e-5f;

PTRAIN_HOT void layernorm_forward_rows(float* out, float* mean, float* rstd, const float* inp,
                                       const float* weight, const float* bias, int N, int C) {
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    float* y = out + static_cast<size_t>(n) * C;
    float m = 0.0f;
    for (int c = 0; c < C; ++c) m += x[c];
    m /= C;
    float v = 0.0f;
    for (int c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
    v /= C;
    float s = 1.0f / std::sqrt(v + kLayerNormEps);
    for (int c = 0; c < C; ++c) y[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
  parallel_for(N, kGrainRows, [&](int64_t n0, int64_t n1) {
    layernorm_forward_rows(out + n0 * C, mean + n0, rstd + n0, inp + n0 * C, weight, bias,
                           static_cast<int>(n1 - n0), C);
  });
}

// One thread: dx, dweight and dbias in a single pass over the rows.
PTRAIN_HOT void layernorm_backward_fused(float* dinp, float* dweight, float* dbias,
                                         const float* dout, const float* inp, const float* weight,
                                         const float* mean, const float* rstd, int N, int C) {
  for (int n = 0; n < N; ++n) {
    const float* dy = dout + static_cast<size_t>(n) * C;
    const float* x = inp + static_cast<size_t>(n) * C;
    float* dx = dinp + static_cast<size_t>(n) * C;
    float m = mean[n], s = rstd[n];
    // dnorm = weight * dy; dx = (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd
    float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
    for (int c = 0; c < C; ++c) {
      float norm = (x[c] - m) * s;
      float dnorm = weight[c] * dy[c];
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean /= C;
    dnorm_norm_mean /= C;
    for (int c = 0; c < C; ++c) {
      float norm = (x[c] - m) * s;
      float dnorm = weight[c] * dy[c];
      dbias[c] += dy[c];
      dweight[c] += norm * dy[c];
      dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
  }
}

// dx for rows [0, N); same arithmetic per row as the fused pass.
PTRAIN_HOT void layernorm_backward_dx(float* dinp, const float* dout, const float* inp,
                                      const float* weight, const float* mean, const float* rstd,
                                      int N, int C) {
  for (int n = 0; n < N; ++n) {
    const float* dy = dout + static_cast<size_t>(n) * C;
    const float* x = inp + static_cast<size_t>(n) * C;
    float* dx = dinp + static_cast<size_t>(n) * C;
    float m = mean[n], s = rstd[n];
    float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
    for (int c = 0; c < C; ++c) {
      float norm = (x[c] - m) * s;
      float dnorm = weight[c] * dy[c];
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean /= C;
    dnorm_norm_mean /= C;
    for (int c = 0; c < C; ++c) {
      float norm = (x[c] - m) * s;
      float dnorm = weight[c] * dy[c];
      dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
  }
}

// dweight[c0:c0+cols], dbias[c0:c0+cols] over all N rows in row order (pointers pre-offset by
// c0; ld is the row stride).
PTRAIN_HOT void layernorm_backward_params(float* dweight, float* dbias, const float* dout,
                                          const float* inp, const float* mean, const float* rstd,
                                          int N, int cols, int ld) {
  for (int n = 0; n < N; ++n) {
    const float* dy = dout + static_cast<size_t>(n) * ld;
    const float* x = inp + static_cast<size_t>(n) * ld;
    float m = mean[n], s = rstd[n];
    for (int c = 0; c < cols; ++c) {
      float norm = (x[c] - m) * s;
      dbias[c] += dy[c];
      dweight[c] += norm * dy[c];
    }
  }
}

// With several threads, dx splits over rows and the parameter gradients over columns, so every
// sum runs over rows in the same order as the fused single-thread pass: bit-identical results.
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C) {
  if (parallel_threads(N, kGrainRows) <= 1) {
    layernorm_backward_fused(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    return;
  }
  parallel_for(N, kGrainRows, [&](int64_t n0, int64_t n1) {
    layernorm_backward_dx(dinp + n0 * C, dout + n0 * C, inp + n0 * C, weight, mean + n0, rstd + n0,
                          static_cast<int>(n1 - n0), C);
  });
  parallel_for(C, 16, [&](int64_t c0, int64_t c1) {
    layernorm_backward_params(dweight + c0, dbias + c0, dout + c0, inp + c0, mean, rstd, N,
                              static_cast<int>(c1 - c0), C);
  });
}

// --- embeddings ---
void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                       int T, int C) {
  parallel_for(static_cast<int64_t>(B) * T, kGrainRows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int b = static_cast<int>(r / T), t = static_cast<int>(r % T);
      float* y = out + (static_cast<size_t>(b) * T + t) * C;
      const float* e = wte + static_cast<size_t>(tokens[b * T + t]) * C;
      if (wpe) {
        const float* p = wpe + static_cast<size_t>(t) * C;
        for (int c = 0; c < C; ++c) y[c] = e[c] + p[c];
      } else {
        std::memcpy(y, e, sizeof(float) * C);
      }
    }
  });
}

// Split over channels: tokens repeat, so rows would race, while each channel's sums keep the
// single-thread order.
void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                        int T, int C) {
  parallel_for(C, 16, [&](int64_t c0, int64_t c1) {
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t < T; ++t) {
        const float* dy = dout + (static_cast<size_t>(b) * T + t) * C;
        float* de = dwte + static_cast<size_t>(tokens[b * T + t]) * C;
        for (int64_t c = c0; c < c1; ++c) de[c] += dy[c];
        if (dwpe) {
          float* dp = dwpe + static_cast<size_t>(t) * C;
          for (int64_t c = c0; c < c1; ++c) dp[c] += dy[c];
        }
      }
    }
  });
}

// --- softmax cross-entropy ---
PTRAIN_HOT void crossentropy_forward_rows(float* losses, float* lse, const float* logits,
                                          const int32_t* targets, int N, int V) {
  for (int n = 0; n < N; ++n) {
    const float* z = logits + static_cast<size_t>(n) * V;
    float mx = z[0];
    for (int v = 1; v < V; ++v) mx = std::max(mx, z[v]);
    float sum = 0.0f;
    for (int v = 0; v < V; ++v) sum += fast_exp(z[v] - mx);
    float l = mx + std::log(sum);
    lse[n] = l;
    int32_t target = targets[n];
    PTRAIN_CHECK(target < V, "target {} out of range for {} classes", target, V);
    losses[n] = target < 0 ? 0.0f : l - z[target];
  }
}

void crossentropy_forward(float* losses, float* lse, const float* logits, const int32_t* targets,
                          int N, int V) {
  parallel_for(N, kGrainRows / 2, [&](int64_t n0, int64_t n1) {
    crossentropy_forward_rows(losses + n0, lse + n0, logits + n0 * V, targets + n0,
                              static_cast<int>(n1 - n0), V);
  });
}
PTRAIN_HOT void crossentropy_backward_rows(float* dlogits, const float* logits, const float* lse,
                                           const int32_t* targets, float dloss, int N, int V) {
  for (int n = 0; n < N; ++n) {
    const float* z = logits + static_cast<size_t>(n) * V;
    float* dz = dlogits + static_cast<size_t>(n) * V;
    int32_t target = targets[n];
    if (target < 0) {
      for (int v = 0; v < V; ++v) dz[v] = 0.0f;
      continue;
    }
    float l = lse[n];
    for (int v = 0; v < V; ++v) dz[v] = fast_exp(z[v] - l) * dloss;
    dz[target] -= dloss;
  }
}
void crossentropy_backward(float* dlogits, const float* logits, const float* lse,
                           const int32_t* targets, float dloss, int N, int V) {
  parallel_for(N, kGrainRows / 2, [&](int64_t n0, int64_t n1) {
    crossentropy_backward_rows(dlogits + n0 * V, logits + n0 * V, lse + n0, targets + n0, dloss,
                               static_cast<int>(n1 - n0), V);
  });
}

// --- optimizers ---
PTRAIN_HOT void adamw_range(float* params, const float* grads, float* m, float* v, size_t n,
                            float lr, float beta1, float beta2, float eps, float weight_decay,
                            int64_t step) {
  const float bc1 = 1.0f - static_cast<float>(std::pow(static_cast<double>(beta1), step));
  const float bc2 = 1.0f - static_cast<float>(std::pow(static_cast<double>(beta2), step));
  const float step_size = lr / bc1;
  const float inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
  const float decay = 1.0f - lr * weight_decay;
  for (size_t i = 0; i < n; ++i) {
    float g = grads[i];
    float p = params[i] * decay;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] = p - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}
void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t step) {
  parallel_for(n, kGrainElems, [&](int64_t i0, int64_t i1) {
    adamw_range(params + i0, grads + i0, m + i0, v + i0, i1 - i0, lr, beta1, beta2, eps,
                weight_decay, step);
  });
}

void sgd_update(float* params, const float* grads, float* momentum_buf, size_t n, float lr,
                float momentum, bool nesterov, float weight_decay, bool first_step) {
  for (size_t i = 0; i < n; ++i) {
    float g = grads[i] + weight_decay * params[i];
    if (momentum != 0.0f) {
      float buf = first_step ? g : momentum * momentum_buf[i] + g;
      momentum_buf[i] = buf;
      g = nesterov ? g + momentum * buf : buf;
    }
    params[i] -= lr * g;
  }
}

}  // namespace

const Ops& table() {
  static const Ops kOps = [] {
    Ops o{};
    o.device = Device::kCpu;
    o.name = "cpu";
    o.alloc = alloc;
    o.free = free_;
    o.copy_to_host = copy;
    o.copy_from_host = copy;
    o.copy = copy;
    o.fill = fill;
    o.synchronize = synchronize;
    o.gemm = gemm;
    o.gemm_strided_batched = gemm_strided_batched;
    o.add = add;
    o.accumulate = accumulate;
    o.scale = scale;
    o.sum_squares = sum_squares;
    o.bias_add = bias_add;
    o.bias_backward = bias_backward;
    o.gelu_forward = gelu_forward;
    o.gelu_backward = gelu_backward;
    o.relu_forward = relu_forward;
    o.relu_backward = relu_backward;
    o.layernorm_forward = layernorm_forward;
    o.layernorm_backward = layernorm_backward;
    o.attention_forward = attention_forward;
    o.attention_backward = attention_backward;
    o.embedding_forward = embedding_forward;
    o.embedding_backward = embedding_backward;
    o.crossentropy_forward = crossentropy_forward;
    o.crossentropy_backward = crossentropy_backward;
    o.adamw_update = adamw_update;
    o.sgd_update = sgd_update;
    o.f32_to_bf16 = f32_to_bf16;
    o.bf16_to_f32 = bf16_to_f32;
    o.gemm_bf16 = gemm_bf16;
    o.gemm_bf16_strided_batched = gemm_bf16_strided_batched;
    return o;
  }();
  return kOps;
}

}  // namespace ptrain::tensor::cpu
