// Fused softmax cross-entropy over logits rows: one block per row computes the max, the
// log-sum-exp and the loss; the backward writes (softmax - onehot) * dloss in place if asked.
#include "cuda_check.h"
#include "device_utils.cuh"
#include "kernels.h"

namespace ptrain::tensor::cuda {
namespace {

constexpr int kThreads = 512;

// logits [N,V]; losses, lse [N]. A target >= V is a caller bug: its loss is NaN so it shows.
__global__ void crossentropy_forward_kernel(float* losses, float* lse, const float* logits,
                                            const int32_t* targets, int V) {
  __shared__ float shared[32];
  const int n = blockIdx.x;
  const float* z = logits + static_cast<size_t>(n) * V;
  float mx = -INFINITY;
  for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, z[v]);
  mx = block_max(mx, shared);
  float sum = 0.0f;
  for (int v = threadIdx.x; v < V; v += blockDim.x) sum += expf(z[v] - mx);
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) {
    float l = mx + logf(sum);
    if (lse) lse[n] = l;
    int32_t t = targets[n];
    losses[n] = t < 0 ? 0.0f : (t < V ? l - z[t] : NAN);
  }
}

// dlogits [N,V] = (exp(logits - lse) - onehot(target)) * dloss; zero rows for ignored targets.
// dlogits may alias logits: each element is read and written by the same thread.
__global__ void crossentropy_backward_kernel(float* dlogits, const float* logits, const float* lse,
                                             const int32_t* targets, float dloss, int V) {
  const int n = blockIdx.x;
  const size_t off = static_cast<size_t>(n) * V;
  const int32_t t = targets[n];
  if (t < 0) {
    for (int v = threadIdx.x; v < V; v += blockDim.x) dlogits[off + v] = 0.0f;
    return;
  }
  const float l = lse[n];
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    float p = expf(logits[off + v] - l);
    dlogits[off + v] = (p - (v == t ? 1.0f : 0.0f)) * dloss;
  }
}

}  // namespace

void crossentropy_forward(float* losses, float* lse, const float* logits, const int32_t* targets,
                          int N, int V) {
  if (N <= 0) return;
  bind_thread();
  crossentropy_forward_kernel<<<N, kThreads>>>(losses, lse, logits, targets, V);
  CUDA_LAUNCH_CHECK("crossentropy_forward_kernel");
}

void crossentropy_backward(float* dlogits, const float* logits, const float* lse,
                           const int32_t* targets, float dloss, int N, int V) {
  if (N <= 0) return;
  bind_thread();
  crossentropy_backward_kernel<<<N, kThreads>>>(dlogits, logits, lse, targets, dloss, V);
  CUDA_LAUNCH_CHECK("crossentropy_backward_kernel");
}

}  // namespace ptrain::tensor::cuda
