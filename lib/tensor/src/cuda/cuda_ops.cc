// The CUDA op table: memory and GEMMs (cuBLAS) here, kernels in the .cu files beside this one.
// GEMMs are row-major on top of column-major cuBLAS by the usual swap: C^T = op(B)^T op(A)^T.
// fp32 GEMMs use CUBLAS_COMPUTE_32F (exact fp32, no TF32); bf16 GEMMs take bf16 A and B and
// accumulate and write fp32.
#include "cuda_ops.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <memory>
#include <mutex>

#include "cuda_check.h"
#include "kernels.h"
#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/core/log.h"

namespace ptrain::tensor::cuda {

extern std::atomic<int> g_device;  // cuda_check.cc

namespace {

constexpr size_t kCublasWorkspaceBytes = 32u << 20;  // cuBLAS's recommendation for Hopper

// One cuBLAS handle per host thread (handles are not safe to share between threads), bound to
// the legacy default stream, with its own workspace.
class Blas {
 public:
  Blas() {
    CUBLAS_CHECK(cublasCreate(&handle_));
    CUDA_CHECK(cudaMalloc(&workspace_, kCublasWorkspaceBytes));
    CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace_, kCublasWorkspaceBytes));
    CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
  }
  ~Blas() {
    // At process exit the runtime may be unloading already; errors here change nothing.
    cublasDestroy(handle_);
    cudaFree(workspace_);
  }
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
};

cublasHandle_t blas() {
  bind_thread();
  thread_local Blas b;
  return b.get();
}

cublasOperation_t op(bool trans) {
  return trans ? CUBLAS_OP_T : CUBLAS_OP_N;
}

// --- memory ---
void* alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  bind_thread();
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, bytes));
  CUDA_CHECK(cudaMemset(p, 0, bytes));
  return p;
}

void free_(void* ptr) {
  if (!ptr) return;
  bind_thread();
  // Called from destructors: report, never throw.
  cudaError_t err = cudaFree(ptr);
  if (err != cudaSuccess && err != cudaErrorCudartUnloading) {
    spdlog::error("cudaFree({}) failed: {}", ptr, cudaGetErrorString(err));
  }
}

void copy_any(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  bind_thread();
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
}

void synchronize() {
  bind_thread();
  CUDA_CHECK(cudaDeviceSynchronize());
}

// --- GEMM ---
void gemm_typed(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const void* A,
                int lda, const void* B, int ldb, float beta, float* C, int ldc, cudaDataType_t ab) {
  if (M <= 0 || N <= 0) return;
  CUBLAS_CHECK(cublasGemmEx(blas(), op(trans_b), op(trans_a), N, M, K, &alpha, B, ab, ldb, A, ab,
                            lda, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
}

void gemm_strided_typed(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const void* A,
                        int lda, int64_t stride_a, const void* B, int ldb, int64_t stride_b,
                        float beta, float* C, int ldc, int64_t stride_c, int count,
                        cudaDataType_t ab) {
  if (M <= 0 || N <= 0 || count <= 0) return;
  CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      blas(), op(trans_b), op(trans_a), N, M, K, &alpha, B, ab, ldb, stride_b, A, ab, lda, stride_a,
      &beta, C, CUDA_R_32F, ldc, stride_c, count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  gemm_typed(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, CUDA_R_32F);
}

void gemm_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                          const float* A, int lda, int64_t stride_a, const float* B, int ldb,
                          int64_t stride_b, float beta, float* C, int ldc, int64_t stride_c,
                          int count) {
  gemm_strided_typed(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
                     ldc, stride_c, count, CUDA_R_32F);
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
               int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc) {
  gemm_typed(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, CUDA_R_16BF);
}

void gemm_bf16_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                               const uint16_t* A, int lda, int64_t stride_a, const uint16_t* B,
                               int ldb, int64_t stride_b, float beta, float* C, int ldc,
                               int64_t stride_c, int count) {
  gemm_strided_typed(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
                     ldc, stride_c, count, CUDA_R_16BF);
}

Ops make_table() {
  Ops o{};
  o.device = Device::kCuda;
  o.name = "cuda";
  o.alloc = alloc;
  o.free = free_;
  o.copy_to_host = copy_any;
  o.copy_from_host = copy_any;
  o.copy = copy_any;
  o.fill = fill;
  o.synchronize = synchronize;
  o.gemm = gemm;
  o.gemm_strided_batched = gemm_strided_batched;
  o.add = add;
  o.accumulate = accumulate;
  o.scale = scale;
  o.sum_squares = sum_squares;
  o.bias_add = bias_add;
  o.bias_backward = bias_backward;
  o.gelu_forward = gelu_forward;
  o.gelu_backward = gelu_backward;
  o.relu_forward = relu_forward;
  o.relu_backward = relu_backward;
  o.layernorm_forward = layernorm_forward;
  o.layernorm_backward = layernorm_backward;
  o.attention_forward = attention_forward;
  o.attention_backward = attention_backward;
  o.embedding_forward = embedding_forward;
  o.embedding_backward = embedding_backward;
  o.crossentropy_forward = crossentropy_forward;
  o.crossentropy_backward = crossentropy_backward;
  o.adamw_update = adamw_update;
  o.sgd_update = sgd_update;
  o.f32_to_bf16 = f32_to_bf16;
  o.bf16_to_f32 = bf16_to_f32;
  o.gemm_bf16 = gemm_bf16;
  o.gemm_bf16_strided_batched = gemm_bf16_strided_batched;
  return o;
}

int choose_device(int count) {
  if (auto explicit_device = env_get("PTRAIN_CUDA_DEVICE")) {
    long d = env_int("PTRAIN_CUDA_DEVICE", 0);
    if (d < 0 || d >= count) {
      throw ConfigError(
          fmt::format("PTRAIN_CUDA_DEVICE={} but only {} CUDA device(s) are visible", d, count),
          "unset it or pick an index below the device count");
    }
    return static_cast<int>(d);
  }
  if (env_get("CUDA_VISIBLE_DEVICES")) return 0;  // the launcher exposed this worker's GPU only
  long local_rank = env_int("LOCAL_RANK", 0);
  return static_cast<int>((local_rank < 0 ? 0 : local_rank) % count);
}

std::mutex g_mutex;
std::string g_reason;

const Ops* init() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_reason = err != cudaSuccess ? fmt::format("cudaGetDeviceCount: {}", cudaGetErrorString(err))
                                  : std::string("no CUDA device is visible");
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    spdlog::debug("CUDA backend unavailable: {}", g_reason);
    return nullptr;
  }
  int device = choose_device(count);
  CUDA_CHECK(cudaSetDevice(device));
  g_device.store(device);
  static const Ops table = make_table();
  return &table;
}

}  // namespace

void batched_gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta,
                  float* C, int ldc, int64_t stride_c, int count) {
  gemm_strided_batched(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta,
                       C, ldc, stride_c, count);
}

AttentionPolicy attention_policy() {
  AttentionPolicy p;
  const std::string mode = env_or("PTRAIN_ATTENTION", "auto");
  if (mode == "auto" || mode.empty()) {
    p.mode = AttentionPolicy::kAuto;
  } else if (mode == "flash") {
    p.mode = AttentionPolicy::kFlash;
  } else if (mode == "gemm") {
    p.mode = AttentionPolicy::kGemm;
  } else {
    throw ConfigError(fmt::format("PTRAIN_ATTENTION={} is not one of auto, flash, gemm", mode),
                      "unset it to let the shape pick the CUDA attention kernels");
  }
  long mb = env_int("PTRAIN_ATTENTION_SCRATCH_MB", 1024);
  p.scratch_bytes = static_cast<size_t>(mb < 0 ? 0 : mb) << 20;
  return p;
}

const Ops* get_ops() {
  static const Ops* table = init();
  return table;
}

std::string unavailable_reason() {
  get_ops();
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_reason;
}

int device_index() {
  return g_device.load();
}

}  // namespace ptrain::tensor::cuda
