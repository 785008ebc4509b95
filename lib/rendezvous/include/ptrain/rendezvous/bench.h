// `ptrain bench rdzv`: one in-process coordinator and N simulated workers (asynchronous gRPC
// calls, a few threads) that all Join and then pass one Barrier. With ranks_per_node K > 1 the N
// ranks are N/K nodes, each a NodeRelay (node_relay.h) that joins and passes the barrier for its
// K ranks in node-level calls.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "ptrain/core/time.h"

namespace ptrain::rendezvous {

// A coordinator in another process (started for world_size = clients and mesh {clients, 1, 1}),
// so that its resident memory is its own and not the simulated clients'.
struct RdzvBenchTarget {
  std::string address, token;
  std::function<double()> rss_bytes;         // the coordinator process's resident memory
  std::function<uint64_t()> heartbeat_rpcs;  // Heartbeat + NodeHeartbeat served so far
};

struct RdzvBenchOptions {
  int clients = 1024;
  int connections = 0;     // TCP connections the clients spread over; 0 = one per client (node)
  int ranks_per_node = 1;  // 1: every rank joins the coordinator itself (the flat path)
  // > 1 (ranks_per_node > 1 only): the node relays form a relay tree of this fanout (in this
  // process), so only the top `tree_fanout` relays call the coordinator.
  int tree_fanout = 0;
  // Mutual TLS with a fresh job identity (rendezvous.tls: on). The identity is this process's, so
  // it needs the coordinator in this process: `target` must then be null.
  bool tls = false;
  Millis timeout{std::chrono::seconds(120)};
  // > 0 (ranks_per_node > 1 only): afterwards every rank heartbeats to its relay every
  // heartbeat_period for heartbeat_window, and the coordinator's heartbeat RPCs are counted.
  Millis heartbeat_period{0};
  Millis heartbeat_window{std::chrono::seconds(3)};
  const RdzvBenchTarget* target = nullptr;  // null: an in-process coordinator
};

struct RdzvBenchResult {
  double connect_s = 0;    // opening every connection (not part of the rendezvous figure)
  double join_s = 0;       // first Join sent -> last Join answered
  double total_s = 0;      // first Join sent -> last Barrier answered: the rendezvous figure
  double us_per_rank = 0;  // total_s / ranks, in microseconds
  int nodes = 0;           // agents the ranks ran as (= ranks on the flat path)
  // Resident memory the coordinator grew by during the rendezvous, per rank (with an in-process
  // coordinator this includes the simulated clients' calls: an upper bound).
  double rss_bytes_per_rank = 0;
  double heartbeat_rpcs_per_s = -1;  // at the coordinator, when measured
};

// Throws RemoteError/TimeoutError when a client fails or the run exceeds options.timeout.
RdzvBenchResult run_rdzv_bench(const RdzvBenchOptions& options);

}  // namespace ptrain::rendezvous
