// `ptrain worker` (internal): one rank of a job, started by `ptrain run`/`ptrain launch` with its
// environment (RANK, PTRAIN_COORDINATOR, PTRAIN_TOKEN, ...). The trainer hook is set here.
#include <csignal>

#include "command.h"
#include "ptrain/launch/worker.h"
#include "ptrain/train/worker.h"

namespace ptrain::cli {
namespace {

Action setup_worker(CLI::App& /*sub*/) {
  return [] {
    // A peer that died closes its sockets: the write that notices must fail with EPIPE and be
    // reported as that peer's failure, not kill this worker with SIGPIPE.
    ::signal(SIGPIPE, SIG_IGN);
    launch::WorkerOptions options;
    options.trainer = train::run_worker;
    return launch::worker_main(options);
  };
}

}  // namespace

PTRAIN_COMMAND({"worker", "Run one rank of a job (started by the launcher)", true, 90,
                setup_worker})

}  // namespace ptrain::cli
