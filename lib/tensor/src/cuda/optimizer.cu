// AdamW and SGD (PyTorch semantics, see ops.h) over flat fp32 ranges.
#include <cmath>

#include "cuda_check.h"
#include "device_utils.cuh"
#include "kernels.h"

namespace ptrain::tensor::cuda {
namespace {

constexpr int kThreads = 256;

// Same arithmetic, in the same order, as the CPU table, so both agree to rounding.
__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t n,
                             float beta1, float beta2, float eps, float decay, float step_size,
                             float inv_sqrt_bc2) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(blockDim.x) * gridDim.x) {
    float g = grads[i];
    float p = params[i] * decay;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] = p - step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
  }
}

__global__ void sgd_kernel(float* params, const float* grads, float* buf, size_t n, float lr,
                           float momentum, bool nesterov, float weight_decay, bool first_step) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(blockDim.x) * gridDim.x) {
    float g = grads[i] + weight_decay * params[i];
    if (momentum != 0.0f) {
      float b = first_step ? g : momentum * buf[i] + g;
      buf[i] = b;
      g = nesterov ? g + momentum * b : b;
    }
    params[i] -= lr * g;
  }
}

}  // namespace

void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t step) {
  if (n == 0) return;
  bind_thread();
  const float bc1 = 1.0f - static_cast<float>(std::pow(static_cast<double>(beta1), step));
  const float bc2 = 1.0f - static_cast<float>(std::pow(static_cast<double>(beta2), step));
  adamw_kernel<<<grid_for(n, kThreads), kThreads>>>(params, grads, m, v, n, beta1, beta2, eps,
                                                    1.0f - lr * weight_decay, lr / bc1,
                                                    1.0f / std::sqrt(bc2));
  CUDA_LAUNCH_CHECK("adamw_kernel");
}

void sgd_update(float* params, const float* grads, float* momentum_buf, size_t n, float lr,
                float momentum, bool nesterov, float weight_decay, bool first_step) {
  if (n == 0) return;
  bind_thread();
  sgd_kernel<<<grid_for(n, kThreads), kThreads>>>(params, grads, momentum_buf, n, lr, momentum,
                                                  nesterov, weight_decay, first_step);
  CUDA_LAUNCH_CHECK("sgd_kernel");
}

}  // namespace ptrain::tensor::cuda
