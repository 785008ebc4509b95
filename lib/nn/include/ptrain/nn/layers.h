// Layers as pairs of forward/backward functions over the op table (llm.c style). Shapes are
// row-major with N = rows (B*T). Backward functions WRITE dinp (when non-null) and ACCUMULATE
// into weight and bias gradients. LayerNorm, GELU, ReLU, attention, embedding and cross-entropy
// are single op-table calls (see ptrain/tensor/ops.h).
#pragma once

#include "ptrain/tensor/ops.h"

namespace ptrain::nn {

// GPT-2 Conv1D: out [N,OC] = inp [N,IC] . weight [IC,OC] + bias [OC]  (bias may be null)
void conv1d_forward(const tensor::Ops& o, float* out, const float* inp, const float* weight,
                    const float* bias, int N, int IC, int OC);
void conv1d_backward(const tensor::Ops& o, float* dinp, float* dweight, float* dbias,
                     const float* dout, const float* inp, const float* weight, int N, int IC,
                     int OC);

// PyTorch nn.Linear: out [N,OC] = inp [N,IC] . weight[OC,IC]^T + bias [OC]
void linear_forward(const tensor::Ops& o, float* out, const float* inp, const float* weight,
                    const float* bias, int N, int IC, int OC);
void linear_backward(const tensor::Ops& o, float* dinp, float* dweight, float* dbias,
                     const float* dout, const float* inp, const float* weight, int N, int IC,
                     int OC);

// Tied LM head: logits [N,V] = inp [N,C] . wte [V,C]^T (nn.Linear layout without bias).
inline void lm_head_forward(const tensor::Ops& o, float* logits, const float* inp, const float* wte,
                            int N, int C, int V) {
  linear_forward(o, logits, inp, wte, nullptr, N, C, V);
}
inline void lm_head_backward(const tensor::Ops& o, float* dinp, float* dwte, const float* dlogits,
                             const float* inp, const float* wte, int N, int C, int V) {
  linear_backward(o, dinp, dwte, nullptr, dlogits, inp, wte, N, C, V);
}

}  // namespace ptrain::nn
