#include "ptrain/train/worker.h"

#include <fmt/format.h>

#include <cstdio>

#include "ptrain/comm/gloo.h"
#include "ptrain/comm/mesh.h"
#include "ptrain/core/env.h"
#include "ptrain/train/setup.h"
#include "ptrain/train/trainer.h"

namespace ptrain::train {

int run_worker(launch::WorkerContext& ctx) {
  const auto& spec = ctx.spec;
  const auto& join = ctx.join;
  comm::MeshShape shape{spec.parallel.data, spec.parallel.tensor, spec.parallel.pipeline};

  tensor::Device device = resolve_device(spec.nodes.device);
  // Ranks per GPU: the launcher gives each local rank its own GPU when the device is cuda.
  int ranks_per_gpu = env_get("CUDA_VISIBLE_DEVICES") ? 1 : join.world_size;
  comm::Backend backend = comm::choose_backend(spec.parallel.comm, device, ranks_per_gpu);
  comm::BackendOptions bo;
  bo.comm.timeout = Millis(static_cast<int64_t>(spec.rendezvous.timeout_s * 1000));
  bo.comm.check_consistency = false;  // every rank runs the same schedule; saves a round trip
  bo.gloo_hostname = comm::gloo_host_for(ctx.client.address());
  comm::ProcessMesh mesh(join.rank, join.world_size, shape,
                         comm::make_comm_factory(backend, ctx.store, bo), join.round);

  TrainContext tc;
  tc.rank = join.rank;
  tc.restart = join.round;
  tc.run_dir = join.run_dir;
  tc.mesh = &mesh;
  tc.report = ctx.report;
  tc.stop_requested = ctx.stop_requested;
  tc.on_step = ctx.set_step;
  tc.store = ctx.store;  // data_mode: async finds its parameter servers here
  tc.token = env_or("PTRAIN_TOKEN", "");
  auto result = run_training(spec, tc);
  if (ctx.stop_requested && ctx.stop_requested()) return 1;
  std::printf("done: %lld steps, final loss %.4f, %.0f tokens/s\n",
              static_cast<long long>(result.steps_done), result.final_loss, result.tokens_per_s);
  std::fflush(stdout);
  return 0;
}

}  // namespace ptrain::train
