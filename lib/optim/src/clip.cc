#include "ptrain/optim/clip.h"

#include <cmath>

#include "ptrain/core/error.h"

namespace ptrain::optim {

double grad_sum_squares(const tensor::Ops& ops, const float* grads, Shard shard) {
  if (shard.size() == 0) return 0.0;
  return ops.sum_squares(grads + shard.begin, shard.size());
}

double clip_coefficient(double total_norm, double max_norm) {
  if (!std::isfinite(total_norm)) return 1.0;
  double coef = max_norm / (total_norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

double clip_grads(const tensor::Ops& ops, float* grads, Shard shard, double total_norm,
                  double max_norm) {
  if (!(max_norm > 0)) {
    throw ConfigError(fmt::format("grad_clip max_norm must be > 0, got {}", max_norm));
  }
  double coef = clip_coefficient(total_norm, max_norm);
  if (coef < 1.0 && shard.size() > 0) {
    ops.scale(grads + shard.begin, static_cast<float>(coef), shard.size());
  }
  return coef;
}

double clip_grad_norm(const tensor::Ops& ops, float* grads, size_t n, double max_norm) {
  Shard all{0, n};
  double norm = std::sqrt(grad_sum_squares(ops, grads, all));
  clip_grads(ops, grads, all, norm, max_norm);
  return norm;
}

}  // namespace ptrain::optim
