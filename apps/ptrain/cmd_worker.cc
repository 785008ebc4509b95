// `ptrain worker` (internal): one rank of a job, started by `ptrain run`/`ptrain launch` with its
// environment (RANK, PTRAIN_COORDINATOR, PTRAIN_TOKEN, ...). The trainer hook is set here.
#include "command.h"
#include "ptrain/launch/worker.h"
#include "ptrain/train/worker.h"

namespace ptrain::cli {
namespace {

Action setup_worker(CLI::App& /*sub*/) {
  return [] {
    launch::WorkerOptions options;
    options.trainer = train::run_worker;
    return launch::worker_main(options);
  };
}

}  // namespace

PTRAIN_COMMAND({"worker", "Run one rank of a job (started by the launcher)", true, 90,
                setup_worker})

}  // namespace ptrain::cli
