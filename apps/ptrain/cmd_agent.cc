// `ptrain agent` (internal): one host's agent of `ptrain launch`, started over ssh. Its setup,
// token included, arrives on stdin; see ptrain/launch/remote_agent.h.
#include <unistd.h>

#include "command.h"
#include "ptrain/launch/remote_agent.h"

namespace ptrain::cli {
namespace {

Action setup_agent(CLI::App& /*sub*/) {
  return [] { return launch::remote_agent_main(STDIN_FILENO, STDOUT_FILENO); };
}

}  // namespace

PTRAIN_COMMAND({"agent", "Run one host's workers (started by ptrain launch over ssh)", true, 91,
                setup_agent})

}  // namespace ptrain::cli
