#include "ptrain/parallel/zero1.h"

#include "ptrain/core/error.h"

namespace ptrain::parallel {

using comm::DType;
using comm::ReduceOp;

Zero1::Zero1(nn::Model& model, comm::Communicator& dp) : model_(model), dp_(dp) {
  // Dense parameters only (they come first); sharded ones stay with their owners.
  const size_t n = model.dense_numel();
  const int world = dp.size();
  shard_ = optim::Shard::of_rank(n, dp.rank(), world);
  chunk_ = (n + size_t(world) - 1) / size_t(world);
  const auto dev = model.device();
  send_ = tensor::Tensor::zeros({int64_t(chunk_ * size_t(world))}, tensor::DType::kF32, dev);
  recv_ = tensor::Tensor::zeros({int64_t(chunk_)}, tensor::DType::kF32, dev);
  gather_ = tensor::Tensor::zeros({int64_t(chunk_ * size_t(world))}, tensor::DType::kF32, dev);
}

void Zero1::reduce_scatter_grads() {
  const auto& ops = tensor::ops(model_.device());
  ops.copy(send_.data<float>(), model_.grad_data(), model_.dense_numel() * sizeof(float));
  dp_.reduce_scatter(send_.data<float>(), recv_.data<float>(), chunk_, DType::kF32, ReduceOp::kSum);
  ops.copy(model_.grad_data() + shard_.begin, recv_.data<float>(), shard_.size() * sizeof(float));
}

void Zero1::allgather_params() {
  const auto& ops = tensor::ops(model_.device());
  ops.copy(model_.param_data(), allgather_state(model_.param_data() + shard_.begin),
           model_.dense_numel() * sizeof(float));
}

const float* Zero1::allgather_state(const float* shard_data) {
  const auto& ops = tensor::ops(model_.device());
  ops.copy(recv_.data<float>(), shard_data, shard_.size() * sizeof(float));
  dp_.allgather(recv_.data<float>(), gather_.data<float>(), chunk_, DType::kF32);
  return gather_.data<float>();
}

}  // namespace ptrain::parallel
