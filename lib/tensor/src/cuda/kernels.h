// Host entry points of the CUDA kernels (one .cu file per layer); each has the signature of its
// Ops entry in ptrain/tensor/ops.h, takes device pointers and runs on the legacy default stream.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ptrain::tensor::cuda {

// elementwise.cu
void fill(float* x, float value, size_t n);
void add(float* out, const float* a, const float* b, size_t n);
void accumulate(float* dst, const float* src, size_t n);
void scale(float* x, float alpha, size_t n);
double sum_squares(const float* x, size_t n);
void bias_add(float* out, const float* bias, int N, int OC);
void bias_backward(float* dbias, const float* dout, int N, int OC);
void gelu_forward(float* out, const float* inp, size_t n);
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);
void relu_forward(float* out, const float* inp, size_t n);
void relu_backward(float* dinp, const float* inp, const float* dout, size_t n);
void f32_to_bf16(uint16_t* out, const float* inp, size_t n);
void bf16_to_f32(float* out, const uint16_t* inp, size_t n);

// layernorm.cu
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C);

// cuda_ops.cc, for kernels that chain GEMMs (attention.cu): the table's fp32 strided-batched GEMM
// (row-major, exact fp32) on this thread's cuBLAS handle and the legacy default stream.
void batched_gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta,
                  float* C, int ldc, int64_t stride_c, int count);

// cuda_ops.cc: how attention picks its kernels, read from the environment on every call.
//   PTRAIN_ATTENTION=auto|flash|gemm  (default auto; anything else is a ConfigError)
//   PTRAIN_ATTENTION_SCRATCH_MB=N     bound on the GEMM path's scratch per call (default 1024)
struct AttentionPolicy {
  enum Mode { kAuto, kFlash, kGemm } mode = kAuto;
  size_t scratch_bytes = size_t(1) << 30;
};
AttentionPolicy attention_policy();

// attention.cu
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH);

// embedding.cu
void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                       int T, int C);
void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                        int T, int C);

// crossentropy.cu
void crossentropy_forward(float* losses, float* lse, const float* logits, const int32_t* targets,
                          int N, int V);
void crossentropy_backward(float* dlogits, const float* logits, const float* lse,
                           const int32_t* targets, float dloss, int N, int V);

// optimizer.cu
void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t step);
void sgd_update(float* params, const float* grads, float* momentum_buf, size_t n, float lr,
                float momentum, bool nesterov, float weight_decay, bool first_step);

}  // namespace ptrain::tensor::cuda
