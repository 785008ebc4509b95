// Asynchronous data parallelism (parallel.data_mode: async): the worker loop that pulls
// parameters from the parameter servers, computes its share's gradients and pushes them without
// a global barrier, and the server side that builds one shard's optimizer and serves it.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "ptrain/rendezvous/store.h"
#include "ptrain/spec/job_spec.h"
#include "ptrain/train/trainer.h"

namespace ptrain::train {

// The worker loop for data_mode: async (run_training dispatches here). Needs ctx.store (where
// the servers advertise) and ctx.token. Throws RemoteError naming a server that fails.
TrainResult run_async_training(const spec::JobSpec& spec, const TrainContext& ctx);

struct ServerContext {
  int index = 0;        // server shard, [0, parallel.servers)
  int round = 0;        // the rendezvous (restart) round
  std::string run_dir;  // checkpoints go to checkpoint.dir, else RUN_DIR/checkpoints
  std::shared_ptr<rendezvous::Store> store;
  std::string token;
  std::string bind = "127.0.0.1";
  int port = 0;                          // parallel.server_port + index, or 0 = kernel-chosen
  std::function<bool()> stop_requested;  // polled; true once the job is aborted
  std::function<void(const std::string& line)> log;
};

// Serves shard `index` of the parameters (initialised like the workers' model, from train.seed,
// or from the checkpoint server 0 chose per checkpoint.resume) and its optimizer state until
// every worker sent its last push. Checkpoints: every checkpoint.every server updates and at the
// end, server 0 writes the servers' joined state. Returns 0 then, 1 when stopped by an abort.
// Throws ConfigError for a checkpoint of another job (exit 2).
int run_param_server(const spec::JobSpec& spec, const ServerContext& ctx);

}  // namespace ptrain::train
