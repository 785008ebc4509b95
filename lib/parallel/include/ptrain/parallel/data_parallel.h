// Synchronous data parallelism: gradients summed over the data-parallel group in buckets of
// `bucket_mb`, each launched asynchronously as soon as backward has finished writing it, so
// communication overlaps the rest of backward (PyTorch DDP's reducer, on a flat gradient buffer).
//
// Buckets are contiguous ranges of the flat gradient buffer taken in reverse parameter order (the
// order backward finishes them); every rank builds the same buckets from the same parameter list,
// so every rank launches the same allreduces in the same order. Gradients are SUMMED, not
// averaged: the trainer scales each rank's loss by 1 / (tokens of the global batch), so the sum
// is the gradient of the global mean loss.
#pragma once

#include <memory>
#include <vector>

#include "ptrain/comm/communicator.h"
#include "ptrain/nn/model.h"

namespace ptrain::parallel {

struct ReducerOptions {
  double bucket_mb = 25;  // bucket capacity; one parameter larger than this gets its own bucket
  bool overlap = true;    // launch buckets during backward (false: all after backward)
  Millis timeout = comm::kDefaultCommTimeout;
};

// One bucket: grad_data()[begin, end), covering params [first_param, last_param].
struct Bucket {
  size_t begin = 0;
  size_t end = 0;
  size_t first_param = 0;  // lowest parameter index in the bucket
  size_t last_param = 0;   // highest
  size_t count = 0;        // dense parameters in the bucket
  size_t ready = 0;        // parameters whose gradient is final in this backward
};

// Buckets for the dense `params` (forward order), filled in reverse order; sharded parameters
// are left out. Exposed for tests.
std::vector<Bucket> make_buckets(const std::vector<nn::ParamInfo>& params, double bucket_mb);

class DataParallelReducer {
 public:
  // `comm` is the data-parallel group; `model` must outlive the reducer. Installs the model's
  // grad-ready hook.
  DataParallelReducer(nn::Model& model, comm::Communicator& comm, ReducerOptions options = {});
  ~DataParallelReducer();

  // Call before the backward pass whose gradients are final (the last microstep of a step);
  // earlier microsteps accumulate locally and communicate nothing.
  void arm();
  // Waits for every bucket (launching those not yet launched) and disarms. After it returns
  // grad_data() holds the sum over the group.
  void finish();

  const std::vector<Bucket>& buckets() const { return buckets_; }
  // Seconds spent blocked in finish() during the last step (communication not hidden).
  double last_wait_s() const { return last_wait_s_; }
  // Seconds from the first launch to the end of finish() (communication span).
  double last_span_s() const { return last_span_s_; }
  // Bytes this rank sent into allreduces in the last step.
  size_t last_bytes() const { return last_bytes_; }

 private:
  void on_grad_ready(size_t param_index);
  void launch(size_t bucket_index);

  nn::Model& model_;
  comm::Communicator& comm_;
  ReducerOptions options_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_param_;
  std::vector<std::unique_ptr<comm::Work>> works_;
  size_t next_launch_ = 0;  // buckets launch strictly in order on every rank
  bool armed_ = false;
  double first_launch_time_ = 0;
  double last_wait_s_ = 0;
  double last_span_s_ = 0;
  size_t last_bytes_ = 0;
};

}  // namespace ptrain::parallel
