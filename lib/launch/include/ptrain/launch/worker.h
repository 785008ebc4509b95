// The worker side of a job (`ptrain worker`, started by an agent): reads its environment, joins
// the coordinator, heartbeats, watches for ABORT, hands control to the trainer, then leaves.
// The trainer is a hook so that lib/train plugs in without lib/launch depending on it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "ptrain/rendezvous/client.h"
#include "ptrain/spec/job_spec.h"

namespace ptrain::launch {

// What `ptrain worker` reads from the environment the agent built.
struct WorkerEnv {
  std::string coordinator;  // PTRAIN_COORDINATOR host:port
  std::string token;        // PTRAIN_TOKEN
  std::string run_dir;      // PTRAIN_RUN_DIR
  std::string node;         // PTRAIN_NODE
  int rank = 0, local_rank = 0, world_size = 1, node_rank = 0, round = 0;
  // Throws ConfigError naming the variable that is missing or malformed.
  static WorkerEnv from_environment();
};

// The store key where rank 0 publishes the step of its newest checkpoint once it is complete on
// disk (the supervisor of an elastic job re-forms it at such a boundary).
inline constexpr const char* kCheckpointSavedKey = "ptrain/checkpoint/saved";

// Everything a trainer gets. Valid for the duration of the trainer call.
struct WorkerContext {
  const spec::JobSpec& spec;
  const rendezvous::JoinResult& join;  // rank, world size, mesh shape and coordinates, run dir
  rendezvous::CoordinatorClient& client;
  std::shared_ptr<rendezvous::Store> store;  // the coordinator's store (comm bootstrap)
  // True once the job was aborted (another rank failed, or the user interrupted): stop soon.
  std::function<bool()> stop_requested;
  // The step heartbeats carry (progress that the hang detector can see).
  std::function<void(int64_t step)> set_step;
  // Sends one metrics object (a line of metrics.jsonl; fields step, loss, lr, tokens_per_s,
  // step_ms, total_steps).
  std::function<void(const std::string& json)> report;
};

// Runs the training loop; returns the process exit code. Throws ptrain::Error on failure.
using TrainerFn = std::function<int(WorkerContext&)>;

struct WorkerOptions {
  // The built-in trainer. Empty: only `train.steps: 0` jobs can run (join, barrier, exit 0).
  TrainerFn trainer;
  // After ABORT, the trainer gets this long to return before the process exits by itself.
  Millis abort_grace{2000};
};

// The whole life of a worker process; returns its exit code.
int worker_main(const WorkerOptions& options);

}  // namespace ptrain::launch
