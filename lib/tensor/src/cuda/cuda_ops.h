// The seam between the tensor module and its CUDA backend: cuda_ops() returns get_ops() when
// ptrain_tensor is built with PTRAIN_WITH_CUDA. No CUDA types here.
#pragma once

#include <string>

#include "ptrain/tensor/ops.h"

namespace ptrain::tensor::cuda {

// The CUDA op table bound to this process's device, or nullptr when no device is usable (no
// driver, driver too old, no GPU). The first call picks the device (see device_index()).
const Ops* get_ops();

// Why get_ops() returned nullptr ("" when it did not), e.g. "cudaGetDeviceCount: CUDA driver
// version is insufficient for CUDA runtime version".
std::string unavailable_reason();

// The device index get_ops() chose: PTRAIN_CUDA_DEVICE when set; else 0 when the launcher set
// CUDA_VISIBLE_DEVICES (it exposes one GPU per worker); else LOCAL_RANK modulo the device count
// (several ranks per GPU share one); else 0. -1 before get_ops() succeeded.
int device_index();

}  // namespace ptrain::tensor::cuda
