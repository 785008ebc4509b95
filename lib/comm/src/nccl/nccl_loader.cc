// The NCCL entry points of a ptrain built with CUDA: the communicator itself lives in the CUDA
// plugin (libptrain_cuda.so, see ptrain/tensor/cuda_plugin.h), loaded on the first NCCL group.
#include <fmt/format.h>

#include "ptrain/comm/nccl.h"
#include "ptrain/core/error.h"
#include "ptrain/tensor/cuda_plugin.h"

namespace ptrain::comm {

bool nccl_built() {
  return true;
}

std::unique_ptr<Communicator> create_nccl_communicator(const GroupInfo& group,
                                                       std::shared_ptr<rendezvous::Store> store,
                                                       const NcclOptions& options) {
  using Create = void (*)(const GroupInfo*, const std::shared_ptr<rendezvous::Store>*,
                          const NcclOptions*, std::unique_ptr<Communicator>*);
  auto create = reinterpret_cast<Create>(tensor::cuda_plugin_symbol("ptrain_nccl_create"));
  if (!create) {
    std::string why = tensor::cuda_plugin_error();
    if (why.empty()) why = "the CUDA plugin has no ptrain_nccl_create entry point";
    throw ConfigError(
        fmt::format("group '{}': the nccl backend is not available: {}", group.name, why),
        "use comm: gloo, or make the CUDA 13 runtime and NCCL findable (the "
        "bundle's bin/ptrain does that) and keep lib/libptrain_cuda.so beside ptrain");
  }
  std::unique_ptr<Communicator> out;
  create(&group, &store, &options, &out);
  return out;
}

}  // namespace ptrain::comm
