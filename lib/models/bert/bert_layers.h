// BERT's layers that the op table does not have, as CPU loops (BERT trains on the CPU only; the
// op table's attention is causal, its LayerNorm has eps 1e-5 and its GELU is the tanh form):
// LayerNorm with a given eps, exact (erf) GELU, and bidirectional (unmasked) multi-head
// attention over separate q, k, v rows. Shapes row-major, N = rows (B*T). Every *_backward
// ACCUMULATES (+=) into dinp and the weight gradients, as the op table's do.
#pragma once

#include "ptrain/tensor/ops.h"

namespace ptrain::nn::bert {

// out [N,C] = (inp - mean) * rstd * weight + bias, with rstd = 1 / sqrt(var + eps); mean and
// rstd [N] are saved for backward.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C, float eps);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C);

// out = 0.5 x (1 + erf(x / sqrt 2)), elementwise.
void gelu_erf_forward(float* out, const float* inp, size_t n);
void gelu_erf_backward(float* dinp, const float* inp, const float* dout, size_t n);

// Bidirectional attention of B sequences of T tokens. q, k, v, out: [B*T, ld] with NH heads of
// HD channels in the first NH*HD columns (ld = NH*HD for a tensor-parallel rank's heads);
// probs [B,NH,T,T] = softmax(q k^T / sqrt(HD)) over the last axis, saved for backward;
// out = probs v. GEMMs through `o`.
struct AttentionShape {
  int B = 1, T = 1, NH = 1, HD = 1;
  int ld() const { return NH * HD; }
};
void attention_forward(const tensor::Ops& o, float* out, float* probs, const float* q,
                       const float* k, const float* v, const AttentionShape& s);
// Accumulates into dq, dk, dv [B*T, ld]; `scratch` holds T*T floats.
void attention_backward(const tensor::Ops& o, float* dq, float* dk, float* dv, float* scratch,
                        const float* dout, const float* probs, const float* q, const float* k,
                        const float* v, const AttentionShape& s);

}  // namespace ptrain::nn::bert
