// Elementwise kernels, bias add/backward, GELU/ReLU, sum of squares and bf16 conversions.
#include <cuda_bf16.h>

#include "cuda_check.h"
#include "device_utils.cuh"
#include "kernels.h"

namespace ptrain::tensor::cuda {
namespace {

constexpr int kThreads = 256;
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

#define GRID_STRIDE(i, n)                                                 \
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < (n); \
       i += size_t(blockDim.x) * gridDim.x)

__global__ void fill_kernel(float* x, float value, size_t n) {
  GRID_STRIDE(i, n) x[i] = value;
}
__global__ void add_kernel(float* out, const float* a, const float* b, size_t n) {
  GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}
__global__ void accumulate_kernel(float* dst, const float* src, size_t n) {
  GRID_STRIDE(i, n) dst[i] += src[i];
}
__global__ void scale_kernel(float* x, float alpha, size_t n) {
  GRID_STRIDE(i, n) x[i] *= alpha;
}
__global__ void bias_add_kernel(float* out, const float* bias, size_t n, int OC) {
  GRID_STRIDE(i, n) out[i] += bias[i % OC];
}
__global__ void gelu_forward_kernel(float* out, const float* inp, size_t n) {
  GRID_STRIDE(i, n) {
    float x = inp[i];
    float u = kGeluScale * (x + kGeluCubic * x * x * x);
    out[i] = 0.5f * x * (1.0f + tanhf(u));
  }
}
__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, size_t n) {
  GRID_STRIDE(i, n) {
    float x = inp[i];
    float u = kGeluScale * (x + kGeluCubic * x * x * x);
    float th = tanhf(u);
    float du = kGeluScale * (1.0f + 3.0f * kGeluCubic * x * x);
    float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
    dinp[i] += grad * dout[i];
  }
}
__global__ void relu_forward_kernel(float* out, const float* inp, size_t n) {
  GRID_STRIDE(i, n) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}
__global__ void relu_backward_kernel(float* dinp, const float* inp, const float* dout, size_t n) {
  GRID_STRIDE(i, n) dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
}
__global__ void f32_to_bf16_kernel(uint16_t* out, const float* inp, size_t n) {
  GRID_STRIDE(i, n) out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(inp[i]));
}
__global__ void bf16_to_f32_kernel(float* out, const uint16_t* inp, size_t n) {
  GRID_STRIDE(i, n) out[i] = __bfloat162float(__ushort_as_bfloat16(inp[i]));
}

// Pass 1 of sum_squares: one double partial per block (fixed grid, so the result is
// deterministic). Pass 2: one block adds the partials in a fixed order.
constexpr int kSumBlocks = 1024;
__global__ void sum_squares_partial_kernel(double* partial, const float* x, size_t n) {
  __shared__ double shared[32];
  double s = 0.0;
  GRID_STRIDE(i, n) s += static_cast<double>(x[i]) * x[i];
  s = block_sum(s, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
__global__ void sum_partials_kernel(double* result, const double* partial, int count) {
  __shared__ double shared[32];
  double s = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  s = block_sum(s, shared);
  if (threadIdx.x == 0) *result = s;
}

// dbias[oc] += sum_n dout[n, oc]. Block (32, 32) owns 32 columns; each of its 32 row lanes sums a
// strided subset of rows, then lane 0 adds the 32 partial sums in order: deterministic.
__global__ void bias_backward_kernel(float* dbias, const float* dout, int N, int OC) {
  __shared__ float partial[32][33];
  const int col = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (col < OC) {
    for (int n = threadIdx.y; n < N; n += blockDim.y) s += dout[static_cast<size_t>(n) * OC + col];
  }
  partial[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < OC) {
    float total = 0.0f;
    for (int r = 0; r < blockDim.y; ++r) total += partial[r][threadIdx.x];
    dbias[col] += total;
  }
}

}  // namespace

#define LAUNCH_1D(kernel, n, ...)                               \
  do {                                                          \
    if ((n) == 0) return;                                       \
    bind_thread();                                              \
    kernel<<<grid_for((n), kThreads), kThreads>>>(__VA_ARGS__); \
    CUDA_LAUNCH_CHECK(#kernel);                                 \
  } while (0)

void fill(float* x, float value, size_t n) {
  LAUNCH_1D(fill_kernel, n, x, value, n);
}
void add(float* out, const float* a, const float* b, size_t n) {
  LAUNCH_1D(add_kernel, n, out, a, b, n);
}
void accumulate(float* dst, const float* src, size_t n) {
  LAUNCH_1D(accumulate_kernel, n, dst, src, n);
}
void scale(float* x, float alpha, size_t n) {
  LAUNCH_1D(scale_kernel, n, x, alpha, n);
}
void bias_add(float* out, const float* bias, int N, int OC) {
  size_t n = static_cast<size_t>(N) * OC;
  LAUNCH_1D(bias_add_kernel, n, out, bias, n, OC);
}
void gelu_forward(float* out, const float* inp, size_t n) {
  LAUNCH_1D(gelu_forward_kernel, n, out, inp, n);
}
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  LAUNCH_1D(gelu_backward_kernel, n, dinp, inp, dout, n);
}
void relu_forward(float* out, const float* inp, size_t n) {
  LAUNCH_1D(relu_forward_kernel, n, out, inp, n);
}
void relu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  LAUNCH_1D(relu_backward_kernel, n, dinp, inp, dout, n);
}
void f32_to_bf16(uint16_t* out, const float* inp, size_t n) {
  LAUNCH_1D(f32_to_bf16_kernel, n, out, inp, n);
}
void bf16_to_f32(float* out, const uint16_t* inp, size_t n) {
  LAUNCH_1D(bf16_to_f32_kernel, n, out, inp, n);
}

void bias_backward(float* dbias, const float* dout, int N, int OC) {
  if (N <= 0 || OC <= 0) return;
  bind_thread();
  dim3 block(32, 32);
  bias_backward_kernel<<<(OC + 31) / 32, block>>>(dbias, dout, N, OC);
  CUDA_LAUNCH_CHECK("bias_backward_kernel");
}

double sum_squares(const float* x, size_t n) {
  if (n == 0) return 0.0;
  bind_thread();
  auto* partial =
      static_cast<double*>(scratch(ScratchSlot::kReduce, (kSumBlocks + 1) * sizeof(double)));
  sum_squares_partial_kernel<<<kSumBlocks, kThreads>>>(partial, x, n);
  CUDA_LAUNCH_CHECK("sum_squares_partial_kernel");
  sum_partials_kernel<<<1, 1024>>>(partial + kSumBlocks, partial, kSumBlocks);
  CUDA_LAUNCH_CHECK("sum_partials_kernel");
  double result = 0.0;
  CUDA_CHECK(cudaMemcpy(&result, partial + kSumBlocks, sizeof(double), cudaMemcpyDeviceToHost));
  return result;
}

}  // namespace ptrain::tensor::cuda
