// The shm backend's reductions. Every path combines element i as
//   v = src[0][i]; v = v + src[k][i] (or v = src[k][i] > v ? src[k][i] : v) for k = 1..n-1;
//   kAvg: v = v * (1/n)
// with one rounding per operation (this file is compiled with -ffp-contract=off), so the vector
// paths equal the element loop bit for bit, NaNs and signed zeros included (max_ps(c, v) returns
// v unless c > v, as the scalar comparison does).
#include "reduce.h"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ptrain::comm::shm {
namespace {

template <ReduceOp Op>
inline float combine(float v, float c) {
  if constexpr (Op == ReduceOp::kMax)
    return c > v ? c : v;
  else
    return v + c;
}

template <ReduceOp Op>
void reduce_scalar(float* out, float* out2, const float* const* src, int n, size_t begin,
                   size_t len) {
  const float alpha = 1.0f / static_cast<float>(n);
  for (size_t i = begin; i < len; ++i) {
    float v = src[0][i];
    for (int k = 1; k < n; ++k) v = combine<Op>(v, src[k][i]);
    if constexpr (Op == ReduceOp::kAvg) v = v * alpha;
    out[i] = v;
    if (out2) out2[i] = v;
  }
}

#if defined(__x86_64__)
#define PTRAIN_AVX2 __attribute__((target("avx2")))
#define PTRAIN_AVX512 __attribute__((target("avx512f")))

template <ReduceOp Op>
PTRAIN_AVX2 void reduce_avx2(float* out, float* out2, const float* const* src, int n, size_t len) {
  const __m256 alpha = _mm256_set1_ps(1.0f / static_cast<float>(n));
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    __m256 v = _mm256_loadu_ps(src[0] + i);
    for (int k = 1; k < n; ++k) {
      const __m256 c = _mm256_loadu_ps(src[k] + i);
      if constexpr (Op == ReduceOp::kMax)
        v = _mm256_max_ps(c, v);
      else
        v = _mm256_add_ps(v, c);
    }
    if constexpr (Op == ReduceOp::kAvg) v = _mm256_mul_ps(v, alpha);
    _mm256_storeu_ps(out + i, v);
    if (out2) _mm256_storeu_ps(out2 + i, v);
  }
  reduce_scalar<Op>(out, out2, src, n, i, len);
}

template <ReduceOp Op>
PTRAIN_AVX512 inline void step_avx512(float* out, float* out2, const float* const* src, int n,
                                      size_t i, __mmask16 m, __m512 alpha) {
  __m512 v = _mm512_maskz_loadu_ps(m, src[0] + i);
  for (int k = 1; k < n; ++k) {
    const __m512 c = _mm512_maskz_loadu_ps(m, src[k] + i);
    if constexpr (Op == ReduceOp::kMax)
      v = _mm512_max_ps(c, v);
    else
      v = _mm512_add_ps(v, c);
  }
  if constexpr (Op == ReduceOp::kAvg) v = _mm512_mul_ps(v, alpha);
  _mm512_mask_storeu_ps(out + i, m, v);
  if (out2) _mm512_mask_storeu_ps(out2 + i, m, v);
}

template <ReduceOp Op>
PTRAIN_AVX512 void reduce_avx512(float* out, float* out2, const float* const* src, int n,
                                 size_t len) {
  const __m512 alpha = _mm512_set1_ps(1.0f / static_cast<float>(n));
  size_t i = 0;
  for (; i + 16 <= len; i += 16) step_avx512<Op>(out, out2, src, n, i, 0xffff, alpha);
  if (i < len)
    step_avx512<Op>(out, out2, src, n, i, static_cast<__mmask16>((1u << (len - i)) - 1), alpha);
}
#endif

template <ReduceOp Op>
void dispatch(ReduceIsa isa, float* out, float* out2, const float* const* src, int n, size_t len) {
  switch (isa) {
#if defined(__x86_64__)
    case ReduceIsa::kAvx512:
      return reduce_avx512<Op>(out, out2, src, n, len);
    case ReduceIsa::kAvx2:
      return reduce_avx2<Op>(out, out2, src, n, len);
#endif
    default:
      return reduce_scalar<Op>(out, out2, src, n, 0, len);
  }
}

}  // namespace

bool reduce_isa_supported(ReduceIsa isa) {
#if defined(__x86_64__)
  if (isa == ReduceIsa::kAvx512) return __builtin_cpu_supports("avx512f");
  if (isa == ReduceIsa::kAvx2) return __builtin_cpu_supports("avx2");
#endif
  return isa == ReduceIsa::kScalar;
}

ReduceIsa best_reduce_isa() {
  static const ReduceIsa best = reduce_isa_supported(ReduceIsa::kAvx512) ? ReduceIsa::kAvx512
                                : reduce_isa_supported(ReduceIsa::kAvx2) ? ReduceIsa::kAvx2
                                                                         : ReduceIsa::kScalar;
  return best;
}

const char* reduce_isa_name(ReduceIsa isa) {
  switch (isa) {
    case ReduceIsa::kAvx512:
      return "avx512";
    case ReduceIsa::kAvx2:
      return "avx2";
    case ReduceIsa::kScalar:
      break;
  }
  return "scalar";
}

void reduce_f32_isa(ReduceIsa isa, float* out, float* out2, const float* const* src, int n,
                    size_t len, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return dispatch<ReduceOp::kSum>(isa, out, out2, src, n, len);
    case ReduceOp::kAvg:
      return dispatch<ReduceOp::kAvg>(isa, out, out2, src, n, len);
    case ReduceOp::kMax:
      return dispatch<ReduceOp::kMax>(isa, out, out2, src, n, len);
  }
}

void reduce_f32(float* out, float* out2, const float* const* src, int n, size_t len, ReduceOp op) {
  reduce_f32_isa(best_reduce_isa(), out, out2, src, n, len, op);
}

void reduce_f32_reference(float* out, const float* const* src, int n, size_t len, ReduceOp op) {
  const float alpha = 1.0f / static_cast<float>(n);
  for (size_t i = 0; i < len; ++i) {
    float v = src[0][i];
    for (int k = 1; k < n; ++k) {
      const float c = src[k][i];
      if (op == ReduceOp::kMax)
        v = std::max(v, c);
      else
        v += c;
    }
    if (op == ReduceOp::kAvg) v *= alpha;
    out[i] = v;
  }
}

}  // namespace ptrain::comm::shm
