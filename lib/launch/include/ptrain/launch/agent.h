// The agent of one node: spawns that node's workers with the torchrun-compatible environment,
// pipes their output line by line into rank-<r>.log (and to a callback), reaps them, and signals
// their process groups. `ptrain run` drives one in-process; `ptrain launch` runs one per host.
// Not thread-safe: one thread (the launcher's event loop) drives it.
#pragma once

#include <poll.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ptrain/launch/process.h"

namespace ptrain::rendezvous {
class RelayServer;
struct NodeRelayOptions;
}  // namespace ptrain::rendezvous

namespace ptrain::launch {

class GroupWatchdog;

struct AgentOptions {
  std::string node = "localhost";  // host name shown in logs and errors
  int node_rank = 0;
  int num_nodes = 1;
  int first_rank = 0;  // global rank of local rank 0
  int local_world_size = 1;
  int world_size = 1;
  std::vector<std::string> argv;  // the worker program (`ptrain worker` or the spec's command)
  std::string cwd;                // empty = ours

  // Environment (issue 3 item 3). The token goes only here, never on a command line.
  std::string coordinator;  // host:port
  std::string token;
  std::string run_dir;
  std::string run_id;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;
  int max_restarts = 0;
  int threads_per_proc = 0;  // 0 = 1 when several workers share the node, else all cores
  bool cuda = false;         // set CUDA_VISIBLE_DEVICES to one GPU per local rank
  std::map<std::string, std::string> extra_env;  // the spec's env (applied last)
  // data_mode: async: parameter servers this agent starts after its workers (node 0 only), as
  // ranks world_size + i, logging to server-<i>.log.
  int servers = 0;
  std::vector<std::string> server_argv;
  // The servers this agent starts when not `servers` on node 0 (`ptrain launch` places them on
  // hosts): their global indices.
  std::vector<int> server_indices;
  std::string server_bind;  // PTRAIN_SERVER_BIND: the address they listen on (empty: loopback)
  // >= 0: the umask the workers' program runs with (a `command:` job gets the user's own back
  // while ptrain's processes keep the private one; run_dir.h apply_file_mode).
  int child_umask = -1;
  // The ptrain executable, which the agent's process watchdog runs as `ptrain watchdog`; empty:
  // the watchdog is a fork of this process (group_watchdog.h).
  std::string watchdog_program;
  // > 0: the workers meet the coordinator through this node's relay (rendezvous/node_relay.h) on a
  // unix socket in the run folder; it joins, passes barriers and heartbeats (once per this period)
  // for all of them. 0: every worker talks to the coordinator itself (`command:` jobs).
  Millis node_relay_heartbeat{0};
  // With a node relay: jobs of more than this many nodes form a relay tree (rendezvous.
  // tree_fanout; 0 = never); a relay waits this long for its parent's address in the store.
  int relay_tree_fanout = 0;
  Millis relay_tree_timeout{60000};
};

// One output line of a worker.
struct WorkerLine {
  int rank;
  int64_t time_us;
  bool is_stderr;
  const std::string& text;
};

// A worker that ended: its rank, pid and status.
struct WorkerExit {
  int rank;
  pid_t pid;
  ExitStatus status;
  std::string spawn_error;  // non-empty when the program could not be started at all
};

class Agent {
 public:
  explicit Agent(AgentOptions options);
  ~Agent();  // kills and reaps whatever still runs

  // Starts every local worker for restart round `round` (TORCHELASTIC_RESTART_COUNT). A worker
  // whose program cannot be started is reported by the next reap() with exit 127/126.
  void spawn_all(int round);

  // The environment worker `local_rank` gets (exposed for tests and `--dry-run`).
  std::vector<std::string> worker_env(int local_rank, int round) const;
  // The environment of parameter server `index` (RANK = world_size + index, PTRAIN_SERVER_INDEX).
  std::vector<std::string> server_env(int index, int round) const;
  // The global indices of the servers this agent starts.
  std::vector<int> server_list() const;

  // Descriptors to poll (worker pipes), and the handler for the ones that are readable.
  void add_poll_fds(std::vector<struct pollfd>& fds) const;
  void handle_ready(const std::vector<struct pollfd>& fds);
  // Reaps ended workers (call on SIGCHLD) and returns them in order.
  std::vector<WorkerExit> reap();

  void signal_all(int sig);
  int running() const;
  bool all_exited() const { return running() == 0; }
  // Waits up to `timeout` for every pipe to reach end-of-file after the workers ended, so the
  // last lines are logged.
  void drain(Millis timeout);

  pid_t pid_of(int rank) const;
  const AgentOptions& options() const { return options_; }
  std::string log_path(int rank) const;
  // Receives every line (also written to rank-<r>.log).
  std::function<void(const WorkerLine&)> on_line;

 private:
  struct Worker;
  void start_relay(rendezvous::NodeRelayOptions ro, int round);
  void read_pipe(Worker& w, bool is_stderr);
  void emit(Worker& w, bool is_stderr, std::string& pending, bool flush_partial);
  AgentOptions options_;
  // Kills every worker's process group if this process dies (launch/src/group_watchdog.h).
  std::unique_ptr<GroupWatchdog> watchdog_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<WorkerExit> spawn_failures_;
  std::unique_ptr<rendezvous::RelayServer> relay_;  // this round's node relay, when enabled
};

}  // namespace ptrain::launch
