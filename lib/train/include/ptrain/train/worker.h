// The built-in trainer as a worker hook: builds the process mesh over the coordinator's Store
// (Gloo, or NCCL when every rank has its own GPU) and runs the training loop for this rank.
#pragma once

#include "ptrain/launch/worker.h"

namespace ptrain::train {

// launch::WorkerOptions::trainer for `ptrain worker`. Returns the exit code.
int run_worker(launch::WorkerContext& ctx);

}  // namespace ptrain::train
