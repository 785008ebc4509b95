// The tensor half of libptrain_cuda.so's exported entry points (C names, found with dlsym by
// ../cuda_plugin.cc); everything else in the plugin is hidden.
#include <cstddef>
#include <string>

#include "cuda_ops.h"
#include "ptrain/tensor/cuda_plugin.h"

#define PTRAIN_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))

PTRAIN_PLUGIN_EXPORT int ptrain_cuda_plugin_abi() {
  return ptrain::tensor::kCudaPluginAbi;
}

PTRAIN_PLUGIN_EXPORT size_t ptrain_cuda_ops_size() {
  return sizeof(ptrain::tensor::Ops);
}

PTRAIN_PLUGIN_EXPORT const ptrain::tensor::Ops* ptrain_cuda_get_ops() {
  return ptrain::tensor::cuda::get_ops();
}

PTRAIN_PLUGIN_EXPORT void ptrain_cuda_unavailable_reason(std::string* out) {
  *out = ptrain::tensor::cuda::unavailable_reason();
}

PTRAIN_PLUGIN_EXPORT int ptrain_cuda_device_index() {
  return ptrain::tensor::cuda::device_index();
}
