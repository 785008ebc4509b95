#include "ptrain/parallel/scalar.h"

namespace ptrain::parallel {

double ScalarReducer::reduce_scalar(comm::Communicator& group, double v, comm::ReduceOp op) {
  float f = float(v);
  if (group.size() == 1) return v;
  if (device_ == tensor::Device::kCpu) {
    group.allreduce(&f, 1, comm::DType::kF32, op);
    return f;
  }
  if (!scratch_.defined()) scratch_ = tensor::Tensor::zeros({1}, tensor::DType::kF32, device_);
  scratch_.copy_from_host(&f, sizeof f);
  group.allreduce(scratch_.data<float>(), 1, comm::DType::kF32, op);
  scratch_.copy_to_host(&f, sizeof f);
  return f;
}

}  // namespace ptrain::parallel
