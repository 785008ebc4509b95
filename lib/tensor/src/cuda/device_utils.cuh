// Device-side helpers shared by the kernels: warp and block reductions, launch sizes.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace ptrain::tensor::cuda {

constexpr int kWarp = 32;

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `shared` holds 32 values. The order is fixed, so results are deterministic.
template <class T>
__device__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : T(0);
  return warp_sum(v);
}

__device__ inline float block_max(float v, float* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(v);
}

// Grid size for a grid-stride loop over n elements with `threads` per block.
inline unsigned grid_for(size_t n, int threads) {
  size_t blocks = (n + threads - 1) / threads;
  const size_t kMaxBlocks = 132 * 32;  // enough to fill any current GPU
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return blocks == 0 ? 1u : static_cast<unsigned>(blocks);
}

}  // namespace ptrain::tensor::cuda
