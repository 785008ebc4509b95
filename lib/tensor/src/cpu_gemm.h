// The CPU GEMM dispatch: each fp32 or bf16 GEMM goes to oneDNN's matmul (primitives cached per
// shape) or to OpenBLAS's sgemm, whichever the policy below picks for the shape and the kernels
// this machine has. Row-major, op(A) is MxK, op(B) is KxN, C = alpha * op(A) op(B) + beta * C.
#pragma once

#include <cstdint>
#include <string>

namespace ptrain::tensor::cpu {

enum class GemmBackend { kOpenBlas, kDnnl };

// Which library runs an fp32 GEMM of this shape (PTRAIN_CPU_GEMM=openblas|dnnl forces one).
GemmBackend choose_gemm_backend(bool trans_a, bool trans_b, int M, int N, int K);

// fp32 GEMMs, `count` of them with element strides between them (count 1: strides unused).
void gemm_f32(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
              int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta, float* C,
              int ldc, int64_t stride_c, int count);

// The same through one library (the op tests and `ptrain bench step` compare them).
void gemm_f32_openblas(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                       int lda, const float* B, int ldb, float beta, float* C, int ldc);
void gemm_f32_dnnl(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                   int lda, int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta,
                   float* C, int ldc, int64_t stride_c, int count);

// bf16 A and B (uint16_t bit patterns), fp32 C and accumulation, through oneDNN. Only when
// dnnl_has_bf16(): elsewhere oneDNN would emulate bf16 slowly and the caller widens instead.
void gemm_bf16_dnnl(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
                    int lda, int64_t stride_a, const uint16_t* B, int ldb, int64_t stride_b,
                    float beta, float* C, int ldc, int64_t stride_c, int count);

// Notes a bf16 GEMM for cpu_gemm_record (fp32 ones are noted by gemm_f32).
void record_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, int lda,
                 int64_t stride_a, int ldb, int64_t stride_b, float beta, int ldc, int64_t stride_c,
                 int count);

// oneDNN's effective ISA has AVX-512 (fp32 kernels worth using) / native bf16 dot products.
bool dnnl_has_avx512();
bool dnnl_has_bf16();
// "avx512_core_bf16", "avx2", ... (oneDNN's name for the ISA it dispatches to).
std::string dnnl_isa_name();
std::string dnnl_version_string();  // "2.6.3"
// OpenBLAS's kernel core ("Haswell", "SkylakeX", ...) and whether it has AVX-512 kernels.
std::string openblas_core_name();
bool openblas_has_avx512();

// Primitives in the cache (for tests of the cache itself).
size_t dnnl_cached_primitives();

}  // namespace ptrain::tensor::cpu
