// Internal declarations shared by the CPU op table's source files.
#pragma once

#include <cstdint>

#include "ptrain/tensor/ops.h"

namespace ptrain::tensor::cpu {

const Ops& table();

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH);

}  // namespace ptrain::tensor::cpu
