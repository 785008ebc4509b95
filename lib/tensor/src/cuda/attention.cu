// Causal self-attention on CUDA, two implementations behind the ops.h interface:
//
// GEMM path (llm.c style, the fast one for training-length sequences): q, k, v are permuted to
// [B,NH,T,HS]; S = scale Q K^T for every (b,h) is one strided-batched fp32 cuBLAS GEMM into a
// [B,NH,T,T] scratch; a softmax kernel turns each causal row into P in place and saves its
// log-sum-exp; O = P V is a second batched GEMM, permuted back into out. Backward recomputes P from
// lse, forms dP = dO V^T, dS = P * (dP - rowsum(dO * O)), and gets dV = P^T dO, dQ = scale dS K,
// dK = scale dS^T Q from batched GEMMs, then adds them into dqkv. GEMMs are exact fp32
// (CUBLAS_COMPUTE_32F, as the table's gemm); no atomics anywhere, so results are deterministic.
// The scratch is the calling thread's (cuda_check.h scratch slots kAttn*): grown on demand, kept
// for the thread's life and freed when it exits. Batches are processed in chunks so that one call's
// scratch stays within PTRAIN_ATTENTION_SCRATCH_MB (default 1024 MiB, before the slots' growth
// headroom).
//
// Flash path (the long-sequence one, nothing of size [T,T] is ever stored): one block per (query
// tile, head, batch) streams key/value tiles through shared memory with an online softmax and
// saves the row log-sum-exp; backward recomputes the probabilities from it. One warp owns one row
// (a query in forward and dq, a key in dk/dv); the 32 lanes take the 32 rows of the streamed tile
// for the dot products, and the head dimensions (lane, lane+32, ...) for the accumulations.
// HS <= 32 * kDimsPerLane.
//
// Choice (kernels.h, AttentionPolicy): PTRAIN_ATTENTION=auto (default) takes the GEMM path when
// the backward's scratch for one batch fits the bound (forward decides the same way, so a layer
// uses one path), else flash; =gemm forces the GEMM path (one batch per chunk if need be), =flash
// forces the flash kernels.
//
// Layout (ops.h): qkv [B,T,3C] = q | k | v, head h uses channels [h*HS, (h+1)*HS) of each;
// out [B,T,C]; lse [B,NH,T].
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <type_traits>

#include "cuda_check.h"
#include "device_utils.cuh"
#include "kernels.h"

namespace ptrain::tensor::cuda {
namespace {

constexpr int kRows = 16;  // rows (warps) per block
constexpr int kTile = 32;  // streamed rows per tile (one per lane)
constexpr int kThreads = kRows * kWarp;

struct Shape {
  int B, T, C, NH, HS;
  float scale;
  __device__ size_t row(int b, int t) const { return (static_cast<size_t>(b) * T + t) * 3 * C; }
};

// Loads rows [t0, t0+rows) of one head's slice (channel offset `part`*C + h*HS) of qkv into
// dst[rows][pitch]; rows past T are zero.
__device__ void load_rows(float* dst, int pitch, const float* qkv, const Shape& s, int b, int h,
                          int part, int t0, int rows) {
  for (int idx = threadIdx.x; idx < rows * s.HS; idx += blockDim.x) {
    int r = idx / s.HS, d = idx % s.HS, t = t0 + r;
    dst[r * pitch + d] = t < s.T ? qkv[s.row(b, t) + part * s.C + h * s.HS + d] : 0.0f;
  }
}

// out-like [B,T,C] rows of head h.
__device__ void load_out_rows(float* dst, int pitch, const float* x, const Shape& s, int b, int h,
                              int t0, int rows) {
  for (int idx = threadIdx.x; idx < rows * s.HS; idx += blockDim.x) {
    int r = idx / s.HS, d = idx % s.HS, t = t0 + r;
    dst[r * pitch + d] =
        t < s.T ? x[(static_cast<size_t>(b) * s.T + t) * s.C + h * s.HS + d] : 0.0f;
  }
}

template <int DPL>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(float* out, float* lse, const float* qkv, Shape s) {
  extern __shared__ float smem[];
  const int HS = s.HS, kp = HS + 1;
  float* q_s = smem;              // [kRows][HS]
  float* k_s = q_s + kRows * HS;  // [kTile][HS+1] (padded: lanes read different rows)
  float* v_s = k_s + kTile * kp;  // [kTile][HS]
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int q0 = blockIdx.x * kRows, h = blockIdx.y, b = blockIdx.z;
  const int i = q0 + warp;  // this warp's query
  load_rows(q_s, HS, qkv, s, b, h, 0, q0, kRows);

  float m = -INFINITY, l = 0.0f;
  float acc[DPL];
#pragma unroll
  for (int k = 0; k < DPL; ++k) acc[k] = 0.0f;
  const float* q = q_s + warp * HS;
  const int kv_end = min(s.T, q0 + kRows);
  for (int k0 = 0; k0 < kv_end; k0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and q_s is loaded)
    load_rows(k_s, kp, qkv, s, b, h, 1, k0, kTile);
    load_rows(v_s, HS, qkv, s, b, h, 2, k0, kTile);
    __syncthreads();
    if (i >= s.T || k0 > i) continue;  // warp-uniform
    const int j = k0 + lane;
    float score = -INFINITY;
    if (j <= i) {
      const float* k = k_s + lane * kp;
      float dot = 0.0f;
      for (int d = 0; d < HS; ++d) dot += q[d] * k[d];
      score = dot * s.scale;
    }
    const float m_new = fmaxf(m, warp_max(score));  // finite: key k0 <= i is in the tile
    const float corr = expf(m - m_new);
    const float p = j <= i ? expf(score - m_new) : 0.0f;
    l = l * corr + warp_sum(p);
#pragma unroll
    for (int k = 0; k < DPL; ++k) acc[k] *= corr;
    const int last = min(kTile, i - k0 + 1);
    for (int jj = 0; jj < last; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      const float* v = v_s + jj * HS;
#pragma unroll
      for (int k = 0; k < DPL; ++k) {
        int d = lane + k * kWarp;
        if (d < HS) acc[k] += pj * v[d];
      }
    }
    m = m_new;
  }
  if (i >= s.T) return;
  const float inv_l = 1.0f / l;
  float* o = out + (static_cast<size_t>(b) * s.T + i) * s.C + h * HS;
#pragma unroll
  for (int k = 0; k < DPL; ++k) {
    int d = lane + k * kWarp;
    if (d < HS) o[d] = acc[k] * inv_l;
  }
  if (lane == 0) lse[(static_cast<size_t>(b) * s.NH + h) * s.T + i] = m + logf(l);
}

// delta [B,NH,T] = rowsum(dout * out) per head: the softmax backward's correction term.
__global__ void attention_delta_kernel(float* delta, const float* dout, const float* out, Shape s) {
  const int lane = threadIdx.x % kWarp;
  const size_t row = blockIdx.x * size_t(blockDim.x / kWarp) + threadIdx.x / kWarp;  // (b,h,t)
  if (row >= static_cast<size_t>(s.B) * s.NH * s.T) return;
  const int t = row % s.T, h = (row / s.T) % s.NH, b = row / (static_cast<size_t>(s.T) * s.NH);
  const size_t off = (static_cast<size_t>(b) * s.T + t) * s.C + h * s.HS;
  float acc = 0.0f;
  for (int d = lane; d < s.HS; d += kWarp) acc += dout[off + d] * out[off + d];
  acc = warp_sum(acc);
  if (lane == 0) delta[row] = acc;
}

// dq: one warp per query i streams key tiles j <= i:
//   p = exp(scale q.k - lse_i); ds = p (dout_i.v_j - delta_i); dq_i += scale * sum_j ds k_j.
template <int DPL>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                 const float* delta, Shape s) {
  extern __shared__ float smem[];
  const int HS = s.HS, kp = HS + 1;
  float* q_s = smem;               // [kRows][HS]
  float* do_s = q_s + kRows * HS;  // [kRows][HS]
  float* k_s = do_s + kRows * HS;  // [kTile][HS+1]
  float* v_s = k_s + kTile * kp;   // [kTile][HS+1]
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int q0 = blockIdx.x * kRows, h = blockIdx.y, b = blockIdx.z;
  const int i = q0 + warp;
  load_rows(q_s, HS, qkv, s, b, h, 0, q0, kRows);
  load_out_rows(do_s, HS, dout, s, b, h, q0, kRows);
  const size_t stat = (static_cast<size_t>(b) * s.NH + h) * s.T + i;
  const float lse_i = i < s.T ? lse[stat] : 0.0f;
  const float delta_i = i < s.T ? delta[stat] : 0.0f;
  const float* q = q_s + warp * HS;
  const float* dy = do_s + warp * HS;

  float acc[DPL];
#pragma unroll
  for (int k = 0; k < DPL; ++k) acc[k] = 0.0f;
  const int kv_end = min(s.T, q0 + kRows);
  for (int k0 = 0; k0 < kv_end; k0 += kTile) {
    __syncthreads();
    load_rows(k_s, kp, qkv, s, b, h, 1, k0, kTile);
    load_rows(v_s, kp, qkv, s, b, h, 2, k0, kTile);
    __syncthreads();
    if (i >= s.T || k0 > i) continue;
    const int j = k0 + lane;
    float ds = 0.0f;
    if (j <= i) {
      const float* k = k_s + lane * kp;
      const float* v = v_s + lane * kp;
      float qk = 0.0f, dv = 0.0f;
      for (int d = 0; d < HS; ++d) {
        qk += q[d] * k[d];
        dv += dy[d] * v[d];
      }
      const float p = expf(qk * s.scale - lse_i);
      ds = p * (dv - delta_i);
    }
    const int last = min(kTile, i - k0 + 1);
    for (int jj = 0; jj < last; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      const float* k = k_s + jj * kp;
#pragma unroll
      for (int kk = 0; kk < DPL; ++kk) {
        int d = lane + kk * kWarp;
        if (d < HS) acc[kk] += dsj * k[d];
      }
    }
  }
  if (i >= s.T) return;
  float* dq = dqkv + s.row(b, i) + h * HS;
#pragma unroll
  for (int k = 0; k < DPL; ++k) {
    int d = lane + k * kWarp;
    if (d < HS) dq[d] += acc[k] * s.scale;
  }
}

// dk, dv: one warp per key j streams query tiles i >= j:
//   dv_j += sum_i p dout_i; dk_j += scale * sum_i ds q_i.
template <int DPL>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkv_kernel(float* dqkv, const float* dout, const float* qkv,
                                  const float* lse, const float* delta, Shape s) {
  extern __shared__ float smem[];
  const int HS = s.HS, kp = HS + 1;
  float* k_s = smem;                 // [kRows][HS]
  float* v_s = k_s + kRows * HS;     // [kRows][HS]
  float* q_s = v_s + kRows * HS;     // [kTile][HS+1]
  float* do_s = q_s + kTile * kp;    // [kTile][HS+1]
  float* lse_s = do_s + kTile * kp;  // [kTile]
  float* delta_s = lse_s + kTile;    // [kTile]
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int j0 = blockIdx.x * kRows, h = blockIdx.y, b = blockIdx.z;
  const int j = j0 + warp;
  load_rows(k_s, HS, qkv, s, b, h, 1, j0, kRows);
  load_rows(v_s, HS, qkv, s, b, h, 2, j0, kRows);
  const float* k = k_s + warp * HS;
  const float* v = v_s + warp * HS;
  const size_t stat0 = (static_cast<size_t>(b) * s.NH + h) * s.T;

  float dk[DPL], dv[DPL];
#pragma unroll
  for (int c = 0; c < DPL; ++c) dk[c] = dv[c] = 0.0f;
  for (int i0 = j0; i0 < s.T; i0 += kTile) {
    __syncthreads();
    load_rows(q_s, kp, qkv, s, b, h, 0, i0, kTile);
    load_out_rows(do_s, kp, dout, s, b, h, i0, kTile);
    if (threadIdx.x < kTile) {
      int t = i0 + threadIdx.x;
      lse_s[threadIdx.x] = t < s.T ? lse[stat0 + t] : 0.0f;
      delta_s[threadIdx.x] = t < s.T ? delta[stat0 + t] : 0.0f;
    }
    __syncthreads();
    if (j >= s.T) continue;
    const int i = i0 + lane;
    float p = 0.0f, ds = 0.0f;
    if (i >= j && i < s.T) {
      const float* q = q_s + lane * kp;
      const float* dy = do_s + lane * kp;
      float qk = 0.0f, dpv = 0.0f;
      for (int d = 0; d < HS; ++d) {
        qk += q[d] * k[d];
        dpv += dy[d] * v[d];
      }
      p = expf(qk * s.scale - lse_s[lane]);
      ds = p * (dpv - delta_s[lane]);
    }
    const int first = max(0, j - i0);
    const int last = min(kTile, s.T - i0);
    for (int ii = first; ii < last; ++ii) {
      const float pi = __shfl_sync(0xffffffffu, p, ii);
      const float dsi = __shfl_sync(0xffffffffu, ds, ii);
      const float* q = q_s + ii * kp;
      const float* dy = do_s + ii * kp;
#pragma unroll
      for (int c = 0; c < DPL; ++c) {
        int d = lane + c * kWarp;
        if (d < HS) {
          dv[c] += pi * dy[d];
          dk[c] += dsi * q[d];
        }
      }
    }
  }
  if (j >= s.T) return;
  float* dkp = dqkv + s.row(b, j) + s.C + h * HS;
  float* dvp = dqkv + s.row(b, j) + 2 * s.C + h * HS;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    int d = lane + c * kWarp;
    if (d < HS) {
      dkp[d] += dk[c] * s.scale;
      dvp[d] += dv[c];
    }
  }
}

Shape make_shape(int B, int T, int C, int NH) {
  char msg[128];
  if (NH <= 0 || C % NH != 0) {
    std::snprintf(msg, sizeof msg, "attention: C=%d is not a multiple of NH=%d", C, NH);
    throw_contract(msg, __FILE__, __LINE__);
  }
  int HS = C / NH;
  return Shape{B, T, C, NH, HS, 1.0f / std::sqrt(static_cast<float>(HS))};
}

void check_flash_head_size(const Shape& s) {
  if (s.HS > 8 * kWarp) {
    char msg[128];
    std::snprintf(msg, sizeof msg,
                  "attention: head size %d > 256 is not supported by the CUDA flash kernels", s.HS);
    throw_contract(msg, __FILE__, __LINE__);
  }
}

template <class Kernel, class... Args>
void launch(Kernel kernel, const char* name, size_t smem_floats, const Shape& s, Args... args) {
  size_t smem = smem_floats * sizeof(float);
  if (smem > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  }
  dim3 grid((s.T + kRows - 1) / kRows, s.NH, s.B);
  kernel<<<grid, kThreads, smem>>>(args..., s);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, name, __FILE__, __LINE__);
}

// Calls f(std::integral_constant<int, DPL>) with the smallest DPL for the head size.
template <class F>
void dispatch_dpl(int HS, F&& f) {
  if (HS <= 32) {
    f(std::integral_constant<int, 1>{});
  } else if (HS <= 64) {
    f(std::integral_constant<int, 2>{});
  } else if (HS <= 128) {
    f(std::integral_constant<int, 4>{});
  } else {
    f(std::integral_constant<int, 8>{});
  }
}

void flash_forward(float* out, float* lse, const float* qkv, const Shape& s) {
  check_flash_head_size(s);
  size_t smem = kRows * s.HS + kTile * (s.HS + 1) + kTile * s.HS;
  dispatch_dpl(s.HS, [&](auto dpl) {
    launch(attention_forward_kernel<decltype(dpl)::value>, "attention_forward_kernel", smem, s, out,
           lse, qkv);
  });
}

void flash_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                    const float* lse, const Shape& s) {
  check_flash_head_size(s);
  const size_t rows = static_cast<size_t>(s.B) * s.NH * s.T;
  auto* delta = static_cast<float*>(scratch(ScratchSlot::kAttnDelta, rows * sizeof(float)));
  constexpr int kDeltaWarps = 8;
  attention_delta_kernel<<<(rows + kDeltaWarps - 1) / kDeltaWarps, kDeltaWarps * kWarp>>>(
      delta, dout, out, s);
  CUDA_LAUNCH_CHECK("attention_delta_kernel");
  size_t smem_dq = 2 * kRows * s.HS + 2 * kTile * (s.HS + 1);
  size_t smem_dkv = 2 * kRows * s.HS + 2 * kTile * (s.HS + 1) + 2 * kTile;
  dispatch_dpl(s.HS, [&](auto dpl) {
    launch(attention_backward_dq_kernel<decltype(dpl)::value>, "attention_backward_dq_kernel",
           smem_dq, s, dqkv, dout, qkv, lse, static_cast<const float*>(delta));
    launch(attention_backward_dkv_kernel<decltype(dpl)::value>, "attention_backward_dkv_kernel",
           smem_dkv, s, dqkv, dout, qkv, lse, static_cast<const float*>(delta));
  });
}

// --- GEMM path ------------------------------------------------------------------------------
// Here a Shape describes one chunk of batches (s.B of them); callers offset the pointers.

constexpr int kPermuteThreads = 256;
constexpr int kRowWarps = 8;  // softmax rows (one warp each) per block

// dst: `parts` tensors [B,NH,T,HS], one after the other; src [B,T,parts*C] (qkv: parts 3).
__global__ void attention_to_heads_kernel(float* dst, const float* src, int parts, Shape s) {
  const size_t width = static_cast<size_t>(parts) * s.C;
  const size_t n = static_cast<size_t>(s.B) * s.T * width;
  const size_t part_stride = static_cast<size_t>(s.B) * s.T * s.C;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t bt = idx / width;
    const int cw = static_cast<int>(idx % width);
    const int t = static_cast<int>(bt % s.T);
    const size_t b = bt / s.T;
    const int part = cw / s.C, c = cw % s.C, h = c / s.HS, d = c % s.HS;
    dst[part * part_stride + ((b * s.NH + h) * s.T + t) * s.HS + d] = src[idx];
  }
}

// The inverse: dst [B,T,parts*C] = (or += when `accumulate`) the `parts` tensors [B,NH,T,HS].
__global__ void attention_from_heads_kernel(float* dst, const float* src, int parts,
                                            bool accumulate, Shape s) {
  const size_t width = static_cast<size_t>(parts) * s.C;
  const size_t n = static_cast<size_t>(s.B) * s.T * width;
  const size_t part_stride = static_cast<size_t>(s.B) * s.T * s.C;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t bt = idx / width;
    const int cw = static_cast<int>(idx % width);
    const int t = static_cast<int>(bt % s.T);
    const size_t b = bt / s.T;
    const int part = cw / s.C, c = cw % s.C, h = c / s.HS, d = c % s.HS;
    const float x = src[part * part_stride + ((b * s.NH + h) * s.T + t) * s.HS + d];
    dst[idx] = accumulate ? dst[idx] + x : x;
  }
}

// One warp per row (b,h,i) of att [B,NH,T,T], which holds the scaled scores: the causal softmax
// over j <= i in place (zeros for j > i, which the P V GEMM reads) and lse [B,NH,T].
__global__ void attention_softmax_forward_kernel(float* att, float* lse, size_t rows, int T) {
  const int lane = threadIdx.x % kWarp;
  const size_t row = blockIdx.x * static_cast<size_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (row >= rows) return;
  const int i = static_cast<int>(row % T);
  float* p = att + row * T;
  float m = -INFINITY;
  for (int j = lane; j <= i; j += kWarp) m = fmaxf(m, p[j]);
  m = warp_max(m);  // finite: column 0 is always visible
  float sum = 0.0f;
  for (int j = lane; j <= i; j += kWarp) sum += expf(p[j] - m);
  sum = warp_sum(sum);
  const float inv = 1.0f / sum;
  for (int j = lane; j < T; j += kWarp) p[j] = j <= i ? expf(p[j] - m) * inv : 0.0f;
  if (lane == 0) lse[row] = m + logf(sum);
}

// One warp per row (b,h,i): att holds the scaled scores S, grad holds dP = dO V^T. Writes
// P = exp(S - lse) into att and dS = P * (dP - delta) into grad (zeros for j > i).
__global__ void attention_softmax_backward_kernel(float* att, float* grad, const float* lse,
                                                  const float* delta, size_t rows, int T) {
  const int lane = threadIdx.x % kWarp;
  const size_t row = blockIdx.x * static_cast<size_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (row >= rows) return;
  const int i = static_cast<int>(row % T);
  const float l = lse[row], dlt = delta[row];
  float* p = att + row * T;
  float* dp = grad + row * T;
  for (int j = lane; j < T; j += kWarp) {
    if (j <= i) {
      const float pj = expf(p[j] - l);
      p[j] = pj;
      dp[j] = pj * (dp[j] - dlt);
    } else {
      p[j] = 0.0f;
      dp[j] = 0.0f;
    }
  }
}

void to_heads(float* dst, const float* src, int parts, const Shape& s) {
  const size_t n = static_cast<size_t>(s.B) * s.T * parts * s.C;
  attention_to_heads_kernel<<<grid_for(n, kPermuteThreads), kPermuteThreads>>>(dst, src, parts, s);
  CUDA_LAUNCH_CHECK("attention_to_heads_kernel");
}

void from_heads(float* dst, const float* src, int parts, bool accumulate, const Shape& s) {
  const size_t n = static_cast<size_t>(s.B) * s.T * parts * s.C;
  attention_from_heads_kernel<<<grid_for(n, kPermuteThreads), kPermuteThreads>>>(dst, src, parts,
                                                                                 accumulate, s);
  CUDA_LAUNCH_CHECK("attention_from_heads_kernel");
}

unsigned row_blocks(size_t rows) {
  return static_cast<unsigned>((rows + kRowWarps - 1) / kRowWarps);
}

// Scratch bytes one batch needs on the GEMM path: [NH,T,T] scores (and dP in backward), the
// permuted heads (q,k,v,o forward; q,k,v,dO,dq,dk,dv backward) and backward's delta.
size_t gemm_bytes_per_batch(const Shape& s, bool backward) {
  const size_t tt = static_cast<size_t>(s.NH) * s.T * s.T;
  const size_t tc = static_cast<size_t>(s.T) * s.C;
  const size_t floats = backward ? 2 * tt + 7 * tc + static_cast<size_t>(s.NH) * s.T : tt + 4 * tc;
  return floats * sizeof(float);
}

// Batches per chunk on the GEMM path, or 0 for the flash kernels (see the top of this file).
int gemm_chunk(const Shape& s, bool backward) {
  const AttentionPolicy p = attention_policy();
  if (p.mode == AttentionPolicy::kFlash) return 0;
  // Auto keeps the GEMM path past the bound for head sizes the flash kernels do not support.
  if (p.mode == AttentionPolicy::kAuto && gemm_bytes_per_batch(s, true) > p.scratch_bytes &&
      s.HS <= 8 * kWarp) {
    return 0;
  }
  const size_t fit = p.scratch_bytes / gemm_bytes_per_batch(s, backward);
  return static_cast<int>(std::max<size_t>(1, std::min<size_t>(fit, static_cast<size_t>(s.B))));
}

void gemm_forward(float* out, float* lse, const float* qkv, const Shape& s, int chunk) {
  const size_t tt = static_cast<size_t>(s.T) * s.T;
  const int64_t head_stride = static_cast<int64_t>(s.T) * s.HS;  // one (b,h) in [B,NH,T,HS]
  const size_t n_max = static_cast<size_t>(chunk) * s.T * s.C;   // floats of one [B,NH,T,HS]
  auto* heads = static_cast<float*>(scratch(ScratchSlot::kAttnHeads, 4 * n_max * sizeof(float)));
  auto* att = static_cast<float*>(
      scratch(ScratchSlot::kAttnScores, static_cast<size_t>(chunk) * s.NH * tt * sizeof(float)));
  for (int b0 = 0; b0 < s.B; b0 += chunk) {
    Shape c = s;
    c.B = std::min(chunk, s.B - b0);
    const size_t n = static_cast<size_t>(c.B) * c.T * c.C;
    const int bh = c.B * c.NH;
    const size_t rows = static_cast<size_t>(bh) * c.T;
    float *q = heads, *k = q + n, *v = k + n, *o = v + n;
    to_heads(q, qkv + static_cast<size_t>(b0) * s.T * 3 * s.C, 3, c);
    // att[bh] = scale * q[bh] k[bh]^T  [T,T]
    batched_gemm(false, true, c.T, c.T, c.HS, c.scale, q, c.HS, head_stride, k, c.HS, head_stride,
                 0.0f, att, c.T, static_cast<int64_t>(tt), bh);
    attention_softmax_forward_kernel<<<row_blocks(rows), kRowWarps * kWarp>>>(
        att, lse + static_cast<size_t>(b0) * s.NH * s.T, rows, c.T);
    CUDA_LAUNCH_CHECK("attention_softmax_forward_kernel");
    // o[bh] = P[bh] v[bh]  [T,HS]
    batched_gemm(false, false, c.T, c.HS, c.T, 1.0f, att, c.T, static_cast<int64_t>(tt), v, c.HS,
                 head_stride, 0.0f, o, c.HS, head_stride, bh);
    from_heads(out + static_cast<size_t>(b0) * s.T * s.C, o, 1, false, c);
  }
}

void gemm_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, const Shape& s, int chunk) {
  const size_t tt = static_cast<size_t>(s.T) * s.T;
  const int64_t head_stride = static_cast<int64_t>(s.T) * s.HS;
  const size_t n_max = static_cast<size_t>(chunk) * s.T * s.C;
  const size_t scores = static_cast<size_t>(chunk) * s.NH * tt * sizeof(float);
  auto* heads = static_cast<float*>(scratch(ScratchSlot::kAttnHeads, 7 * n_max * sizeof(float)));
  auto* att = static_cast<float*>(scratch(ScratchSlot::kAttnScores, scores));
  auto* grad = static_cast<float*>(scratch(ScratchSlot::kAttnGrad, scores));
  auto* delta = static_cast<float*>(
      scratch(ScratchSlot::kAttnDelta, static_cast<size_t>(chunk) * s.NH * s.T * sizeof(float)));
  for (int b0 = 0; b0 < s.B; b0 += chunk) {
    Shape c = s;
    c.B = std::min(chunk, s.B - b0);
    const size_t n = static_cast<size_t>(c.B) * c.T * c.C;
    const int bh = c.B * c.NH;
    const size_t rows = static_cast<size_t>(bh) * c.T;
    const size_t x_off = static_cast<size_t>(b0) * s.T * s.C;  // into out-like [B,T,C]
    const size_t qkv_off = 3 * x_off;                          // into [B,T,3C]
    // q | k | v | dO | dq | dk | dv, each [c.B,NH,T,HS]; dq, dk, dv adjacent for from_heads.
    float *q = heads, *k = q + n, *v = k + n, *dO = v + n;
    float *dq = dO + n, *dk = dq + n, *dv = dk + n;
    to_heads(q, qkv + qkv_off, 3, c);
    to_heads(dO, dout + x_off, 1, c);
    attention_delta_kernel<<<row_blocks(rows), kRowWarps * kWarp>>>(delta, dout + x_off,
                                                                    out + x_off, c);
    CUDA_LAUNCH_CHECK("attention_delta_kernel");
    // att = scale * q k^T (S again); grad = dO v^T (dP)
    batched_gemm(false, true, c.T, c.T, c.HS, c.scale, q, c.HS, head_stride, k, c.HS, head_stride,
                 0.0f, att, c.T, static_cast<int64_t>(tt), bh);
    batched_gemm(false, true, c.T, c.T, c.HS, 1.0f, dO, c.HS, head_stride, v, c.HS, head_stride,
                 0.0f, grad, c.T, static_cast<int64_t>(tt), bh);
    attention_softmax_backward_kernel<<<row_blocks(rows), kRowWarps * kWarp>>>(
        att, grad, lse + static_cast<size_t>(b0) * s.NH * s.T, delta, rows, c.T);
    CUDA_LAUNCH_CHECK("attention_softmax_backward_kernel");
    // dv = P^T dO; dq = scale * dS k; dk = scale * dS^T q
    batched_gemm(true, false, c.T, c.HS, c.T, 1.0f, att, c.T, static_cast<int64_t>(tt), dO, c.HS,
                 head_stride, 0.0f, dv, c.HS, head_stride, bh);
    batched_gemm(false, false, c.T, c.HS, c.T, c.scale, grad, c.T, static_cast<int64_t>(tt), k,
                 c.HS, head_stride, 0.0f, dq, c.HS, head_stride, bh);
    batched_gemm(true, false, c.T, c.HS, c.T, c.scale, grad, c.T, static_cast<int64_t>(tt), q, c.HS,
                 head_stride, 0.0f, dk, c.HS, head_stride, bh);
    from_heads(dqkv + qkv_off, dq, 3, true, c);
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
  if (B <= 0 || T <= 0) return;
  bind_thread();
  Shape s = make_shape(B, T, C, NH);
  if (int chunk = gemm_chunk(s, false)) {
    gemm_forward(out, lse, qkv, s, chunk);
  } else {
    flash_forward(out, lse, qkv, s);
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH) {
  if (B <= 0 || T <= 0) return;
  bind_thread();
  Shape s = make_shape(B, T, C, NH);
  if (int chunk = gemm_chunk(s, true)) {
    gemm_backward(dqkv, dout, qkv, out, lse, s, chunk);
  } else {
    flash_backward(dqkv, dout, qkv, out, lse, s);
  }
}

}  // namespace ptrain::tensor::cuda
