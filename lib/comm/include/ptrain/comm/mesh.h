// The process mesh of docs/ARCHITECTURE.md ("The mesh"): rank r of W = dp*tp*pp has coordinates
// tp = r % TP, dp = (r / TP) % DP, pp = r / (TP*DP) (tensor-parallel innermost, so a tensor
// group shares a node), and one communicator per tp-, dp- and pp-group, created on first use.
//
//   ProcessMesh mesh(rank, world, {.dp = 2, .tp = 2, .pp = 2},
//                    make_comm_factory(Backend::kGloo, store, {}));
//   mesh.dp().allreduce(grads, n, DType::kF32, ReduceOp::kAvg);
//
// Creating a group is collective: every rank of the group must create it, and ranks must create
// the groups they share in the same order (accessing tp(), dp(), pp() in a fixed order does it).
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ptrain/comm/communicator.h"
#include "ptrain/comm/gloo.h"
#include "ptrain/core/mesh.h"
#include "ptrain/rendezvous/store.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::comm {

// The shape and coordinates of ptrain/core/mesh.h, the one rank <-> coordinate mapping.
using ptrain::MeshCoords;
using ptrain::MeshShape;

enum class GroupKind { kWorld, kDp, kTp, kPp };
const char* to_string(GroupKind kind);

// kHostAuto decides per group: shared memory (kShm) when every rank of the group runs on this
// host, Gloo otherwise.
enum class Backend { kGloo, kNccl, kShm, kHostAuto };
const char* to_string(Backend backend);

// `parallel.comm`: "gloo", "nccl", "shm" or "auto" (NCCL when the job runs on CUDA with every
// rank on its own GPU, i.e. ranks_per_gpu == 1, and ptrain was built with NCCL; else kHostAuto:
// shm inside a host, Gloo across hosts). Throws ConfigError for an unknown word or an
// impossible request (nccl on CPU, or GPUs shared).
Backend choose_backend(const std::string& requested, tensor::Device device, int ranks_per_gpu);

// One group as the factory sees it.
struct GroupSpec {
  GroupKind kind = GroupKind::kWorld;
  std::vector<int> ranks;  // global ranks, in group-rank order
  int rank = 0;            // this process's index in `ranks`
  std::string name;        // "world", "tp[0,1]", "dp[0,2,4,6]": printed in every error
  std::string key_prefix;  // unique per group and round: "comm/r0/dp/0+2x4"
  GroupInfo info() const { return {name, rank, static_cast<int>(ranks.size())}; }
};

using CommFactory = std::function<std::unique_ptr<Communicator>(const GroupSpec&)>;

struct BackendOptions {
  CommOptions comm;
  std::string gloo_hostname = "127.0.0.1";  // see GlooOptions; gloo_host_for() for multi-host
  std::string gloo_iface;
  int cuda_device = -1;         // NCCL: -1 = the current device
  std::string shm_tag = "job";  // shm: names the segments (the run id)
};

// The standard factory: a PrefixStore(key_prefix) over `store`, then the chosen backend.
CommFactory make_comm_factory(Backend backend, std::shared_ptr<rendezvous::Store> store,
                              BackendOptions options = {});

class ProcessMesh {
 public:
  // `round` (the restart count) goes into every key prefix, so a restarted job never meets
  // the previous round's keys. Throws ConfigError when world != dp*tp*pp or rank is outside.
  ProcessMesh(int rank, int world, MeshShape shape, CommFactory factory, int round = 0);
  ~ProcessMesh();

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  const MeshShape& shape() const { return shape_; }
  MeshCoords coords() const { return coords_of(rank_, shape_); }

  static MeshCoords coords_of(int rank, const MeshShape& shape) {
    return ptrain::coords_of(rank, shape);
  }
  static int rank_of(const MeshCoords& coords, const MeshShape& shape) {
    return ptrain::rank_of(coords, shape);
  }

  // Global ranks of this rank's group of that kind, in group-rank order.
  std::vector<int> group_ranks(GroupKind kind) const;
  GroupSpec group_spec(GroupKind kind) const;

  // The communicators, created on first use (thread-safe).
  Communicator& group(GroupKind kind);
  Communicator& world() { return group(GroupKind::kWorld); }
  Communicator& dp() { return group(GroupKind::kDp); }
  Communicator& tp() { return group(GroupKind::kTp); }
  Communicator& pp() { return group(GroupKind::kPp); }

 private:
  int rank_;
  int world_;
  MeshShape shape_;
  CommFactory factory_;
  int round_;
  std::mutex mu_;
  std::array<std::unique_ptr<Communicator>, 4> comms_;
};

}  // namespace ptrain::comm
