#include "ptrain/train/worker.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include "ptrain/comm/gloo.h"
#include "ptrain/comm/host_staging.h"
#include "ptrain/comm/mesh.h"
#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/train/setup.h"
#include "ptrain/train/trainer.h"

namespace ptrain::train {
namespace {

// How many ranks share the busiest GPU: every rank publishes host + CUDA_VISIBLE_DEVICES (the
// agent sets it to one GPU per local rank, the same one for ranks that must share).
int ranks_per_gpu(rendezvous::Store& store, int rank, int world, int round) {
  auto cvd = env_get("CUDA_VISIBLE_DEVICES");
  if (!cvd) return world;  // every rank sees every GPU: assume they share
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  std::string prefix = fmt::format("gpu-map/r{}/", round);
  store.set(prefix + std::to_string(rank), std::string(host) + "|" + *cvd);
  std::vector<std::string> keys;
  for (int r = 0; r < world; ++r) keys.push_back(prefix + std::to_string(r));
  std::map<std::string, int> count;
  int most = 1;
  for (const auto& v : store.multi_get(keys)) most = std::max(most, ++count[v]);
  return most;
}

}  // namespace

int run_worker(launch::WorkerContext& ctx) {
  const auto& spec = ctx.spec;
  const auto& join = ctx.join;
  const double joined_at = mono_seconds();
  comm::MeshShape shape{spec.parallel.data, spec.parallel.tensor, spec.parallel.pipeline};

  tensor::Device device = resolve_device(spec.nodes.device);
  // Ranks per GPU: the launcher gives each local rank its own GPU when the device is cuda.
  int per_gpu = device == tensor::Device::kCuda
                    ? ranks_per_gpu(*ctx.store, join.rank, join.world_size, join.round)
                    : 1;
  comm::Backend backend = comm::choose_backend(spec.parallel.comm, device, per_gpu);
  comm::BackendOptions bo;
  bo.comm.timeout = Millis(static_cast<int64_t>(spec.rendezvous.timeout_s * 1000));
  bo.comm.check_consistency = false;  // every rank runs the same schedule; saves a round trip
  bo.gloo_hostname = comm::gloo_host_for(ctx.client.address());
  bo.shm_tag = join.run_id.empty() ? "job" : join.run_id;
  comm::CommFactory factory = comm::make_comm_factory(backend, ctx.store, bo);
  if (device == tensor::Device::kCuda && backend != comm::Backend::kNccl) {
    // Gloo and shm read host memory: stage the device buffers through it (several ranks per GPU).
    factory = [inner = std::move(factory)](const comm::GroupSpec& g) {
      return comm::wrap_host_staging(inner(g), tensor::ops(tensor::Device::kCuda));
    };
  }
  comm::ProcessMesh mesh(join.rank, join.world_size, shape, std::move(factory), join.round);
  if (join.world_size > 1 && join.rank == 0 && device == tensor::Device::kCuda) {
    std::printf("comm: %s%s (%d rank(s) per GPU)\n", comm::to_string(backend),
                backend != comm::Backend::kNccl ? " with host staging" : "", per_gpu);
    std::fflush(stdout);
  }

  TrainContext tc;
  tc.rank = join.rank;
  tc.restart = join.round;
  tc.run_dir = join.run_dir;
  tc.mesh = &mesh;
  tc.report = ctx.report;
  tc.stop_requested = ctx.stop_requested;
  tc.on_step = ctx.set_step;
  tc.store = ctx.store;  // data_mode: async finds its parameter servers here
  if (ctx.store)
    tc.on_checkpoint = [store = ctx.store](int64_t step) {
      try {
        store->set(launch::kCheckpointSavedKey, std::to_string(step));
      } catch (const Error&) {
        // The coordinator is gone: the job is ending, and the checkpoint is on disk regardless.
      }
    };
  tc.token = env_or("PTRAIN_TOKEN", "");
  tc.joined_at = joined_at;
  auto result = run_training(spec, tc);
  if (ctx.stop_requested && ctx.stop_requested()) return 1;
  std::printf("done: %lld steps, final loss %.4f, %.0f tokens/s\n",
              static_cast<long long>(result.steps_done), result.final_loss, result.tokens_per_s);
  std::fflush(stdout);
  return 0;
}

}  // namespace ptrain::train
