#include "ptrain/comm/mesh.h"

#include <fmt/format.h>

#include <algorithm>

#include "ptrain/comm/nccl.h"
#include "ptrain/comm/shm.h"
#include "ptrain/core/error.h"

namespace ptrain::comm {

const char* to_string(GroupKind kind) {
  switch (kind) {
    case GroupKind::kWorld:
      return "world";
    case GroupKind::kDp:
      return "dp";
    case GroupKind::kTp:
      return "tp";
    case GroupKind::kPp:
      return "pp";
  }
  return "?";
}

const char* to_string(Backend backend) {
  switch (backend) {
    case Backend::kGloo:
      return "gloo";
    case Backend::kNccl:
      return "nccl";
    case Backend::kShm:
      return "shm";
    case Backend::kHostAuto:
      return "auto (shm within a host, gloo across)";
  }
  return "?";
}

Backend choose_backend(const std::string& requested, tensor::Device device, int ranks_per_gpu) {
  const bool cuda = device == tensor::Device::kCuda;
  if (requested == "gloo") return Backend::kGloo;
  if (requested == "shm") return Backend::kShm;
  if (requested == "nccl") {
    if (!nccl_built())
      throw ConfigError("parallel.comm: nccl was requested but ptrain was built without CUDA",
                        "use comm: gloo (or auto), or a ptrain built with the CUDA toolkit");
    if (!cuda)
      throw ConfigError("parallel.comm: nccl needs the job to run on CUDA devices",
                        "set nodes.device: cuda, or use comm: gloo");
    if (ranks_per_gpu != 1)
      throw ConfigError(fmt::format("parallel.comm: nccl needs one GPU per rank, but {} ranks "
                                    "share each GPU",
                                    ranks_per_gpu),
                        "lower procs_per_node to the GPU count, or use comm: gloo");
    return Backend::kNccl;
  }
  if (requested == "auto")
    return cuda && ranks_per_gpu == 1 && nccl_built() ? Backend::kNccl : Backend::kHostAuto;
  throw ConfigError(fmt::format("parallel.comm: unknown backend '{}'", requested),
                    "use auto, gloo, shm or nccl");
}

CommFactory make_comm_factory(Backend backend, std::shared_ptr<rendezvous::Store> store,
                              BackendOptions options) {
  return [backend, store = std::move(store), options](const GroupSpec& spec) {
    auto prefixed = std::make_shared<rendezvous::PrefixStore>(spec.key_prefix, store);
    if (backend == Backend::kNccl)
      return create_nccl_communicator(spec.info(), prefixed, {options.comm, options.cuda_device});
    bool shm = backend == Backend::kShm;
    if (backend == Backend::kHostAuto) {
      // Every rank publishes where it runs; all of them see the same answer.
      const auto group = spec.info();
      prefixed->set(fmt::format("host/{}", group.rank), shm_host_identity());
      std::vector<std::string> keys;
      for (int r = 0; r < group.size; ++r) keys.push_back(fmt::format("host/{}", r));
      const auto hosts = prefixed->multi_get(keys, options.comm.timeout);
      shm = std::all_of(hosts.begin(), hosts.end(), [&](const auto& h) { return h == hosts[0]; });
    }
    if (shm) {
      ShmOptions o;
      o.comm = options.comm;
      o.tag = options.shm_tag;
      return create_shm_communicator(spec.info(), prefixed, o);
    }
    GlooOptions gloo;
    gloo.comm = options.comm;
    gloo.hostname = options.gloo_hostname;
    gloo.iface = options.gloo_iface;
    return create_gloo_communicator(spec.info(), prefixed, gloo);
  };
}

ProcessMesh::ProcessMesh(int rank, int world, MeshShape shape, CommFactory factory, int round)
    : rank_(rank), world_(world), shape_(shape), factory_(std::move(factory)), round_(round) {
  if (shape.dp < 1 || shape.tp < 1 || shape.pp < 1)
    throw ConfigError(fmt::format("mesh dp={} tp={} pp={}: every dimension must be at least 1",
                                  shape.dp, shape.tp, shape.pp));
  if (shape.world() != world)
    throw ConfigError(fmt::format("mesh dp={} x tp={} x pp={} = {} ranks, but the world has {}",
                                  shape.dp, shape.tp, shape.pp, shape.world(), world),
                      "make parallel.data * tensor * pipeline equal the number of workers");
  if (rank < 0 || rank >= world)
    throw ConfigError(fmt::format("rank {} is outside a world of {}", rank, world));
  PTRAIN_CHECK(factory_ != nullptr, "ProcessMesh needs a communicator factory");
}

ProcessMesh::~ProcessMesh() = default;

std::vector<int> ProcessMesh::group_ranks(GroupKind kind) const {
  std::vector<int> ranks;
  MeshCoords c = coords();
  switch (kind) {
    case GroupKind::kWorld:
      for (int r = 0; r < world_; ++r) ranks.push_back(r);
      break;
    case GroupKind::kTp:
      for (int t = 0; t < shape_.tp; ++t) ranks.push_back(rank_of({c.dp, t, c.pp}, shape_));
      break;
    case GroupKind::kDp:
      for (int d = 0; d < shape_.dp; ++d) ranks.push_back(rank_of({d, c.tp, c.pp}, shape_));
      break;
    case GroupKind::kPp:
      for (int p = 0; p < shape_.pp; ++p) ranks.push_back(rank_of({c.dp, c.tp, p}, shape_));
      break;
  }
  return ranks;
}

GroupSpec ProcessMesh::group_spec(GroupKind kind) const {
  GroupSpec spec;
  spec.kind = kind;
  spec.ranks = group_ranks(kind);
  for (size_t i = 0; i < spec.ranks.size(); ++i)
    if (spec.ranks[i] == rank_) spec.rank = static_cast<int>(i);
  const auto& r = spec.ranks;
  // Every group is an arithmetic progression of ranks: start, stride, count identify it.
  const int stride = r.size() > 1 ? r[1] - r[0] : 1;
  if (kind == GroupKind::kWorld) {
    spec.name = "world";
  } else if (r.size() <= 8) {
    spec.name = fmt::format("{}[{}]", to_string(kind), fmt::join(r, ","));
  } else {
    spec.name = fmt::format("{}[{},{},..,{}]", to_string(kind), r[0], r[1], r.back());
  }
  spec.key_prefix =
      fmt::format("comm/r{}/{}/{}+{}x{}", round_, to_string(kind), r[0], stride, r.size());
  return spec;
}

Communicator& ProcessMesh::group(GroupKind kind) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = comms_[static_cast<size_t>(kind)];
  if (!slot) {
    slot = factory_(group_spec(kind));
    PTRAIN_CHECK(slot != nullptr, "the communicator factory returned nothing for {}",
                 to_string(kind));
  }
  return *slot;
}

}  // namespace ptrain::comm
