// The NCCL half of libptrain_cuda.so's exported entry points (see nccl_loader.cc): builds the
// communicator inside the plugin and hands it out; its failures propagate as ptrain exceptions.
#include <memory>

#include "ptrain/comm/nccl.h"

#define PTRAIN_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))

PTRAIN_PLUGIN_EXPORT void ptrain_nccl_create(
    const ptrain::comm::GroupInfo* group, const std::shared_ptr<ptrain::rendezvous::Store>* store,
    const ptrain::comm::NcclOptions* options, std::unique_ptr<ptrain::comm::Communicator>* out) {
  *out = ptrain::comm::create_nccl_communicator(*group, *store, *options);
}
