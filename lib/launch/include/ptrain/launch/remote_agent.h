// `ptrain agent`, the per-host agent of `ptrain launch`, and its small protocol with the launcher
// over the ssh session: the setup (token included) travels on the agent's stdin, never on argv or
// in the environment; the agent answers with one line per event on stdout. Worker output goes to
// the coordinator (StreamLogs), not over ssh.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "ptrain/core/time.h"
#include "ptrain/launch/agent.h"
#include "ptrain/rendezvous/store.h"
#include "ptrain/rendezvous/tls.h"

namespace ptrain::launch {

inline constexpr Millis kDefaultAgentSetupTimeout{30000};

// Everything one host's agent needs.
struct RemoteAgentSetup {
  AgentOptions agent;  // run_dir: the launcher's run folder; the agent uses <run_dir>/hosts/<node>
  std::string spec_yaml;           // written to the agent's folder as job.yaml (workers read it)
  double heartbeat_s = 5;          // how often the agent checks that the coordinator is alive
  double coordinator_loss_s = 15;  // no answer for this long: the agent stops its workers
  double term_grace_s = 5;         // SIGTERM, then SIGKILL after this long
  int round = 0;                   // the rendezvous round (restart count) the workers start in
  int umask = -1;                  // >= 0: the agent's umask (logging.mode: private)
  bool restore_umask = false;      // `command:` programs run with the agent's umask from before
  // rendezvous.tls: the job's CA and certificate (PEM); the agent uses it for its own channel and
  // writes it 0600 into its folder for its workers (job_tls.h).
  std::optional<rendezvous::TlsIdentity> tls;
};

// The stdin stream the launcher sends: "key value" lines (values escaped), "end", then the spec.
std::string encode_agent_setup(const RemoteAgentSetup& setup);
// Reads and decodes it; throws ConfigError for a malformed stream, TimeoutError when it does not
// arrive within `timeout`.
RemoteAgentSetup read_agent_setup(int fd, Millis timeout);
// An encoded setup with `tls` added: a `ptrain node` relay gives its agent the job certificate
// it loaded itself (--tls-dir), so the key never travels through the coordinator's store.
// Throws ConfigError when `encoded` is not a setup message.
std::string add_agent_setup_tls(const std::string& encoded, const rendezvous::TlsIdentity& tls);
// The folder the agent of `node` writes its rank logs and job.yaml to.
std::string agent_dir(const std::string& run_dir, const std::string& node);

// The launcher's commands after the setup, one per line: "signal N".
std::string agent_signal_command(int sig);

// One line the agent writes on stdout.
struct AgentMessage {
  enum class Kind { Started, Exit, Done, Other } kind = Kind::Other;
  int rank = -1;
  pid_t pid = -1;
  ExitStatus status;
  std::string text;  // Exit: the spawn error, if any; Other: the whole line
};
std::string format_started(int rank, pid_t pid);
std::string format_exit(const WorkerExit& e);
AgentMessage parse_agent_message(const std::string& line);

// MASTER_PORT of round `round`, the same on every host: node 0 picks a free port on
// `master_addr` (its own address) and publishes it in the store; the others wait up to `timeout`.
int agree_master_port(rendezvous::Store& store, int node_rank, const std::string& master_addr,
                      int round, Millis timeout);

// The whole life of `ptrain agent`: reads the setup from in_fd, spawns the host's workers, streams
// their lines to the coordinator, reports their exits on out_fd, forwards signals, and kills the
// workers when stdin ends (the ssh session went away) or the coordinator stops answering.
// Returns the process exit code (0 once every worker was reported).
int remote_agent_main(int in_fd, int out_fd);

}  // namespace ptrain::launch
