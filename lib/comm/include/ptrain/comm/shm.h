// The shared-memory backend (CPU, ranks on one host): a Communicator over one POSIX shm segment
// per group, bootstrapped through our rendezvous::Store. Every rank reduces its own slice of each
// chunk (reduce-scatter + allgather over shared buffers); ranks wait on atomics with a short spin
// and then a futex, so an idle rank costs no CPU.
//
//   auto comm = create_shm_communicator({"dp[0,1]", rank, 2}, prefixed_store, {.tag = run_id});
//   comm->allreduce(grads, n, DType::kF32);
//
// The segment is named /ptrain-<tag>-<group>-<pid of rank 0>-<nonce>; it is unlinked as soon
// as every rank has mapped it, so a crash after start-up leaves nothing behind. A crash during
// start-up can leave one: sweep_stale_shm_segments() removes those whose creator is gone (rank 0
// calls it before creating a segment; `ptrain run` calls it at start).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "ptrain/comm/communicator.h"
#include "ptrain/rendezvous/store.h"

namespace ptrain::comm {

// Bytes of one rank's staging slot. A rank's two slots form its staging region: a ring of cells
// of min(512 KiB, slot / 2) that collectives stream through (alltoallv alternates between the
// two slots). PTRAIN_SHM_SLOT_KB overrides it; every rank of a group must use the same.
inline constexpr size_t kDefaultShmSlotBytes = 1u << 20;

struct ShmOptions {
  CommOptions comm;
  std::string tag = "job";  // names the segment: the run id
  size_t slot_bytes = 0;    // 0 = PTRAIN_SHM_SLOT_KB or kDefaultShmSlotBytes
};

// Connects the group's ranks through `store` (already prefixed for this group and round; all
// ranks of the group call this, and all must run on this host). Throws TimeoutError when a peer
// does not show up within options.comm.timeout, IoError when the segment cannot be made.
std::unique_ptr<Communicator> create_shm_communicator(const GroupInfo& group,
                                                      std::shared_ptr<rendezvous::Store> store,
                                                      const ShmOptions& options = {});

// Removes /dev/shm/ptrain-* segments whose creating process no longer runs; returns how many.
int sweep_stale_shm_segments();

// "hostname|boot id": equal for two processes that can share a shm segment.
std::string shm_host_identity();

}  // namespace ptrain::comm
