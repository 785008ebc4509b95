// DLRM host kernels (dlrm_ops.h).
#include "dlrm/dlrm_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ptrain/core/error.h"

namespace ptrain::nn::dlrm {

template <class T>
void embedding_lookup(T* out, const T* table, const int32_t* idx, int B, int64_t rows, int D) {
  for (int b = 0; b < B; ++b) {
    PTRAIN_CHECK(idx[b] >= 0 && idx[b] < rows, "embedding index {} outside [0, {})", idx[b], rows);
    std::memcpy(out + size_t(b) * D, table + size_t(idx[b]) * D, sizeof(T) * D);
  }
}

template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* idx, int B, int64_t rows, int D) {
  for (int b = 0; b < B; ++b) {
    PTRAIN_CHECK(idx[b] >= 0 && idx[b] < rows, "embedding index {} outside [0, {})", idx[b], rows);
    T* row = dtable + size_t(idx[b]) * D;
    const T* g = dout + size_t(b) * D;
    for (int d = 0; d < D; ++d) row[d] += g[d];
  }
}

template <class T>
void dot_interaction_forward(T* z, const T* v, int B, int F, int D) {
  const int W = interaction_width(F, D);
  for (int b = 0; b < B; ++b) {
    const T* vb = v + size_t(b) * F * D;
    T* zb = z + size_t(b) * W;
    std::memcpy(zb, vb, sizeof(T) * D);
    int at = D;
    for (int i = 1; i < F; ++i)
      for (int j = 0; j < i; ++j) {
        T s = 0;
        for (int d = 0; d < D; ++d) s += vb[i * D + d] * vb[j * D + d];
        zb[at++] = s;
      }
  }
}

template <class T>
void dot_interaction_backward(T* dv, const T* dz, const T* v, int B, int F, int D) {
  const int W = interaction_width(F, D);
  std::memset(dv, 0, sizeof(T) * size_t(B) * F * D);
  for (int b = 0; b < B; ++b) {
    const T* vb = v + size_t(b) * F * D;
    const T* gb = dz + size_t(b) * W;
    T* db = dv + size_t(b) * F * D;
    for (int d = 0; d < D; ++d) db[d] = gb[d];
    int at = D;
    for (int i = 1; i < F; ++i)
      for (int j = 0; j < i; ++j) {
        const T g = gb[at++];
        for (int d = 0; d < D; ++d) {
          db[i * D + d] += g * vb[j * D + d];
          db[j * D + d] += g * vb[i * D + d];
        }
      }
  }
}

template <class T>
double bce_with_logits_forward(T* loss, const T* x, const float* y, int B) {
  double sum = 0;
  for (int b = 0; b < B; ++b) {
    const T xb = x[b];
    const T l = (xb > 0 ? xb : T(0)) - xb * T(y[b]) + std::log1p(std::exp(-std::fabs(xb)));
    loss[b] = l;
    sum += double(l);
  }
  return sum;
}

template <class T>
void bce_with_logits_backward(T* dx, const T* x, const float* y, T scale, int B) {
  for (int b = 0; b < B; ++b) {
    const T s = x[b] >= 0 ? T(1) / (T(1) + std::exp(-x[b]))
                          : std::exp(x[b]) / (T(1) + std::exp(x[b]));  // no overflow
    dx[b] = scale * (s - T(y[b]));
  }
}

#define PTRAIN_DLRM_OPS(T)                                                              \
  template void embedding_lookup<T>(T*, const T*, const int32_t*, int, int64_t, int);   \
  template void embedding_backward<T>(T*, const T*, const int32_t*, int, int64_t, int); \
  template void dot_interaction_forward<T>(T*, const T*, int, int, int);                \
  template void dot_interaction_backward<T>(T*, const T*, const T*, int, int, int);     \
  template double bce_with_logits_forward<T>(T*, const T*, const float*, int);          \
  template void bce_with_logits_backward<T>(T*, const T*, const float*, T, int);
double roc_auc(const float* scores, const float* labels, size_t n) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  double pos = 0, rank_sum = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && scores[order[j]] == scores[order[i]]) ++j;
    const double avg_rank = 0.5 * double(i + 1 + j);  // ranks i+1 .. j
    for (size_t t = i; t < j; ++t)
      if (labels[order[t]] > 0.5f) pos += 1, rank_sum += avg_rank;
    i = j;
  }
  const double neg = double(n) - pos;
  if (pos == 0 || neg == 0) return 0.5;
  return (rank_sum - pos * (pos + 1) / 2) / (pos * neg);
}

PTRAIN_DLRM_OPS(float)
PTRAIN_DLRM_OPS(double)
#undef PTRAIN_DLRM_OPS

}  // namespace ptrain::nn::dlrm
