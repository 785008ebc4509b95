// Token + position embeddings. The backward is deterministic without atomics: a stable radix
// sort groups the positions of each token (in position order), then one block per distinct
// token adds its rows into dwte in that order, the same order as the CPU loop.
#include <cub/device/device_radix_sort.cuh>

#include "cuda_check.h"
#include "device_utils.cuh"
#include "kernels.h"

namespace ptrain::tensor::cuda {
namespace {

constexpr int kThreads = 256;

// out [B*T,C] = wte[tokens] (+ wpe[t]).
__global__ void embedding_forward_kernel(float* out, const int32_t* tokens, const float* wte,
                                         const float* wpe, int T, int C, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(blockDim.x) * gridDim.x) {
    size_t row = i / C;
    int c = i % C;
    float x = wte[static_cast<size_t>(tokens[row]) * C + c];
    if (wpe) x += wpe[static_cast<size_t>(row % T) * C + c];
    out[i] = x;
  }
}

__global__ void iota_copy_kernel(int32_t* keys, int32_t* vals, const int32_t* tokens, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    keys[i] = tokens[i];
    vals[i] = i;
  }
}

// Block per sorted position; only the first position of each run of equal tokens works, adding
// dout rows of that token's positions (ascending) into dwte.
__global__ void embedding_backward_wte_kernel(float* dwte, const float* dout, const int32_t* keys,
                                              const int32_t* vals, int n, int C) {
  const int start = blockIdx.x;
  const int token = keys[start];
  if (start > 0 && keys[start - 1] == token) return;
  int end = start + 1;
  while (end < n && keys[end] == token) ++end;
  float* dst = dwte + static_cast<size_t>(token) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = dst[c];
    for (int k = start; k < end; ++k) acc += dout[static_cast<size_t>(vals[k]) * C + c];
    dst[c] = acc;
  }
}

// dwpe [T,C] += sum_b dout[b,t,:], summed over b in order.
__global__ void embedding_backward_wpe_kernel(float* dwpe, const float* dout, int B, int T, int C) {
  size_t n = static_cast<size_t>(T) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(blockDim.x) * gridDim.x) {
    float acc = dwpe[i];
    for (int b = 0; b < B; ++b) acc += dout[static_cast<size_t>(b) * n + i];
    dwpe[i] = acc;
  }
}

}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                       int T, int C) {
  size_t n = static_cast<size_t>(B) * T * C;
  if (n == 0) return;
  bind_thread();
  embedding_forward_kernel<<<grid_for(n, kThreads), kThreads>>>(out, tokens, wte, wpe, T, C, n);
  CUDA_LAUNCH_CHECK("embedding_forward_kernel");
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                        int T, int C) {
  const int n = B * T;
  if (n <= 0 || C <= 0) return;
  bind_thread();
  if (dwte) {
    const size_t bytes = static_cast<size_t>(n) * sizeof(int32_t);
    auto* keys_in = static_cast<int32_t*>(scratch(ScratchSlot::kSortKeysIn, bytes));
    auto* keys_out = static_cast<int32_t*>(scratch(ScratchSlot::kSortKeysOut, bytes));
    auto* vals_in = static_cast<int32_t*>(scratch(ScratchSlot::kSortValsIn, bytes));
    auto* vals_out = static_cast<int32_t*>(scratch(ScratchSlot::kSortValsOut, bytes));
    iota_copy_kernel<<<(n + kThreads - 1) / kThreads, kThreads>>>(keys_in, vals_in, tokens, n);
    CUDA_LAUNCH_CHECK("iota_copy_kernel");
    size_t temp_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out, vals_in,
                                               vals_out, n));
    void* temp = scratch(ScratchSlot::kSortTemp, temp_bytes);
    CUDA_CHECK(
        cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, vals_in, vals_out, n));
    int threads = C < kThreads ? ((C + 31) / 32) * 32 : kThreads;
    embedding_backward_wte_kernel<<<n, threads>>>(dwte, dout, keys_out, vals_out, n, C);
    CUDA_LAUNCH_CHECK("embedding_backward_wte_kernel");
  }
  if (dwpe) {
    size_t tc = static_cast<size_t>(T) * C;
    embedding_backward_wpe_kernel<<<grid_for(tc, kThreads), kThreads>>>(dwpe, dout, B, T, C);
    CUDA_LAUNCH_CHECK("embedding_backward_wpe_kernel");
  }
}

}  // namespace ptrain::tensor::cuda
