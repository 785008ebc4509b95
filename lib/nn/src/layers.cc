// Linear layers in both weight layouts, as GEMMs that need no transposed copies.
#include "ptrain/nn/layers.h"

namespace ptrain::nn {

void conv1d_forward(const tensor::Ops& o, float* out, const float* inp, const float* weight,
                    const float* bias, int N, int IC, int OC) {
  o.gemm(false, false, N, OC, IC, 1.0f, inp, IC, weight, OC, 0.0f, out, OC);
  if (bias) o.bias_add(out, bias, N, OC);
}

void conv1d_backward(const tensor::Ops& o, float* dinp, float* dweight, float* dbias,
                     const float* dout, const float* inp, const float* weight, int N, int IC,
                     int OC) {
  // dweight [IC,OC] += inp^T . dout ; dinp [N,IC] = dout . weight^T
  o.gemm(true, false, IC, OC, N, 1.0f, inp, IC, dout, OC, 1.0f, dweight, OC);
  if (dbias) o.bias_backward(dbias, dout, N, OC);
  if (dinp) o.gemm(false, true, N, IC, OC, 1.0f, dout, OC, weight, OC, 0.0f, dinp, IC);
}

void linear_forward(const tensor::Ops& o, float* out, const float* inp, const float* weight,
                    const float* bias, int N, int IC, int OC) {
  o.gemm(false, true, N, OC, IC, 1.0f, inp, IC, weight, IC, 0.0f, out, OC);
  if (bias) o.bias_add(out, bias, N, OC);
}

void linear_backward(const tensor::Ops& o, float* dinp, float* dweight, float* dbias,
                     const float* dout, const float* inp, const float* weight, int N, int IC,
                     int OC) {
  // dweight [OC,IC] += dout^T . inp ; dinp [N,IC] = dout . weight
  o.gemm(true, false, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
  if (dbias) o.bias_backward(dbias, dout, N, OC);
  if (dinp) o.gemm(false, false, N, IC, OC, 1.0f, dout, OC, weight, IC, 0.0f, dinp, IC);
}

}  // namespace ptrain::nn
