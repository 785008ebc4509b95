// The training loop of one worker: builds its model shard, optimizer and data for its place in
// the mesh, then runs forward, backward, gradient reduction, clipping and the optimizer step,
// reporting metrics and writing checkpoints. Single-process runs use the same code with no mesh.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ptrain/comm/mesh.h"
#include "ptrain/rendezvous/store.h"
#include "ptrain/spec/job_spec.h"

namespace ptrain::train {

struct TrainContext {
  int rank = 0;  // global rank; world size comes from the mesh (1 without one)
  int restart = 0;
  std::string run_dir;                // "" = none (checkpoints need checkpoint.dir then)
  comm::ProcessMesh* mesh = nullptr;  // nullptr: one process, no communication
  // One metrics object per logged step (rank 0 only; a line of metrics.jsonl).
  std::function<void(const std::string& json)> report;
  // Polled between steps: true once the job is aborted.
  std::function<bool()> stop_requested;
  // Called at the start of every step (heartbeats carry it).
  std::function<void(int64_t step)> on_step;
  // Rank 0, once the checkpoint of `step` is complete on disk (from the thread that wrote it).
  std::function<void(int64_t step)> on_checkpoint;
  // Print a line to this rank's log (stdout by default).
  std::function<void(const std::string& line)> log;
  // data_mode: async: the store where parameter servers advertise their addresses, and the job
  // token their RPCs carry.
  std::shared_ptr<rendezvous::Store> store;
  std::string token;
  // mono_seconds() when this worker joined the job (0: when training starts): the start-up
  // line reports the time from then to the first step.
  double joined_at = 0;
};

struct StepMetrics {
  int64_t step = 0;
  double loss = 0;  // mean over the tokens (rows) of the global batch
  double lr = 0;
  double grad_norm = 0;  // before clipping
  double step_ms = 0;
  double tokens_per_s = 0;
  double eval_loss = -1;  // < 0 when not evaluated this step
  // The family's eval figures (eval_accuracy, ...) when evaluated this step.
  std::vector<std::pair<std::string, double>> eval_metrics;
};

struct TrainResult {
  int64_t first_step = 0;            // where training started (after a resume)
  int64_t steps_done = 0;            // the step count reached
  std::vector<StepMetrics> history;  // every step run in this call
  double final_loss = 0;
  double tokens_per_s = 0;  // mean over the steps run
  std::string last_checkpoint;
};

// Runs the job's training loop on this rank. Throws ptrain::Error on bad data, a non-finite
// loss (naming the step), or a communication failure.
TrainResult run_training(const spec::JobSpec& spec, const TrainContext& ctx);

}  // namespace ptrain::train
