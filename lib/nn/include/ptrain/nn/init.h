// Deterministic, counter-based random numbers for weight initialisation: element i of the
// tensor named `name` depends only on (seed, name, i), never on the order tensors are visited
// or on how the model is split across pipeline stages or ranks.
#pragma once

#include <cstdint>
#include <string_view>

namespace ptrain::nn {

// SplitMix64's finaliser: a bijective 64-bit mixer.
uint64_t mix64(uint64_t x);
// The stream key of one tensor: mix64(seed ^ FNV-1a-64(name)).
uint64_t param_key(uint64_t seed, std::string_view name);
// Uniform in (0, 1], from counter `i` of stream `key` (53 random bits).
double uniform01(uint64_t key, uint64_t i);
// Standard normal for element `i` (Box-Muller over counters 2i and 2i+1).
double normal01(uint64_t key, uint64_t i);

// Host fills: x[j] = mean + stddev * normal01(key, j) / lo + (hi - lo) * uniform01(key, j).
void fill_normal(float* x, size_t n, uint64_t key, float mean, float stddev);
void fill_uniform(float* x, size_t n, uint64_t key, float lo, float hi);

}  // namespace ptrain::nn
