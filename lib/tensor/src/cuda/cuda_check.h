// Check macros for CUDA runtime and cuBLAS calls (a failure throws ptrain::Error naming the call,
// file and line), per-thread device binding, and per-thread scratch buffers for the kernels.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>

namespace ptrain::tensor::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file,
                                     int line);

// For .cu files, which cannot include fmt: throws InternalError "[file:line] <what>" (a caller
// broke an op's contract, e.g. a shape the kernel does not support).
[[noreturn]] void throw_contract(const char* what, const char* file, int line);

// cudaSetDevice is per host thread: every entry point binds the calling thread once.
void bind_thread_slow();
inline void bind_thread() {
  thread_local bool bound = false;
  if (!bound) {
    bind_thread_slow();
    bound = true;
  }
}

// A device buffer of at least `bytes`, owned by the calling thread and reused across calls
// (slot picks one of a few independent buffers). Valid until the next call with the same slot.
enum class ScratchSlot {
  kReduce,
  kSortKeysIn,
  kSortKeysOut,
  kSortValsIn,
  kSortValsOut,
  kSortTemp,
  kAttnDelta,
  kAttnScores,  // attention's GEMM path: S / P [B',NH,T,T]
  kAttnGrad,    // dP / dS [B',NH,T,T]
  kAttnHeads,   // q, k, v, ... permuted to [B',NH,T,hd]
  kCount
};
void* scratch(ScratchSlot slot, size_t bytes);

}  // namespace ptrain::tensor::cuda

#define CUDA_CHECK(expr)                                                                     \
  do {                                                                                       \
    cudaError_t ptrain_cuda_err_ = (expr);                                                   \
    if (ptrain_cuda_err_ != cudaSuccess)                                                     \
      ::ptrain::tensor::cuda::throw_cuda_error(ptrain_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                      \
  do {                                                                                          \
    cublasStatus_t ptrain_cublas_st_ = (expr);                                                  \
    if (ptrain_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                             \
      ::ptrain::tensor::cuda::throw_cublas_error(ptrain_cublas_st_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: a bad launch configuration is reported at the launch site, named by
// `kernel` (a string literal); faults inside the kernel surface at the next synchronizing call.
#define CUDA_LAUNCH_CHECK(kernel)                                                               \
  do {                                                                                          \
    cudaError_t ptrain_cuda_err_ = cudaGetLastError();                                          \
    if (ptrain_cuda_err_ != cudaSuccess)                                                        \
      ::ptrain::tensor::cuda::throw_cuda_error(ptrain_cuda_err_, "launch of " kernel, __FILE__, \
                                               __LINE__);                                       \
  } while (0)
