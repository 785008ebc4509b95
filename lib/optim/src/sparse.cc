// Row-sparse SGD and row-wise Adagrad (sparse.h).
#include "ptrain/optim/sparse.h"

#include <fmt/format.h>

#include <cmath>

#include "ptrain/core/error.h"

namespace ptrain::optim {

RowSparseOptimizer::RowSparseOptimizer(RowSparseOptions options) : options_(std::move(options)) {
  if (options_.type != "sgd" && options_.type != "adagrad")
    throw ConfigError(
        fmt::format("train.optimizer.embeddings.type '{}' is not sgd or adagrad", options_.type));
  if (!(options_.eps > 0))
    throw ConfigError(
        fmt::format("train.optimizer.embeddings.eps {} must be positive", options_.eps));
}

size_t RowSparseOptimizer::add_table(int64_t rows, int64_t dim) {
  PTRAIN_CHECK(rows >= 0 && dim > 0, "table of {} x {}", rows, dim);
  rows_.push_back(rows);
  dims_.push_back(dim);
  acc_.emplace_back(has_state() ? size_t(rows) : 0, 0.f);
  return dims_.size() - 1;
}

void RowSparseOptimizer::step(size_t t, float* param, const float* grad,
                              const std::vector<int64_t>& touched, float lr) {
  PTRAIN_CHECK(t < dims_.size(), "table {} of {}", t, dims_.size());
  const size_t D = size_t(dims_[t]);
  for (int64_t r : touched) {
    PTRAIN_CHECK(r >= 0 && r < rows_[t], "row {} outside [0, {})", r, rows_[t]);
    float* w = param + size_t(r) * D;
    const float* g = grad + size_t(r) * D;
    if (!has_state()) {
      for (size_t d = 0; d < D; ++d) w[d] -= lr * g[d];
      continue;
    }
    double sq = 0;
    for (size_t d = 0; d < D; ++d) sq += double(g[d]) * g[d];
    float& acc = acc_[t][size_t(r)];
    acc += float(sq / double(D));
    const float scale = lr / (std::sqrt(acc) + options_.eps);
    for (size_t d = 0; d < D; ++d) w[d] -= scale * g[d];
  }
}

float* RowSparseOptimizer::accumulator(size_t t) {
  PTRAIN_CHECK(t < dims_.size(), "table {} of {}", t, dims_.size());
  return has_state() ? acc_[t].data() : nullptr;
}

size_t RowSparseOptimizer::state_bytes() const {
  size_t n = 0;
  for (const auto& a : acc_) n += a.size() * sizeof(float);
  return n;
}

}  // namespace ptrain::optim
