// `ptrain watchdog` (internal): the agent's process watchdog (launch/group_watchdog.h). It reads
// the process groups of the agent's workers on stdin and kills them all if the agent dies.
#include "command.h"
#include "ptrain/launch/group_watchdog.h"

namespace ptrain::cli {
namespace {

Action setup_watchdog(CLI::App& /*sub*/) {
  return [] { return launch::group_watchdog_main(0); };
}

}  // namespace

PTRAIN_COMMAND({"watchdog", "Kill an agent's workers if it dies (started by the agent)", true, 92,
                setup_watchdog})

}  // namespace ptrain::cli
