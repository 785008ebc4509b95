// Causal self-attention, flash-style: one block per (query tile, head, batch) streams key/value
// tiles through shared memory with an online softmax and saves the row log-sum-exp; backward
// recomputes the probabilities from it. Nothing of size [T,T] is ever stored.
//
// Layout (ops.h): qkv [B,T,3C] = q | k | v, head h uses channels [h*HS, (h+1)*HS) of each;
// out [B,T,C]; lse [B,NH,T]. One warp owns one row (a query in forward and dq, a key in dk/dv);
// the 32 lanes take the 32 rows of the streamed tile for the dot products, and the head
// dimensions (lane, lane+32, ...) for the accumulations. HS <= 32 * kDimsPerLane.
#include <cmath>
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
  if (HS > 8 * kWarp) {
    std::snprintf(msg, sizeof msg, "attention: head size %d > 256 is not supported on CUDA", HS);
    throw_contract(msg, __FILE__, __LINE__);
  }
  return Shape{B, T, C, NH, HS, 1.0f / std::sqrt(static_cast<float>(HS))};
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

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
  if (B <= 0 || T <= 0) return;
  bind_thread();
  Shape s = make_shape(B, T, C, NH);
  size_t smem = kRows * s.HS + kTile * (s.HS + 1) + kTile * s.HS;
  dispatch_dpl(s.HS, [&](auto dpl) {
    launch(attention_forward_kernel<decltype(dpl)::value>, "attention_forward_kernel", smem, s, out,
           lse, qkv);
  });
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH) {
  if (B <= 0 || T <= 0) return;
  bind_thread();
  Shape s = make_shape(B, T, C, NH);
  const size_t rows = static_cast<size_t>(B) * NH * T;
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

}  // namespace ptrain::tensor::cuda
