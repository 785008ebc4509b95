// bf16 mixed precision for a model's GEMMs: a bf16 shadow of the fp32 master weights (refreshed
// once per forward pass) and bf16 copies of the GEMM inputs; accumulation and outputs stay fp32.
// Internal to nn: Gpt uses it when GptConfig::precision is bf16 (CUDA tensor cores, or oneDNN's
// bf16 kernels on a CPU with AVX512-BF16 or AMX).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ptrain/tensor/tensor.h"

namespace ptrain::nn {

class Bf16Gemms {
 public:
  // `params` [n] is the model's flat fp32 parameter buffer; weights passed below point into it.
  Bf16Gemms(const tensor::Ops& ops, const float* params, size_t n);

  // Converts the master weights into the shadow copy (call after every optimizer step; Gpt calls
  // it at the start of every forward pass, which covers that).
  void refresh();

  // As nn::conv1d_forward / conv1d_backward / linear_forward / linear_backward (layers.h), with
  // bf16 operands. dinp is written, dweight and dbias accumulate.
  void conv1d_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                      int IC, int OC);
  void conv1d_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, int N, int IC, int OC);
  void linear_forward(float* out, const float* inp, const float* weight, int N, int IC, int OC);
  void linear_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                       const float* weight, int N, int IC, int OC);

 private:
  const uint16_t* shadow_of(const float* weight) const;
  // bf16 copy of x [n] in scratch slot 0 or 1 (grown on demand).
  const uint16_t* stage(int slot, const float* x, size_t n);

  const tensor::Ops& o_;
  const float* params_;
  size_t n_;
  tensor::Tensor shadow_;   // [n] bf16
  tensor::Tensor slot_[2];  // bf16 scratch for GEMM inputs
};

}  // namespace ptrain::nn
