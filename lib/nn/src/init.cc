// Counter-based initialisation RNG (SplitMix64 mixer keyed by seed and parameter name).
#include "ptrain/nn/init.h"

#include <cmath>
#include <numbers>

namespace ptrain::nn {

uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t param_key(uint64_t seed, std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return mix64(seed ^ h);
}

double uniform01(uint64_t key, uint64_t i) {
  uint64_t bits = mix64(key + mix64(i)) >> 11;  // 53 bits
  return (static_cast<double>(bits) + 1.0) * 0x1.0p-53;
}

double normal01(uint64_t key, uint64_t i) {
  double u1 = uniform01(key, 2 * i);
  double u2 = uniform01(key, 2 * i + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

void fill_normal(float* x, size_t n, uint64_t key, float mean, float stddev) {
  for (size_t j = 0; j < n; ++j) x[j] = static_cast<float>(mean + stddev * normal01(key, j));
}

void fill_uniform(float* x, size_t n, uint64_t key, float lo, float hi) {
  for (size_t j = 0; j < n; ++j) x[j] = static_cast<float>(lo + (hi - lo) * uniform01(key, j));
}

}  // namespace ptrain::nn
