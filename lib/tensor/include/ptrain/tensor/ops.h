// The op table: every numeric kernel the engine uses, behind one struct of function pointers per
// device. Layers call `ops(device).layernorm_forward(...)` and never know which backend runs.
// CPU (OpenBLAS) is the reference implementation; CUDA (cuBLAS + kernels under cuda/) implements
// the same signatures on device pointers. llm.c conventions:
//   - row-major, contiguous float32; B = batch, T = sequence, C = channels, NH = heads,
//     V = vocab, N = rows (B*T);
//   - every *_backward ACCUMULATES (+=) into each gradient it writes, so microbatches and
//     branches sum naturally; callers zero gradient buffers when a step begins;
//   - pointers are device pointers of the table's device; sizes are element counts.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ptrain::tensor {

enum class Device { kCpu, kCuda };

struct Ops {
  Device device;
  const char* name;  // "cpu", "cuda"

  // --- memory ---
  void* (*alloc)(size_t bytes);  // 64-byte aligned; zero-filled
  void (*free)(void* ptr);
  void (*copy_to_host)(void* host_dst, const void* src, size_t bytes);
  void (*copy_from_host)(void* dst, const void* host_src, size_t bytes);
  void (*copy)(void* dst, const void* src, size_t bytes);  // device to device
  void (*fill)(float* x, float value, size_t n);
  void (*synchronize)();

  // --- GEMM: C = alpha * op(A) * op(B) + beta * C, row-major, op(A) is MxK, op(B) is KxN ---
  void (*gemm)(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
               int lda, const float* B, int ldb, float beta, float* C, int ldc);
  // `count` independent GEMMs with pointer strides (in elements) between them.
  void (*gemm_strided_batched)(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                               const float* A, int lda, int64_t stride_a, const float* B, int ldb,
                               int64_t stride_b, float beta, float* C, int ldc, int64_t stride_c,
                               int count);

  // --- elementwise ---
  void (*add)(float* out, const float* a, const float* b, size_t n);      // out = a + b
  void (*accumulate)(float* dst, const float* src, size_t n);             // dst += src
  void (*scale)(float* x, float alpha, size_t n);                         // x *= alpha
  double (*sum_squares)(const float* x, size_t n);                        // sum x^2, in double
  void (*bias_add)(float* out, const float* bias, int N, int OC);         // out[n,:] += bias
  void (*bias_backward)(float* dbias, const float* dout, int N, int OC);  // dbias += sum_n dout
  void (*gelu_forward)(float* out, const float* inp, size_t n);           // tanh approximation
  void (*gelu_backward)(float* dinp, const float* inp, const float* dout, size_t n);
  void (*relu_forward)(float* out, const float* inp, size_t n);
  void (*relu_backward)(float* dinp, const float* inp, const float* dout, size_t n);

  // --- LayerNorm over the last dim (eps 1e-5): out, mean [N], rstd [N] ---
  void (*layernorm_forward)(float* out, float* mean, float* rstd, const float* inp,
                            const float* weight, const float* bias, int N, int C);
  void (*layernorm_backward)(float* dinp, float* dweight, float* dbias, const float* dout,
                             const float* inp, const float* weight, const float* mean,
                             const float* rstd, int N, int C);

  // --- causal self-attention, flash-style interface ---
  // qkv [B,T,3C] (q | k | v, heads of size C/NH inside each), out [B,T,C], lse [B,NH,T] (the
  // log-sum-exp of each softmax row, saved for backward). Scale 1/sqrt(C/NH). Backward
  // recomputes probabilities from lse; no [T,T] matrix per head needs to outlive a call.
  void (*attention_forward)(float* out, float* lse, const float* qkv, int B, int T, int C, int NH);
  void (*attention_backward)(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, int B, int T, int C, int NH);

  // --- embeddings: out [B*T,C] = wte[tokens] (+ wpe[t] when wpe != nullptr) ---
  void (*embedding_forward)(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                            int B, int T, int C);
  // Deterministic accumulation into dwte [V,C] (and dwpe [T,C] when non-null).
  void (*embedding_backward)(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                             int B, int T, int C);

  // --- softmax cross-entropy over logits [N,V] ---
  // losses[n] = lse[n] - logits[n, targets[n]]; rows with target < 0 are ignored (loss 0).
  void (*crossentropy_forward)(float* losses, float* lse, const float* logits,
                               const int32_t* targets, int N, int V);
  // dlogits[n,:] = (softmax(logits[n,:]) - onehot(targets[n])) * dloss  (written, not added;
  // dlogits may alias logits to save memory).
  void (*crossentropy_backward)(float* dlogits, const float* logits, const float* lse,
                                const int32_t* targets, float dloss, int N, int V);

  // --- optimizers, on flat ranges (the caller applies per-tensor weight decay) ---
  // PyTorch AdamW: p -= lr*wd*p; m,v updated; p -= lr * mhat / (sqrt(vhat) + eps); step >= 1.
  void (*adamw_update)(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                       float beta1, float beta2, float eps, float weight_decay, int64_t step);
  // PyTorch SGD: g += wd*p; buf = momentum*buf + g (buf = g on the first step); nesterov uses
  // g + momentum*buf; p -= lr * update.
  void (*sgd_update)(float* params, const float* grads, float* momentum_buf, size_t n, float lr,
                     float momentum, bool nesterov, float weight_decay, bool first_step);

  // --- bf16 mixed precision (additive: nullptr on a backend without bf16, so check first) ---
  // bf16 values are stored as uint16_t (the upper half of an fp32, rounded to nearest even) so
  // that no device type leaks into this header. A trainer keeps fp32 master weights, converts
  // them (and activations) to bf16 copies, and runs its GEMMs with fp32 accumulation and output.
  void (*f32_to_bf16)(uint16_t* out, const float* inp, size_t n);
  void (*bf16_to_f32)(float* out, const uint16_t* inp, size_t n);
  // As gemm / gemm_strided_batched, with bf16 A and B; C and the accumulation are fp32.
  void (*gemm_bf16)(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
                    int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc);
  void (*gemm_bf16_strided_batched)(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                                    const uint16_t* A, int lda, int64_t stride_a, const uint16_t* B,
                                    int ldb, int64_t stride_b, float beta, float* C, int ldc,
                                    int64_t stride_c, int count);
};

// The CPU table (always present).
const Ops& cpu_ops();
// The CUDA table, or nullptr when ptrain was built without CUDA or no device is usable.
const Ops* cuda_ops();
const Ops& ops(Device device);  // throws ConfigError when the device is unavailable

// Threads the CPU kernels (OpenBLAS and our loops) may use; from nodes.threads_per_proc.
void set_cpu_threads(int threads);
int cpu_threads();

}  // namespace ptrain::tensor
