// Internal: the float reductions of the shm backend, vectorised for the CPU at hand (AVX-512,
// AVX2 or plain code, chosen once at run time) and bit-identical across those choices.
#pragma once

#include <cstddef>

#include "ptrain/comm/communicator.h"

namespace ptrain::comm::shm {

enum class ReduceIsa { kScalar, kAvx2, kAvx512 };

// out[i] = src[0][i] op src[1][i] op ... op src[n-1][i], combined in rank order (so every rank
// gets the same bits whichever rank reduced a slice), then times 1/n for kAvg; the same values go
// to out2[i] too when out2 is not null. out (or out2) may be one of the sources: element i is
// read before it is written. n >= 1.
void reduce_f32(float* out, float* out2, const float* const* src, int n, size_t len, ReduceOp op);

// The same with a given instruction set (tests compare each against reduce_f32_reference); the
// caller checks reduce_isa_supported first.
void reduce_f32_isa(ReduceIsa isa, float* out, float* out2, const float* const* src, int n,
                    size_t len, ReduceOp op);
bool reduce_isa_supported(ReduceIsa isa);
ReduceIsa best_reduce_isa();  // what reduce_f32 uses
const char* reduce_isa_name(ReduceIsa isa);

// One element at a time, as written: the reference the fast paths must equal bit for bit.
void reduce_f32_reference(float* out, const float* const* src, int n, size_t len, ReduceOp op);

}  // namespace ptrain::comm::shm
