// The op table: every numeric kernel the engine uses, behind one struct of function pointers per
// device. Layers call `ops(device).layernorm_forward(...)` and never know which backend runs.
// CPU (OpenBLAS) is the reference implementation; CUDA (cuBLAS + kernels under cuda/) implements
// the same signatures on device pointers. llm.c conventions:
//   - row-major, contiguous float32; B = batch, T = sequence, C = channels, NH = heads,
//     V = vocab, N = rows (B*T);
//   - every *_backward ACCUMULATES (+=) into each gradient it writes, so microbatches and
//     branches sum naturally; callers zero gradient buffers when a step begins;
//   - pointers are device pointers of the table's device; sizes are element counts.
// Every backend fills every entry, in one function (cpu_ops.cc: table(), cuda/cuda_ops.cc:
// make_table()); PTRAIN_OPS_KERNELS below lists them for the test that checks it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

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

  // --- bf16 mixed precision ---
  // bf16 values are stored as uint16_t (the upper half of an fp32, rounded to nearest even) so
  // that no device type leaks into this header. A trainer keeps fp32 master weights, converts
  // them (and activations) to bf16 copies, and runs its GEMMs with fp32 accumulation and output.
  // The CPU table widens bf16 operands to fp32 and runs its fp32 GEMM (a reference, not fast).
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

// Every function-pointer entry of Ops, in declaration order (`device` and `name` are the only
// other members). X(entry) is expanded once per entry. The checks below make a new entry that
// is missing here a compile error, so a test over this list sees every entry.
// clang-format off
#define PTRAIN_OPS_KERNELS(X) \
  X(alloc) \
  X(free) \
  X(copy_to_host) \
  X(copy_from_host) \
  X(copy) \
  X(fill) \
  X(synchronize) \
  X(gemm) \
  X(gemm_strided_batched) \
  X(add) \
  X(accumulate) \
  X(scale) \
  X(sum_squares) \
  X(bias_add) \
  X(bias_backward) \
  X(gelu_forward) \
  X(gelu_backward) \
  X(relu_forward) \
  X(relu_backward) \
  X(layernorm_forward) \
  X(layernorm_backward) \
  X(attention_forward) \
  X(attention_backward) \
  X(embedding_forward) \
  X(embedding_backward) \
  X(crossentropy_forward) \
  X(crossentropy_backward) \
  X(adamw_update) \
  X(sgd_update) \
  X(f32_to_bf16) \
  X(bf16_to_f32) \
  X(gemm_bf16) \
  X(gemm_bf16_strided_batched)
// clang-format on

namespace detail {

// Counts the members of an aggregate: the most initializers T{...} accepts.
struct AnyMember {
  template <class T>
  operator T() const;  // never defined: used in unevaluated requires-expressions only
};
template <class T, class... Inits>
constexpr size_t aggregate_members() {
  if constexpr (requires { T{Inits{}..., AnyMember{}}; }) {
    return aggregate_members<T, Inits..., AnyMember>();
  } else {
    return sizeof...(Inits);
  }
}

#define PTRAIN_OPS_COUNT_ONE(entry) +1
inline constexpr size_t kOpsKernels = 0 PTRAIN_OPS_KERNELS(PTRAIN_OPS_COUNT_ONE);
#undef PTRAIN_OPS_COUNT_ONE

#define PTRAIN_OPS_IS_FUNCTION_POINTER(entry)                                        \
  static_assert(std::is_pointer_v<decltype(Ops::entry)> &&                           \
                    std::is_function_v<std::remove_pointer_t<decltype(Ops::entry)>>, \
                "Ops::" #entry " is not a function pointer");
PTRAIN_OPS_KERNELS(PTRAIN_OPS_IS_FUNCTION_POINTER)
#undef PTRAIN_OPS_IS_FUNCTION_POINTER

static_assert(aggregate_members<Ops>() == 2 + kOpsKernels,
              "Ops has an entry that PTRAIN_OPS_KERNELS does not list: add it there (and fill "
              "it in every backend's table)");

}  // namespace detail

// The CPU table (always present).
const Ops& cpu_ops();
// The CUDA table, or nullptr when ptrain was built without CUDA or no device is usable.
const Ops* cuda_ops();
const Ops& ops(Device device);  // throws ConfigError when the device is unavailable

// Threads the CPU kernels (OpenBLAS and our loops) may use; from nodes.threads_per_proc.
void set_cpu_threads(int threads);
int cpu_threads();

}  // namespace ptrain::tensor
