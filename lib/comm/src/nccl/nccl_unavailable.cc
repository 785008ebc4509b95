// The NCCL entry points of a ptrain built without CUDA: they say so instead of failing later.
#include "ptrain/comm/nccl.h"
#include "ptrain/core/error.h"

namespace ptrain::comm {

bool nccl_built() {
  return false;
}

std::unique_ptr<Communicator> create_nccl_communicator(const GroupInfo& group,
                                                       std::shared_ptr<rendezvous::Store>,
                                                       const NcclOptions&) {
  throw ConfigError("group '" + group.name +
                        "': this ptrain was built without CUDA, so the nccl "
                        "backend is not available",
                    "use comm: gloo, or build ptrain where the CUDA toolkit is installed");
}

}  // namespace ptrain::comm
