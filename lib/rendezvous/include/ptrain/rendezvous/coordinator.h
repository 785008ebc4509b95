// The coordinator: the gRPC service every worker of a job meets at (membership, key-value
// store, barriers, heartbeats, abort broadcast, metrics and log forwarding).
// Threading: handlers never block a gRPC thread (callback API); waits finish from a timer
// thread or from the call that satisfies them, so thousands of waiting clients are fine.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/core/time.h"
#include "ptrain/rendezvous/mesh.h"
#include "ptrain/rendezvous/store.h"

namespace ptrain::rendezvous {

struct CoordinatorOptions {
  std::string bind = "127.0.0.1";  // address to listen on (rendezvous.bind)
  int port = 0;                    // 0 = kernel-chosen; read the real one back with port()
  std::string token;               // required on every RPC (x-ptrain-token); see make_token()
  int world_size = 1;   // worker ranks expected to Join each round: ranks [0, world_size)
  int extra_roles = 0;  // other participants (role "server"): ranks
                        // [world_size, world_size + extra_roles)
  MeshShape mesh;       // dp * tp * pp must equal world_size
  std::string run_id, run_dir, spec_yaml;  // returned by Join
  Millis join_timeout{60000};        // rendezvous.timeout_s: how long a Join waits for the rest
  Millis heartbeat_timeout{300000};  // fault_tolerance.hang_timeout_s
};

// One line of a worker's output, as forwarded by StreamLogs.
struct LogLineView {
  std::string node;
  int rank = -1;
  int64_t time_us = 0;  // wall clock, microseconds since the Unix epoch
  bool is_stderr = false;
  std::string text;  // without the trailing newline
};

// Callbacks run on gRPC or watchdog threads, possibly concurrently: they must be thread-safe
// and quick. Any of them may be empty.
struct CoordinatorEvents {
  std::function<void(int rank, const std::string& json)> on_report;
  std::function<void(const LogLineView&)> on_log;
  // A joined rank sent no heartbeat (nor joined) for heartbeat_timeout; called once per rank and
  // round, until the rank heartbeats again.
  std::function<void(int rank, const std::string& why)> on_hang;
  std::function<void(int rank, int exit_code, const std::string& reason)> on_leave;
  // Something the operator should see, e.g. an RPC with a wrong token (the token never appears).
  std::function<void(const std::string& warning)> on_warning;
};

// RPCs served so far (all rounds): how much traffic membership costs at scale.
struct CoordinatorStats {
  uint64_t join_rpcs = 0;       // Join + JoinNode
  uint64_t node_join_rpcs = 0;  // JoinNode (a node's relay joining for its local ranks)
  uint64_t heartbeat_rpcs = 0;  // Heartbeat + NodeHeartbeat
  uint64_t barrier_rpcs = 0;    // Barrier + NodeBarrier
};

class Coordinator {
 public:
  Coordinator(CoordinatorOptions options, CoordinatorEvents events = {});
  // Finishes every pending call (waiting clients get UNAVAILABLE "coordinator shut down", Watch
  // streams end) and stops the server.
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Binds and starts serving. Throws IoError "cannot listen on ADDR:PORT: address in use" (or the
  // OS reason) when the address cannot be bound.
  void start();
  int port() const;             // the real port (after start)
  std::string address() const;  // "127.0.0.1:PORT" (bind:port)

  // Tells the launcher on which node a rank runs, so join timeouts can name hosts.
  void expect(int rank, std::string node);

  // Every Watch stream gets ABORT with the reason; heartbeats answer abort; pending Joins and
  // Barriers fail with ABORTED. Lasts until the next begin_round().
  void abort(const std::string& reason);
  // Starts rendezvous round `round` (restart count): forgets membership, pending barriers and the
  // abort flag, ends old Watch streams with RESTART; keeps the store. Joins must carry this round.
  void begin_round(int round);
  int round() const;
  // Elastic jobs, between rounds (after abort(), before begin_round()): the next rounds have
  // `world_size` worker ranks in `mesh` and hand out `spec_yaml`. Forgets expect()'s hosts.
  // Throws ConfigError when the mesh does not hold world_size ranks.
  void reshape(int world_size, MeshShape mesh, std::string spec_yaml);

  std::vector<int> missing_ranks() const;  // participants not yet joined in this round
  std::vector<int> joined_ranks() const;   // sorted

  // The server-side store, for in-process access (the launcher itself).
  Store& store();

  CoordinatorStats stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptrain::rendezvous
