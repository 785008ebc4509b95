// One scalar reduced over a group (a loss sum, a sum of squares for the gradient norm): the
// value goes through a device scalar when the model lives on a GPU, since NCCL and host
// staging take device buffers only.
#pragma once

#include "ptrain/comm/communicator.h"
#include "ptrain/tensor/tensor.h"

namespace ptrain::parallel {

class ScalarReducer {
 public:
  explicit ScalarReducer(tensor::Device device) : device_(device) {}
  // Reduces `v` (as fp32, like every gradient) over `group` with `op`; the identity for a group
  // of one.
  double reduce_scalar(comm::Communicator& group, double v, comm::ReduceOp op);

 private:
  tensor::Device device_;
  tensor::Tensor scratch_;  // [1] on the device, made on first use
};

}  // namespace ptrain::parallel
