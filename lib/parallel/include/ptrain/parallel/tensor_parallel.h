// Tensor (Megatron) parallelism glue: the nn::TensorParallelComm a split model calls, over the
// tensor group's Communicator (with counters for the step figures), the global gradient norm of
// a split model, and joining a split parameter's parts for a checkpoint.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ptrain/comm/communicator.h"
#include "ptrain/nn/model.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::parallel {

// Blocking allreduces over the tensor group (buffers on the model's device: host for Gloo,
// device for NCCL). Counts calls, bytes and seconds so the trainer can report them per step.
class TensorParallelComm : public nn::TensorParallelComm {
 public:
  explicit TensorParallelComm(comm::Communicator& group) : group_(group) {}
  void allreduce_sum(float* data, size_t count) override;
  void allreduce_max(float* data, size_t count) override;
  int rank() const override { return group_.rank(); }
  int size() const override { return group_.size(); }
  void alltoallv(const void* send, const std::vector<size_t>& send_counts, void* recv,
                 const std::vector<size_t>& recv_counts, tensor::DType dtype) override;

  struct Counters {
    uint64_t calls = 0;
    uint64_t bytes = 0;  // payload bytes handed to allreduce
    double seconds = 0;  // time inside the allreduces
    uint64_t a2a_calls = 0;
    uint64_t a2a_bytes = 0;  // bytes this rank sent to the other ranks in all-to-alls
    double a2a_seconds = 0;  // time inside the all-to-alls
  };
  const Counters& counters() const { return counters_; }
  void reset_counters() { counters_ = {}; }

 private:
  void run(float* data, size_t count, comm::ReduceOp op);
  comm::Communicator& group_;
  Counters counters_;
};

// Sum of squares of grads[begin, end) (offsets into the model's flat buffer) counting each
// element of the full model once over the tensor group: split parameters always, replicated
// ones (LayerNorms, wpe, row-parallel biases) only on tensor rank 0. Summed over the tensor
// group (and the data group for ZeRO shards) it is the unsplit model's squared norm.
double tensor_parallel_sum_squares(const tensor::Ops& ops, const nn::Model& model,
                                   const float* grads, size_t begin, size_t end, int tp_rank);

// Collective over the tensor group: the full tensor (p.full_shape) of parameter `p` from every
// rank's part `shard` [p.numel] (device memory), returned on tensor rank 0 (empty elsewhere).
// A replicated parameter is copied from this rank.
std::vector<float> gather_split_param(comm::Communicator& tp, const tensor::Ops& ops,
                                      const nn::ParamInfo& p, const float* shard);

}  // namespace ptrain::parallel
