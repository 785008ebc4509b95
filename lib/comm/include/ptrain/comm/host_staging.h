// Host staging: a Communicator that takes device buffers, copies them to host memory, runs a
// host-only backend (Gloo) on the copies and copies the results back. Lets several ranks that
// share one GPU (where NCCL refuses to run) still train with device tensors.
//
//   auto c = wrap_host_staging(create_gloo_communicator(...), tensor::ops(Device::kCuda));
//   c->allreduce(device_grads, n, DType::kF32);   // device -> host, Gloo, host -> device
#pragma once

#include <memory>

#include "ptrain/comm/communicator.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::comm {

// Every buffer passed to the returned communicator must be a device pointer of `device_ops`
// (the table must outlive it). Inputs are copied to host when an op is issued (this
// synchronizes the device, so kernels that produced them have finished); outputs are copied
// back when the op's Work is waited for. Async ops keep their staging memory in the Work.
std::unique_ptr<Communicator> wrap_host_staging(std::unique_ptr<Communicator> inner,
                                                const tensor::Ops& device_ops);

}  // namespace ptrain::comm
