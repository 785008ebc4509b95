// Vectorizable scalar math for the CPU kernels: exp, tanh, and a per-ISA cloning attribute.
// Written as plain branch-free code so GCC vectorizes the loops that call them.
#pragma once

#include <cstdint>
#include <cstring>

// Hot loops are compiled twice (x86-64-v3, i.e. AVX2+FMA, and baseline x86-64) and picked at load
// time, so the binary still runs on any x86-64 host it is shipped to.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PTRAIN_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PTRAIN_HOT
#endif

namespace ptrain::tensor::cpu {

// exp(x) with relative error ~2e-7 (Cephes range reduction + degree-5 polynomial); inputs are
// clamped to [-87.3, 88.7], so very negative inputs give ~1e-38 rather than 0.
inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  float t = x * 1.44269504088896341f;
  float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest via the 1.5*2^23 trick
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return y * scale;
}

// tanh(x) = 1 - 2 / (exp(2x) + 1); absolute error ~1e-7.
inline float fast_tanh(float x) {
  return 1.0f - 2.0f / (fast_exp(2.0f * x) + 1.0f);
}

}  // namespace ptrain::tensor::cpu
