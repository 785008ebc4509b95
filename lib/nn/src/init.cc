// Counter-based initialisation RNG (SplitMix64 mixer keyed by seed and parameter name).
#include "ptrain/nn/init.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <thread>
#include <vector>

#include "init_fast.h"
#include "ptrain/tensor/ops.h"

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

namespace detail {

float normal_element(uint64_t key, uint64_t i, float mean, float stddev) {
  return static_cast<float>(mean + stddev * normal01(key, i));
}

float uniform_element(uint64_t key, uint64_t i, float lo, float hi) {
  return static_cast<float>(lo + (hi - lo) * uniform01(key, i));
}

}  // namespace detail

namespace {

// Elements [first, first + n) of one stream into x[0, n).
void normal_range(float* x, uint64_t first, size_t n, uint64_t key, float mean, float stddev,
                  bool vectorised) {
  if (vectorised && detail::have_avx512_fill()) {
    detail::fill_normal_avx512(x, first, n, key, mean, stddev);
    return;
  }
  for (size_t j = 0; j < n; ++j) x[j] = detail::normal_element(key, first + j, mean, stddev);
}

void uniform_range(float* x, uint64_t first, size_t n, uint64_t key, float lo, float hi,
                   bool vectorised) {
  if (vectorised && detail::have_avx512_fill()) {
    detail::fill_uniform_avx512(x, first, n, key, lo, hi);
    return;
  }
  for (size_t j = 0; j < n; ++j) x[j] = detail::uniform_element(key, first + j, lo, hi);
}

// Runs range(begin, count) over contiguous parts of [0, n), one per thread. Each element
// depends only on its index, so the split does not change the result.
template <typename Range>
void run_split(size_t n, const FillOptions& options, Range range) {
  size_t threads = options.threads > 0 ? size_t(options.threads) : size_t(tensor::cpu_threads());
  const size_t per = std::max<size_t>(options.min_per_thread, 1);
  threads = std::clamp<size_t>(std::min(threads, n / per), 1, 1024);
  if (threads == 1) {
    range(0, n);
    return;
  }
  std::vector<std::jthread> pool;
  pool.reserve(threads - 1);
  const size_t part = n / threads, extra = n % threads;
  size_t begin = 0;
  for (size_t t = 0; t < threads; ++t) {
    const size_t count = part + (t < extra ? 1 : 0);
    if (t + 1 == threads)
      range(begin, count);  // the calling thread takes the last part
    else
      pool.emplace_back([&range, begin, count] { range(begin, count); });
    begin += count;
  }
}

}  // namespace

void fill_normal(float* x, size_t n, uint64_t key, float mean, float stddev,
                 const FillOptions& options) {
  run_split(n, options, [&](size_t begin, size_t count) {
    normal_range(x + begin, begin, count, key, mean, stddev, options.vectorised);
  });
}

void fill_uniform(float* x, size_t n, uint64_t key, float lo, float hi,
                  const FillOptions& options) {
  run_split(n, options, [&](size_t begin, size_t count) {
    uniform_range(x + begin, begin, count, key, lo, hi, options.vectorised);
  });
}

void fill_normal_reference(float* x, size_t n, uint64_t key, float mean, float stddev) {
  for (size_t j = 0; j < n; ++j) x[j] = static_cast<float>(mean + stddev * normal01(key, j));
}

void fill_uniform_reference(float* x, size_t n, uint64_t key, float lo, float hi) {
  for (size_t j = 0; j < n; ++j) x[j] = static_cast<float>(lo + (hi - lo) * uniform01(key, j));
}

}  // namespace ptrain::nn
