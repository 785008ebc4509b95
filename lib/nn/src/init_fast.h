// The vectorised fills behind fill_normal / fill_uniform (init_avx512.cc) and the scalar
// element functions they fall back to (init.cc). Internal to ptrain_nn.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ptrain::nn::detail {

// The reference values, one element at a time through libm (init.cc, baseline ISA).
float normal_element(uint64_t key, uint64_t i, float mean, float stddev);
float uniform_element(uint64_t key, uint64_t i, float lo, float hi);

// True when this CPU runs the AVX-512 fills (AVX512F and AVX512DQ).
bool have_avx512_fill();

// x[j] = element `first + j` of the stream, for j in [0, n). Bit-identical to the element
// functions above; only call them when have_avx512_fill(). The normal fill returns how many
// elements it recomputed with normal_element (those too close to a float rounding boundary).
size_t fill_normal_avx512(float* x, uint64_t first, size_t n, uint64_t key, float mean,
                          float stddev);
void fill_uniform_avx512(float* x, uint64_t first, size_t n, uint64_t key, float lo, float hi);

}  // namespace ptrain::nn::detail
