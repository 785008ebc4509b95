// Sparse updates of embedding tables that live with their owners (sharded parameters): only
// the rows a step looked up change. SGD, or row-wise Adagrad as TorchRec's (FBGEMM's) default:
// one accumulator per row,
//   acc[r] += mean_d g[r,d]^2;   w[r,d] -= lr * g[r,d] / (sqrt(acc[r]) + eps).
// Weight decay never applies. Host memory (the tables are host tensors).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ptrain::optim {

struct RowSparseOptions {
  std::string type = "sgd";  // sgd | adagrad
  float eps = 1e-8f;         // adagrad
};

class RowSparseOptimizer {
 public:
  // Throws ConfigError for an unknown type or eps <= 0.
  explicit RowSparseOptimizer(RowSparseOptions options);
  // A table of `rows` local rows of `dim`; returns its index for step() and accumulator().
  size_t add_table(int64_t rows, int64_t dim);
  // Updates rows `touched` (local, each in [0, rows)) of table t: param, grad [rows, dim].
  void step(size_t t, float* param, const float* grad, const std::vector<int64_t>& touched,
            float lr);
  // Adagrad's accumulators of table t [rows] (nullptr for SGD, which has no state).
  float* accumulator(size_t t);
  bool has_state() const { return options_.type == "adagrad"; }
  const char* name() const { return options_.type == "adagrad" ? "rowwise_adagrad" : "sgd"; }
  size_t tables() const { return dims_.size(); }
  size_t state_bytes() const;

 private:
  RowSparseOptions options_;
  std::vector<int64_t> rows_, dims_;
  std::vector<std::vector<float>> acc_;  // [rows] per table (adagrad)
};

}  // namespace ptrain::optim
