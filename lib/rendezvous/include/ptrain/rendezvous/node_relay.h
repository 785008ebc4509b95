// The node side of hierarchical membership: one NodeRelay per node speaks for that node's local
// ranks. It batches their Joins into JoinNode calls, their barrier arrivals into NodeBarrier
// calls, sends one NodeHeartbeat per period carrying every local rank's liveness and step, fetches
// a store key that several local ranks wait for once, and fans the coordinator's Watch events out.
// RelayServer serves the coordinator's own gRPC service on a unix socket on top of a NodeRelay, so
// a worker's CoordinatorClient talks to it unchanged (PTRAIN_COORDINATOR=unix:PATH).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/core/time.h"
#include "ptrain/rendezvous/client.h"

namespace ptrain::proto {
class JoinNodeRequest;
class JoinNodeResponse;
class NodeHeartbeatRequest;
}  // namespace ptrain::proto

namespace ptrain::rendezvous {

namespace detail {
class TimerQueue;
}

// The outcome of a relayed call: code is a grpc::StatusCode (0 = OK) and message its text, so
// the worker's client maps it onto the same project error as a direct call.
struct RelayStatus {
  int code = 0;
  std::string message;
  bool ok() const { return code == 0; }
};

class NodeRelay;

struct NodeRelayOptions {
  std::string node;  // host name, as the ranks' own Joins would name it
  int node_rank = 0;
  int round = 0;           // the restart round the local ranks join
  std::vector<int> ranks;  // the global ranks of this node (its local ranks, in order)
  // A batch that is not yet complete (some local rank is late) goes upward after this long.
  Millis batch_window{200};
  Millis rpc_deadline = kDefaultRpcDeadline;
  // Relay tree: how many child relays send their node-level calls (JoinNode, NodeBarrier,
  // NodeHeartbeat) here instead of to the coordinator. A join or barrier batch goes upward once
  // every local rank and every child has sent one (or after batch_window), so the relay above
  // sees one call for the whole subtree.
  int tree_children = 0;
  // How long a relay with children holds its join batch for children still starting (a round
  // completes only when every rank joined, so waiting costs nothing; sending early costs the
  // relay above one more call).
  Millis tree_window{5000};
  // The coordinator's address when the upstream is a parent relay (what a local rank's Join
  // reports as the coordinator); empty: the upstream is the coordinator.
  std::string coordinator;
  // A parent relay in this process: join and barrier batches go to its join_subtree and
  // barrier_subtree instead of over gRPC (`ptrain bench rdzv --tree-fanout` simulates a tree of
  // agents this way; the coordinator sees what it would see from real ones).
  NodeRelay* parent = nullptr;
};

// Where a node sits in the relay tree of `nodes` nodes with `fanout` children per relay: nodes
// 0..fanout-1 talk to the coordinator, node i >= fanout to relay i / fanout - 1 (breadth first).
// fanout 0 (or nodes <= fanout): every node talks to the coordinator.
struct RelayTreePosition {
  int parent = -1;  // -1: the coordinator
  int children = 0;
};
RelayTreePosition relay_tree_position(int node, int nodes, int fanout);
// The store key under which relay `node` of restart round `round` publishes its tree address.
std::string relay_tree_key(int round, int node);
// Where a relay with children listens for them: "ADDR:0" with this host's address on the route
// to the coordinator at `coordinator` (host:port), the one its peers reach it by.
std::string relay_tree_listen(const std::string& coordinator);

// Thread-safe; callbacks run on gRPC or timer threads and must be quick.
class NodeRelay {
 public:
  // Talks upward over its own connection to the coordinator at `address`.
  NodeRelay(const std::string& address, const std::string& token, NodeRelayOptions options,
            Millis connect_timeout = kDefaultRpcDeadline);
  // Shares a connection and a timer thread (the benchmark runs thousands of relays).
  NodeRelay(std::shared_ptr<detail::Connection> upstream,
            std::shared_ptr<detail::TimerQueue> timers, NodeRelayOptions options);
  ~NodeRelay();  // stops heartbeats and the watch thread; calls in flight must have ended
  NodeRelay(const NodeRelay&) = delete;
  NodeRelay& operator=(const NodeRelay&) = delete;

  using JoinDone = std::function<void(const RelayStatus&, const JoinResult&)>;
  using Done = std::function<void(const RelayStatus&)>;

  // A local rank joins; done runs once the whole round has joined (or with the failure).
  void join(const JoinRequestView& request, JoinDone done);
  // A local rank reaches barrier `name` of `count` participants.
  void barrier(const std::string& name, int rank, int count, Millis timeout, Done done);

  // The node-level calls of a child relay (tree_children > 0), merged into this relay's own.
  using SubtreeJoinDone = std::function<void(const RelayStatus&, const proto::JoinNodeResponse&)>;
  void join_subtree(const proto::JoinNodeRequest& request, Millis timeout, SubtreeJoinDone done);
  void barrier_subtree(const std::string& name, std::vector<int> ranks, int count, Millis timeout,
                       Done done);
  HeartbeatReply heartbeat_subtree(const proto::NodeHeartbeatRequest& request);
  // Records a local rank's heartbeat (no RPC) and answers with the last abort state known.
  HeartbeatReply heartbeat(int rank, int64_t step, int round);
  // Sends one NodeHeartbeat for every local rank seen so far, unless one is still in flight.
  void flush_heartbeat();
  // Calls flush_heartbeat every `period` from its own thread until destroyed.
  void start_heartbeats(Millis period);
  // A store Get for `key`; concurrent Gets of the same key from local ranks share one upward call.
  void get(const std::string& key, Millis timeout,
           std::function<void(const RelayStatus&, const std::string&)> done);
  // Subscribes to the coordinator's Watch events (one upward stream for the node). An event that
  // already happened is delivered at once. Returns an id for unwatch().
  int watch(std::function<void(const WatchEventView&)> on_event);
  void unwatch(int id);
  // Ends every upward call in flight, and any started later: their callers get CANCELLED.
  void cancel_calls();

  struct Counters {
    uint64_t upward_joins = 0, upward_barriers = 0, upward_heartbeats = 0, upward_gets = 0;
    uint64_t local_heartbeats = 0, local_gets = 0;
    uint64_t subtree_joins = 0, subtree_barriers = 0, subtree_heartbeats = 0;  // from children
  };
  Counters counters() const;
  const NodeRelayOptions& options() const;
  detail::Connection& upstream();

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

// A gRPC server on `socket_path` (a unix socket) that serves proto::Coordinator for the local
// ranks over a NodeRelay: Join, Barrier, Heartbeat, Watch and Get go through the relay; the other
// calls (store writes, Report, Leave, logs) are forwarded as they are.
class RelayServer {
 public:
  // With `tree_listen` ("host:0"), it also listens there for child relays (tree_children of
  // options), whose node-level calls it merges into its own.
  RelayServer(const std::string& coordinator, const std::string& token, NodeRelayOptions options,
              std::string socket_path, Millis heartbeat_period,
              const std::string& tree_listen = {});
  ~RelayServer();
  RelayServer(const RelayServer&) = delete;
  RelayServer& operator=(const RelayServer&) = delete;
  // What the local ranks dial: "unix:" + the socket path.
  std::string address() const;
  // Where child relays dial it ("host:port"); empty without tree_listen.
  const std::string& tree_address() const;
  NodeRelay& relay();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Where a node's relay listens: RUN_DIR/relay-<node_rank>.sock, or, when that is too long for a
// unix socket, relay-<pid>-<node_rank>.sock in private_socket_dir("/tmp").
std::string relay_socket_path(const std::string& run_dir, int node_rank);

// PARENT/ptrain-<uid>, created 0700 when missing; throws IoError when it is not a folder owned by
// this user with no access for others (another user made it first, or a symlink).
std::string private_socket_dir(const std::string& parent);

}  // namespace ptrain::rendezvous
