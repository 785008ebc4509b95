// AVX-512 fills of the counter-based init streams, eight elements per step.
//
// Uniform: the same integer and double operations as uniform01 and the reference fill, in the
// same order (this file is compiled with -ffp-contract=off, so no multiply-add is fused), hence
// the same bits.
//
// Normal: z = sqrt(-2 log u1) cos(2 pi u2) with our own log and cos. Error bound, against the
// libm reference (glibc's log and cos are within 1 ulp; the reference's cos argument
// fl(2 pi u2) is off from 2 pi u2 by at most 2 ulp of 2 pi, i.e. 1.8e-15):
//   log(u) = e ln2 + 2 atanh(s), s = (m - 1) / (m + 1), m in [sqrt(1/2), sqrt(2)): |s| < 0.1716,
//     the series to s^19 leaves out less than 0.1716^20 / 21 / (1 - s^2) < 2e-17 relative; the
//     few roundings (m - 1 is exact) and e ln2 + log m, which cancels at most by 3x, keep
//     |rel err| < 4e-15, so r = sqrt(-2 log u1) has |rel err| < 3e-15;
//   cos: u2 - q/4 is exact (q = round(4 u2)), x = 2 pi (u2 - q/4) has |x| <= pi/4 and an error
//     of 2.2e-16 |x|; the Taylor polynomials (cos to x^16, sin to x^15) leave out less than
//     (pi/4)^17 / 17! < 5e-17 and evaluate within ~4e-16, so |cos' - cos_ref| < 3e-15 absolute;
//   so |z' - z_ref| < 7e-15 r, and v = mean + stddev z differs from the reference's double by
//     less than |stddev| 7e-15 r + 4.5e-16 (|mean| + |stddev| r) < 8e-15 (|mean| + |stddev| r).
// The check below uses tol = 2^-40 (|mean| + |stddev| r) = 9.1e-13 (...), over 100x that bound:
// when v' lies farther than tol from both float rounding boundaries (the midpoints between f and
// its neighbours), the reference double lies strictly between them too and rounds to the same
// float f. Elements that fail the check (about 1 in 10^4 of them) are recomputed by the reference
// element function.
#include <immintrin.h>

#include <cstring>

#include "init_fast.h"

namespace ptrain::nn::detail {
namespace {

#define PTRAIN_AVX512 __attribute__((target("avx512f,avx512dq")))

PTRAIN_AVX512 inline __m512i mix64(__m512i x) {
  x = _mm512_add_epi64(x, _mm512_set1_epi64(static_cast<int64_t>(0x9E3779B97F4A7C15ull)));
  x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 30)),
                         _mm512_set1_epi64(static_cast<int64_t>(0xBF58476D1CE4E5B9ull)));
  x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 27)),
                         _mm512_set1_epi64(static_cast<int64_t>(0x94D049BB133111EBull)));
  return _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
}

// uniform01 of eight counters: (bits + 1) 2^-53 with 53 bits of mix64(key + mix64(i)).
PTRAIN_AVX512 inline __m512d uniform01(__m512i key, __m512i counters) {
  __m512i bits = _mm512_srli_epi64(mix64(_mm512_add_epi64(key, mix64(counters))), 11);
  __m512d d = _mm512_cvtepu64_pd(bits);  // exact: bits < 2^53
  return _mm512_mul_pd(_mm512_add_pd(d, _mm512_set1_pd(1.0)), _mm512_set1_pd(0x1.0p-53));
}

// Natural log of u in [2^-53, 1].
PTRAIN_AVX512 inline __m512d log_unit(__m512d u) {
  __m512d e = _mm512_getexp_pd(u);
  __m512d m = _mm512_getmant_pd(u, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
  __mmask8 big = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.4142135623730951), _CMP_GE_OQ);
  m = _mm512_mask_mul_pd(m, big, m, _mm512_set1_pd(0.5));
  e = _mm512_mask_add_pd(e, big, e, _mm512_set1_pd(1.0));
  const __m512d one = _mm512_set1_pd(1.0);
  __m512d s = _mm512_div_pd(_mm512_sub_pd(m, one), _mm512_add_pd(m, one));
  __m512d s2 = _mm512_mul_pd(s, s);
  // atanh(s) / s = sum s^(2k) / (2k + 1), k = 0..9.
  __m512d p = _mm512_set1_pd(1.0 / 19);
  p = _mm512_fmadd_pd(p, s2, _mm512_set1_pd(1.0 / 17));
  p = _mm512_fmadd_pd(p, s2, _mm512_set1_pd(1.0 / 15));
  p = _mm512_fmadd_pd(p, s2, _mm512_set1_pd(1.0 / 13));
  p = _mm512_fmadd_pd(p, s2, _mm512_set1_pd(1.0 / 11));
  p = _mm512_fmadd_pd(p, s2, _mm512_set1_pd(1.0 / 9));
  p = _mm512_fmadd_pd(p, s2, _mm512_set1_pd(1.0 / 7));
  p = _mm512_fmadd_pd(p, s2, _mm512_set1_pd(1.0 / 5));
  p = _mm512_fmadd_pd(p, s2, _mm512_set1_pd(1.0 / 3));
  p = _mm512_mul_pd(p, s2);  // the k = 0 term is added below without a rounding of s p
  __m512d two_s = _mm512_add_pd(s, s);
  __m512d log_m = _mm512_fmadd_pd(two_s, p, two_s);
  return _mm512_fmadd_pd(e, _mm512_set1_pd(0.6931471805599453), log_m);
}

// cos(2 pi u) for u in (0, 1].
PTRAIN_AVX512 inline __m512d cos_2pi(__m512d u) {
  __m512d q = _mm512_roundscale_pd(_mm512_mul_pd(u, _mm512_set1_pd(4.0)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d t = _mm512_sub_pd(u, _mm512_mul_pd(q, _mm512_set1_pd(0.25)));  // exact, |t| <= 1/8
  __m512d x = _mm512_mul_pd(t, _mm512_set1_pd(6.283185307179586));
  __m512d x2 = _mm512_mul_pd(x, x);
  // cos x = sum (-1)^k x^(2k) / (2k)!, k = 0..8.
  __m512d c = _mm512_set1_pd(1.0 / 20922789888000.0);
  c = _mm512_fmadd_pd(c, x2, _mm512_set1_pd(-1.0 / 87178291200.0));
  c = _mm512_fmadd_pd(c, x2, _mm512_set1_pd(1.0 / 479001600.0));
  c = _mm512_fmadd_pd(c, x2, _mm512_set1_pd(-1.0 / 3628800.0));
  c = _mm512_fmadd_pd(c, x2, _mm512_set1_pd(1.0 / 40320.0));
  c = _mm512_fmadd_pd(c, x2, _mm512_set1_pd(-1.0 / 720.0));
  c = _mm512_fmadd_pd(c, x2, _mm512_set1_pd(1.0 / 24.0));
  c = _mm512_fmadd_pd(c, x2, _mm512_set1_pd(-0.5));
  c = _mm512_fmadd_pd(c, x2, _mm512_set1_pd(1.0));
  // sin x = x sum (-1)^k x^(2k) / (2k + 1)!, k = 0..7.
  __m512d s = _mm512_set1_pd(-1.0 / 1307674368000.0);
  s = _mm512_fmadd_pd(s, x2, _mm512_set1_pd(1.0 / 6227020800.0));
  s = _mm512_fmadd_pd(s, x2, _mm512_set1_pd(-1.0 / 39916800.0));
  s = _mm512_fmadd_pd(s, x2, _mm512_set1_pd(1.0 / 362880.0));
  s = _mm512_fmadd_pd(s, x2, _mm512_set1_pd(-1.0 / 5040.0));
  s = _mm512_fmadd_pd(s, x2, _mm512_set1_pd(1.0 / 120.0));
  s = _mm512_fmadd_pd(s, x2, _mm512_set1_pd(-1.0 / 6.0));
  s = _mm512_mul_pd(s, x2);
  s = _mm512_fmadd_pd(s, x, x);
  // Quadrant q mod 4: cos x, -sin x, -cos x, sin x.
  __m256i qi = _mm512_cvtpd_epi32(q);
  __mmask8 odd = _mm512_test_epi64_mask(_mm512_cvtepi32_epi64(qi), _mm512_set1_epi64(1));
  __mmask8 neg = _mm512_test_epi64_mask(
      _mm512_cvtepi32_epi64(_mm256_add_epi32(qi, _mm256_set1_epi32(1))), _mm512_set1_epi64(2));
  __m512d r = _mm512_mask_blend_pd(odd, c, s);
  return _mm512_mask_sub_pd(r, neg, _mm512_setzero_pd(), r);
}

// Lanes whose double v rounds to the float f as every double within tol of v does.
PTRAIN_AVX512 inline __mmask8 rounds_safely(__m512d v, __m256 f, __m512d tol) {
  const __m512i abs_mask = _mm512_set1_epi64(0x7fffffffffffffffll);
  __m512d a = _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(v), abs_mask));
  __m512i fb = _mm512_cvtepu32_epi64(
      _mm256_and_si256(_mm256_castps_si256(f), _mm256_set1_epi32(0x7fffffff)));
  // Non-zero and below the largest float (whose upper boundary is the overflow threshold, not
  // a midpoint computed below): 0 < |f| bits < FLT_MAX's. NaN and infinity fail too.
  __mmask8 ok = _mm512_cmp_epi64_mask(fb, _mm512_setzero_si512(), _MM_CMPINT_GT) &
                _mm512_cmp_epi64_mask(fb, _mm512_set1_epi64(0x7f7fffff), _MM_CMPINT_LT);
  __m256i fb32 = _mm512_cvtepi64_epi32(fb);
  __m512d af = _mm512_cvtps_pd(_mm256_castsi256_ps(fb32));
  __m512d up = _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_add_epi32(fb32, _mm256_set1_epi32(1))));
  __m512d dn = _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_sub_epi32(fb32, _mm256_set1_epi32(1))));
  const __m512d half = _mm512_set1_pd(0.5);
  __m512d mid_up = _mm512_mul_pd(_mm512_add_pd(af, up), half);  // exact: 25-bit sums
  __m512d mid_dn = _mm512_mul_pd(_mm512_add_pd(af, dn), half);
  ok &= _mm512_cmp_pd_mask(_mm512_sub_pd(mid_up, a), tol, _CMP_GT_OQ);
  ok &= _mm512_cmp_pd_mask(_mm512_sub_pd(a, mid_dn), tol, _CMP_GT_OQ);
  return ok;
}

PTRAIN_AVX512 inline __m512i counters(uint64_t first, uint64_t stride, uint64_t offset) {
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  __m512i i = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(first)), lane);
  if (stride == 2) i = _mm512_add_epi64(i, i);
  return _mm512_add_epi64(i, _mm512_set1_epi64(static_cast<int64_t>(offset)));
}

}  // namespace

bool have_avx512_fill() {
  static const bool have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return have;
}

PTRAIN_AVX512 size_t fill_normal_avx512(float* x, uint64_t first, size_t n, uint64_t key,
                                        float mean, float stddev) {
  const __m512i k = _mm512_set1_epi64(static_cast<int64_t>(key));
  const __m512d mean_d = _mm512_set1_pd(mean), sd = _mm512_set1_pd(stddev);
  const __m512d abs_mean = _mm512_set1_pd(mean < 0 ? -double(mean) : double(mean));
  const __m512d abs_sd = _mm512_set1_pd(stddev < 0 ? -double(stddev) : double(stddev));
  const __m512d tol_scale = _mm512_set1_pd(0x1.0p-40);
  size_t redone = 0;
  for (size_t j = 0; j < n; j += 8) {
    const uint64_t i = first + j;
    __m512d u1 = uniform01(k, counters(i, 2, 0));
    __m512d u2 = uniform01(k, counters(i, 2, 1));
    __m512d r = _mm512_sqrt_pd(_mm512_mul_pd(_mm512_set1_pd(-2.0), log_unit(u1)));
    __m512d v = _mm512_add_pd(mean_d, _mm512_mul_pd(sd, _mm512_mul_pd(r, cos_2pi(u2))));
    __m256 f = _mm512_cvtpd_ps(v);
    __m512d tol = _mm512_mul_pd(tol_scale, _mm512_fmadd_pd(abs_sd, r, abs_mean));
    // r = 0 (u1 = 1) leaves the sign of a zero to libm's cos: recomputed.
    __mmask8 ok = rounds_safely(v, f, tol) & _mm512_cmp_pd_mask(r, _mm512_setzero_pd(), _CMP_GT_OQ);
    const size_t lanes = n - j < 8 ? n - j : 8;
    if (lanes == 8) {
      _mm256_storeu_ps(x + j, f);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, f);
      std::memcpy(x + j, tmp, lanes * sizeof(float));
    }
    unsigned bad = static_cast<unsigned>(static_cast<__mmask8>(~ok)) & ((1u << lanes) - 1);
    while (bad) {
      const int l = __builtin_ctz(bad);
      bad &= bad - 1;
      x[j + l] = normal_element(key, i + l, mean, stddev);
      ++redone;
    }
  }
  return redone;
}

PTRAIN_AVX512 void fill_uniform_avx512(float* x, uint64_t first, size_t n, uint64_t key, float lo,
                                       float hi) {
  const __m512i k = _mm512_set1_epi64(static_cast<int64_t>(key));
  // As the reference: (hi - lo) in float, then lo + width * u in double, rounded once each.
  const __m512d lo_d = _mm512_set1_pd(lo), width = _mm512_set1_pd(hi - lo);
  for (size_t j = 0; j < n; j += 8) {
    __m512d u = uniform01(k, counters(first + j, 1, 0));
    __m256 f = _mm512_cvtpd_ps(_mm512_add_pd(lo_d, _mm512_mul_pd(width, u)));
    const size_t lanes = n - j < 8 ? n - j : 8;
    if (lanes == 8) {
      _mm256_storeu_ps(x + j, f);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, f);
      std::memcpy(x + j, tmp, lanes * sizeof(float));
    }
  }
}

}  // namespace ptrain::nn::detail
