// The NCCL backend (GPU): a Communicator over device buffers with one CUDA stream, its
// ncclUniqueId published through our rendezvous::Store. Compiled when CUDA is present.
#pragma once

#include <memory>

#include "ptrain/comm/communicator.h"
#include "ptrain/rendezvous/store.h"

namespace ptrain::comm {

struct NcclOptions {
  CommOptions comm;
  int device = -1;  // CUDA device ordinal; -1 = the calling thread's current device
};

// True when ptrain was built with the NCCL backend (a GPU may still be absent).
bool nccl_built();

// Group rank 0 creates the ncclUniqueId and publishes it under "nccl_id" in `store` (prefixed
// for this group); the others wait for it. Throws ConfigError when built without CUDA or when
// no GPU is usable, TimeoutError when the group does not form within options.comm.timeout.
std::unique_ptr<Communicator> create_nccl_communicator(const GroupInfo& group,
                                                       std::shared_ptr<rendezvous::Store> store,
                                                       const NcclOptions& options = {});

}  // namespace ptrain::comm
