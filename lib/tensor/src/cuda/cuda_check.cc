// Error reporting, device choice, per-thread binding and scratch buffers for the CUDA backend.
#include "cuda_check.h"

#include <array>
#include <atomic>
#include <memory>

#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/core/log.h"

namespace ptrain::tensor::cuda {

std::atomic<int> g_device{-1};  // set once by get_ops() (cuda_ops.cc)

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  std::string what = fmt::format("[{}:{}] {} failed: {} ({})", file, line, call,
                                 cudaGetErrorString(err), cudaGetErrorName(err));
  if (err == cudaErrorMemoryAllocation) {
    throw Error(what,
                "the GPU is out of memory: lower data.batch_size or model.seq_len, or use "
                "more ranks");
  }
  throw Error(what);
}

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  std::string what = fmt::format("[{}:{}] {} failed: {} ({})", file, line, call,
                                 cublasGetStatusString(status), cublasGetStatusName(status));
  if (status == CUBLAS_STATUS_ALLOC_FAILED) {
    throw Error(what, "the GPU is out of memory: lower data.batch_size or model.seq_len");
  }
  throw Error(what);
}

void throw_contract(const char* what, const char* file, int line) {
  throw InternalError(fmt::format("[{}:{}] {}", file, line, what));
}

void bind_thread_slow() {
  int device = g_device.load();
  PTRAIN_CHECK(device >= 0, "CUDA op called before cuda::get_ops() chose a device");
  CUDA_CHECK(cudaSetDevice(device));
}

namespace {

struct CudaFree {
  void operator()(void* p) const {
    cudaError_t err = cudaFree(p);
    // At process exit the runtime may already be unloading; nothing is left to free then.
    if (err != cudaSuccess && err != cudaErrorCudartUnloading) {
      spdlog::warn("cudaFree of a scratch buffer failed: {}", cudaGetErrorString(err));
    }
  }
};

struct Scratch {
  std::unique_ptr<void, CudaFree> ptr;
  size_t bytes = 0;
};

}  // namespace

void* scratch(ScratchSlot slot, size_t bytes) {
  thread_local std::array<Scratch, static_cast<size_t>(ScratchSlot::kCount)> buffers;
  Scratch& s = buffers[static_cast<size_t>(slot)];
  if (s.bytes < bytes || !s.ptr) {
    size_t want = bytes < 256 ? 256 : bytes + bytes / 4;  // grow with headroom
    s.ptr.reset();
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, want));
    s.ptr.reset(p);
    s.bytes = want;
  }
  return s.ptr.get();
}

}  // namespace ptrain::tensor::cuda
