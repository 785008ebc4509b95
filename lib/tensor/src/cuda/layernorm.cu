// Fused LayerNorm forward/backward over the last dim (eps 1e-5): one warp per row; the weight and
// bias gradients are column sums done by a second kernel in a fixed order (deterministic, no
// atomics).
#include "cuda_check.h"
#include "device_utils.cuh"
#include "kernels.h"

namespace ptrain::tensor::cuda {
namespace {

constexpr float kEps = 1e-5f;
constexpr int kRowsPerBlock = 8;  // warps per block

// inp, out [N,C]; weight, bias [C]; mean, rstd [N] (either may be nullptr).
__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int N, int C) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;
  const float* x = inp + static_cast<size_t>(row) * C;
  float s = 0.0f;
  for (int c = lane; c < C; c += kWarp) s += x[c];
  const float m = warp_sum(s) / C;
  float v = 0.0f;
  for (int c = lane; c < C; c += kWarp) {
    float d = x[c] - m;
    v += d * d;
  }
  const float r = 1.0f / sqrtf(warp_sum(v) / C + kEps);
  float* y = out + static_cast<size_t>(row) * C;
  for (int c = lane; c < C; c += kWarp) y[c] = (x[c] - m) * r * weight[c] + bias[c];
  if (lane == 0) {
    if (mean) mean[row] = m;
    if (rstd) rstd[row] = r;
  }
}

// dinp [N,C] += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd, dnorm = weight * dout.
__global__ void layernorm_backward_dinp_kernel(float* dinp, const float* dout, const float* inp,
                                               const float* weight, const float* mean,
                                               const float* rstd, int N, int C) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;
  const size_t off = static_cast<size_t>(row) * C;
  const float m = mean[row], r = rstd[row];
  float a = 0.0f, b = 0.0f;
  for (int c = lane; c < C; c += kWarp) {
    float norm = (inp[off + c] - m) * r;
    float dnorm = weight[c] * dout[off + c];
    a += dnorm;
    b += dnorm * norm;
  }
  a = warp_sum(a) / C;
  b = warp_sum(b) / C;
  for (int c = lane; c < C; c += kWarp) {
    float norm = (inp[off + c] - m) * r;
    float dnorm = weight[c] * dout[off + c];
    dinp[off + c] += (dnorm - a - norm * b) * r;
  }
}

// dweight [C] += sum_n dout * norm, dbias [C] += sum_n dout. Block (32, 32) owns 32 columns.
__global__ void layernorm_backward_params_kernel(float* dweight, float* dbias, const float* dout,
                                                 const float* inp, const float* mean,
                                                 const float* rstd, int N, int C) {
  __shared__ float pw[32][33];
  __shared__ float pb[32][33];
  const int col = blockIdx.x * 32 + threadIdx.x;
  float sw = 0.0f, sb = 0.0f;
  if (col < C) {
    for (int n = threadIdx.y; n < N; n += blockDim.y) {
      size_t i = static_cast<size_t>(n) * C + col;
      float dy = dout[i];
      sw += dy * (inp[i] - mean[n]) * rstd[n];
      sb += dy;
    }
  }
  pw[threadIdx.y][threadIdx.x] = sw;
  pb[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && col < C) {
    float tw = 0.0f, tb = 0.0f;
    for (int r = 0; r < blockDim.y; ++r) {
      tw += pw[r][threadIdx.x];
      tb += pb[r][threadIdx.x];
    }
    if (dweight) dweight[col] += tw;
    if (dbias) dbias[col] += tb;
  }
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
  if (N <= 0 || C <= 0) return;
  bind_thread();
  unsigned blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  layernorm_forward_kernel<<<blocks, kRowsPerBlock * kWarp>>>(out, mean, rstd, inp, weight, bias, N,
                                                              C);
  CUDA_LAUNCH_CHECK("layernorm_forward_kernel");
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C) {
  if (N <= 0 || C <= 0) return;
  bind_thread();
  if (dinp) {
    unsigned blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
    layernorm_backward_dinp_kernel<<<blocks, kRowsPerBlock * kWarp>>>(dinp, dout, inp, weight, mean,
                                                                      rstd, N, C);
    CUDA_LAUNCH_CHECK("layernorm_backward_dinp_kernel");
  }
  if (dweight || dbias) {
    layernorm_backward_params_kernel<<<(C + 31) / 32, dim3(32, 32)>>>(dweight, dbias, dout, inp,
                                                                      mean, rstd, N, C);
    CUDA_LAUNCH_CHECK("layernorm_backward_params_kernel");
  }
}

}  // namespace ptrain::tensor::cuda
