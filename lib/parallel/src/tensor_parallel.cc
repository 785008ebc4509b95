// Tensor-parallel glue over a comm::Communicator.
#include "ptrain/parallel/tensor_parallel.h"

#include <algorithm>

#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/tensor/tensor.h"

namespace ptrain::parallel {

void TensorParallelComm::run(float* data, size_t count, comm::ReduceOp op) {
  double t0 = mono_seconds();
  group_.allreduce(data, count, comm::DType::kF32, op);
  counters_.seconds += mono_seconds() - t0;
  counters_.calls += 1;
  counters_.bytes += count * sizeof(float);
}

void TensorParallelComm::allreduce_sum(float* data, size_t count) {
  run(data, count, comm::ReduceOp::kSum);
}

void TensorParallelComm::allreduce_max(float* data, size_t count) {
  run(data, count, comm::ReduceOp::kMax);
}

void TensorParallelComm::alltoallv(const void* send, const std::vector<size_t>& send_counts,
                                   void* recv, const std::vector<size_t>& recv_counts,
                                   tensor::DType dtype) {
  double t0 = mono_seconds();
  group_.alltoallv(send, send_counts, recv, recv_counts, dtype);
  counters_.a2a_seconds += mono_seconds() - t0;
  counters_.a2a_calls += 1;
  for (size_t j = 0; j < send_counts.size(); ++j)
    if (int(j) != group_.rank()) counters_.a2a_bytes += send_counts[j] * 4;
}

double tensor_parallel_sum_squares(const tensor::Ops& ops, const nn::Model& model,
                                   const float* grads, size_t begin, size_t end, int tp_rank) {
  double sum = 0;
  for (const auto& p : model.params()) {
    if (!p.is_split() && tp_rank != 0) continue;
    size_t lo = std::max(p.offset, begin), hi = std::min(p.offset + p.numel, end);
    if (lo < hi) sum += ops.sum_squares(grads + lo, hi - lo);
  }
  return sum;
}

std::vector<float> gather_split_param(comm::Communicator& tp, const tensor::Ops& ops,
                                      const nn::ParamInfo& p, const float* shard) {
  std::vector<float> full;
  if (!p.is_split()) {
    if (tp.rank() != 0) return full;
    full.resize(p.numel);
    ops.copy_to_host(full.data(), shard, p.numel * sizeof(float));
    return full;
  }
  PTRAIN_CHECK(p.split_parts == tp.size(), "{} is split in {} parts but the tensor group has {}",
               p.name, p.split_parts, tp.size());
  // Device staging, so the same code serves Gloo (host) and NCCL (device) groups.
  const auto n = static_cast<int64_t>(p.numel);
  auto send = tensor::Tensor::zeros({n}, tensor::DType::kF32, ops.device);
  auto recv = tensor::Tensor::zeros({n * tp.size()}, tensor::DType::kF32, ops.device);
  ops.copy(send.data<float>(), shard, p.numel * sizeof(float));
  tp.allgather(send.data<float>(), recv.data<float>(), p.numel, comm::DType::kF32);
  if (tp.rank() != 0) return full;
  std::vector<float> parts(p.numel * tp.size());
  ops.copy_to_host(parts.data(), recv.data<float>(), parts.size() * sizeof(float));
  full.resize(p.full_numel());
  for (int r = 0; r < tp.size(); ++r)
    nn::copy_shard_to_full(p, r, parts.data() + p.numel * r, full.data());
  return full;
}

}  // namespace ptrain::parallel
