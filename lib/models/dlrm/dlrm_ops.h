// The host kernels of DLRM (facebookresearch/dlrm) that the op table does not have: the
// embedding lookup of one index per table per sample and its sparse backward, the `dot`
// feature interaction, and binary cross-entropy with logits. Templated on the element type so
// that the gradient checks run them in double; the model uses float.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ptrain::nn::dlrm {

// out [B,D] = table [rows,D] at idx [B]; every index must be in [0, rows) (checked).
template <class T>
void embedding_lookup(T* out, const T* table, const int32_t* idx, int B, int64_t rows, int D);
// dtable [rows,D] += dout [B,D] scattered to idx [B] (repeated indices accumulate).
template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* idx, int B, int64_t rows, int D);

// Width of the interaction output for F vectors of D: D + F(F-1)/2.
inline int interaction_width(int F, int D) {
  return D + F * (F - 1) / 2;
}
// z [B, interaction_width(F,D)] from v [B,F,D] (vector 0 the bottom MLP's output, vector k+1
// table k's embedding): z = v[0] followed by dot(v[i], v[j]) for i = 1..F-1, j = 0..i-1.
template <class T>
void dot_interaction_forward(T* z, const T* v, int B, int F, int D);
// dv [B,F,D] = d loss / d v from dz [B, interaction_width(F,D)] (overwritten, not added).
template <class T>
void dot_interaction_backward(T* dv, const T* dz, const T* v, int B, int F, int D);

// Per-sample loss [B] = max(x,0) - x*y + log(1 + exp(-|x|)) for logits x [B], labels y [B]
// in {0,1}; returns their sum.
template <class T>
double bce_with_logits_forward(T* loss, const T* x, const float* y, int B);
// dx [B] = scale * (sigmoid(x) - y).
template <class T>
void bce_with_logits_backward(T* dx, const T* x, const float* y, T scale, int B);

// Exact ROC AUC of scores [n] against labels [n] (0/1): the Mann-Whitney statistic, ties
// given their average rank (a tied positive/negative pair counts half). 0.5 without both
// classes.
double roc_auc(const float* scores, const float* labels, size_t n);

}  // namespace ptrain::nn::dlrm
