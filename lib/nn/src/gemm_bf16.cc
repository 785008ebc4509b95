// bf16 GEMMs with fp32 accumulation over the op table's gemm_bf16 entry.
#include "ptrain/nn/gemm_bf16.h"

#include "ptrain/core/error.h"

namespace ptrain::nn {

Bf16Gemms::Bf16Gemms(const tensor::Ops& ops, const float* params, size_t n)
    : o_(ops), params_(params), n_(n) {
  if (!o_.gemm_bf16 || !o_.f32_to_bf16) {
    throw ConfigError(fmt::format("train.precision bf16 needs bf16 GEMMs, which the {} backend "
                                  "does not have",
                                  o_.name),
                      "set train.precision: fp32, or nodes.device: cuda");
  }
  shadow_ = tensor::Tensor::zeros({int64_t(n)}, tensor::DType::kBF16, o_.device);
}

void Bf16Gemms::refresh() {
  o_.f32_to_bf16(shadow_.data<uint16_t>(), params_, n_);
}

const uint16_t* Bf16Gemms::shadow_of(const float* weight) const {
  PTRAIN_CHECK(weight >= params_ && weight < params_ + n_, "weight outside the parameter buffer");
  return shadow_.data<uint16_t>() + (weight - params_);
}

const uint16_t* Bf16Gemms::stage(int slot, const float* x, size_t n) {
  tensor::Tensor& t = slot_[slot];
  if (!t.defined() || size_t(t.numel()) < n)
    t = tensor::Tensor::zeros({int64_t(n)}, tensor::DType::kBF16, o_.device);
  o_.f32_to_bf16(t.data<uint16_t>(), x, n);
  return t.data<uint16_t>();
}

void Bf16Gemms::conv1d_forward(float* out, const float* inp, const float* weight, const float* bias,
                               int N, int IC, int OC) {
  // out [N,OC] = inp [N,IC] . weight [IC,OC]
  const uint16_t* a = stage(0, inp, size_t(N) * IC);
  o_.gemm_bf16(false, false, N, OC, IC, 1.0f, a, IC, shadow_of(weight), OC, 0.0f, out, OC);
  if (bias) o_.bias_add(out, bias, N, OC);
}

void Bf16Gemms::conv1d_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                const float* inp, const float* weight, int N, int IC, int OC) {
  const uint16_t* d = stage(0, dout, size_t(N) * OC);
  const uint16_t* x = stage(1, inp, size_t(N) * IC);
  // dweight [IC,OC] += inp^T . dout ; dinp [N,IC] = dout . weight^T
  o_.gemm_bf16(true, false, IC, OC, N, 1.0f, x, IC, d, OC, 1.0f, dweight, OC);
  if (dbias) o_.bias_backward(dbias, dout, N, OC);
  if (dinp)
    o_.gemm_bf16(false, true, N, IC, OC, 1.0f, d, OC, shadow_of(weight), OC, 0.0f, dinp, IC);
}

void Bf16Gemms::linear_forward(float* out, const float* inp, const float* weight, int N, int IC,
                               int OC) {
  // out [N,OC] = inp [N,IC] . weight [OC,IC]^T
  const uint16_t* a = stage(0, inp, size_t(N) * IC);
  o_.gemm_bf16(false, true, N, OC, IC, 1.0f, a, IC, shadow_of(weight), IC, 0.0f, out, OC);
}

void Bf16Gemms::linear_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                                const float* weight, int N, int IC, int OC) {
  const uint16_t* d = stage(0, dout, size_t(N) * OC);
  const uint16_t* x = stage(1, inp, size_t(N) * IC);
  // dweight [OC,IC] += dout^T . inp ; dinp [N,IC] = dout . weight
  o_.gemm_bf16(true, false, OC, IC, N, 1.0f, d, OC, x, IC, 1.0f, dweight, IC);
  if (dinp)
    o_.gemm_bf16(false, false, N, IC, OC, 1.0f, d, OC, shadow_of(weight), IC, 0.0f, dinp, IC);
}

}  // namespace ptrain::nn
