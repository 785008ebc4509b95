// ZeRO stage 1 (Rajbhandari et al., 2020): the optimizer state is sharded over the
// data-parallel group. Each step the summed gradients are reduce-scattered so that rank d
// receives its shard, rank d updates only that shard of the parameters, and the updated shards
// are allgathered back into every rank's full parameter buffer. The flat buffers are padded to
// dp * chunk elements (chunk = ceil(n / dp)), so every rank's shard is optim::Shard::of_rank.
#pragma once

#include "ptrain/comm/communicator.h"
#include "ptrain/nn/model.h"
#include "ptrain/optim/optimizer.h"
#include "ptrain/tensor/tensor.h"

namespace ptrain::parallel {

class Zero1 {
 public:
  // `dp` is the data-parallel group; the model must outlive this object. Only the dense
  // parameters (the first dense_numel() elements) are sharded; sharded ones stay with their
  // owners and their sparse optimizer.
  Zero1(nn::Model& model, comm::Communicator& dp);

  // This rank's part of the flat parameter buffer.
  optim::Shard shard() const { return shard_; }
  // Reduce-scatters grad_data() over the group: afterwards grad_data()[shard()] holds the sum.
  void reduce_scatter_grads();
  // Allgathers every rank's updated param_data()[shard()] into param_data().
  void allgather_params();
  // Joins per-rank state buffers covering shard() (optimizer state) into one full flat buffer
  // on the model's device; the pointer stays valid until the next call on this object.
  const float* allgather_state(const float* shard_data);

 private:
  nn::Model& model_;
  comm::Communicator& dp_;
  optim::Shard shard_;
  size_t chunk_ = 0;
  tensor::Tensor send_, recv_, gather_;  // [dp * chunk], [chunk], [dp * chunk]
};

}  // namespace ptrain::parallel
