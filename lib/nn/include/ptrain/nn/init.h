// Deterministic, counter-based random numbers for weight initialisation: element i of the
// tensor named `name` depends only on (seed, name, i), never on the order tensors are visited
// or on how the model is split across pipeline stages or ranks.
#pragma once

#include <cstddef>
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

// How a host fill runs. Every choice gives the same bits: each element depends only on its index.
struct FillOptions {
  int threads = 0;                          // 0: tensor::cpu_threads() (nodes.threads_per_proc)
  size_t min_per_thread = size_t(1) << 18;  // smaller fills stay on the calling thread
  bool vectorised = true;                   // the AVX-512 path where the CPU has it
};

// Host fills: x[j] = float(mean + stddev * normal01(key, j)) / float(lo + (hi - lo) *
// uniform01(key, j)), computed in double as written (hi - lo in float). Threaded over contiguous
// ranges and vectorised (init_avx512.cc), bit-identical to the references below.
void fill_normal(float* x, size_t n, uint64_t key, float mean, float stddev,
                 const FillOptions& options = {});
void fill_uniform(float* x, size_t n, uint64_t key, float lo, float hi,
                  const FillOptions& options = {});

// The naive references: one element at a time through libm, on the calling thread.
void fill_normal_reference(float* x, size_t n, uint64_t key, float mean, float stddev);
void fill_uniform_reference(float* x, size_t n, uint64_t key, float lo, float hi);

}  // namespace ptrain::nn
