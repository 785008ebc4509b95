// Global-norm gradient clipping like torch.nn.utils.clip_grad_norm_, split in two so a
// data-parallel or ZeRO caller can allreduce the local sum of squares in between:
//   local = grad_sum_squares(...); allreduce(local); norm = sqrt(total);
//   clip_grads(ops, grads, shard, norm, max_norm);
#pragma once

#include <cstddef>

#include "ptrain/optim/optimizer.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::optim {

// Sum of squares of grads[shard.begin, shard.end), in double.
double grad_sum_squares(const tensor::Ops& ops, const float* grads, Shard shard);

// max_norm / (total_norm + 1e-6), or 1 when that is >= 1 (or total_norm is not finite).
double clip_coefficient(double total_norm, double max_norm);

// Multiplies grads[shard] by clip_coefficient(total_norm, max_norm) when it is < 1.
// Returns the coefficient applied (1 = unchanged).
double clip_grads(const tensor::Ops& ops, float* grads, Shard shard, double total_norm,
                  double max_norm);

// Single-process convenience: computes the norm of grads[0, n), clips, returns the norm
// (before clipping), as clip_grad_norm_ does.
double clip_grad_norm(const tensor::Ops& ops, float* grads, size_t n, double max_norm);

}  // namespace ptrain::optim
