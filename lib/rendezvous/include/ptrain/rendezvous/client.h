// What a worker (or a remote agent) uses to talk to the coordinator: Join, heartbeats, Leave,
// the Watch stream, barriers, metrics reports, log forwarding, and a GrpcStore on the same channel.
// Every grpc::Status is turned into a project error here (RemoteError, TimeoutError, ConfigError).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/core/time.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/mesh.h"
#include "ptrain/rendezvous/store.h"

namespace ptrain::rendezvous {

namespace detail {
class Connection;  // the gRPC channel, stub, token and address (defined in src/)
}

struct JoinRequestView {
  int rank = 0;  // assigned by the launcher (RANK); role "server": [world_size, world_size+extra)
  std::string node;
  int node_rank = 0;
  int local_rank = 0;
  int64_t pid = 0;
  int round = 0;  // TORCHELASTIC_RESTART_COUNT
  std::string role = "worker";
  // Upper bound for the whole call; the coordinator's own join_timeout normally ends it first
  // with a message naming the missing ranks.
  Millis timeout{std::chrono::seconds(600)};
};

struct JoinResult {
  int rank = 0;
  int world_size = 1;
  MeshShape mesh;
  MeshCoords coords;
  std::string run_id, run_dir, spec_yaml;
  int round = 0;
};

struct HeartbeatReply {
  bool abort = false;
  std::string reason;
};

struct WatchEventView {
  enum class Kind {
    Abort,    // stop now: another rank failed or the user interrupted
    Restart,  // the group restarts in a new round
    Closed,   // the coordinator shut down or can no longer be reached (reason says which)
  };
  Kind kind = Kind::Abort;
  std::string reason;
  int round = 0;
};

class CoordinatorClient {
 public:
  // Connects now; throws RemoteError "cannot reach the coordinator at ADDR after N s" when no
  // connection is up within connect_timeout.
  CoordinatorClient(std::string address, std::string token,
                    Millis connect_timeout = kDefaultRpcDeadline,
                    Millis rpc_deadline = kDefaultRpcDeadline);
  ~CoordinatorClient();  // stops the watch thread
  CoordinatorClient(const CoordinatorClient&) = delete;
  CoordinatorClient& operator=(const CoordinatorClient&) = delete;

  // Waits until every participant of the round has joined. Throws TimeoutError naming the missing
  // ranks (and hosts) after the coordinator's join_timeout, RemoteError for a duplicate rank, a
  // rank out of range, a wrong round or a wrong token.
  JoinResult join(const JoinRequestView& request);
  HeartbeatReply heartbeat(int rank, int64_t step, int round = 0);
  void leave(int rank, int exit_code, const std::string& reason);
  // Starts a background thread reading the Watch stream; on_event runs on that thread, once per
  // event; the thread ends after Abort or Closed, or when this client is destroyed. Call once.
  void watch(int rank, std::function<void(const WatchEventView&)> on_event);
  void report(int rank, const std::string& json);
  // Waits until `count` distinct ranks reached barrier `name`; TimeoutError names missing ranks.
  void barrier(const std::string& name, int rank, int count, Millis timeout = kDefaultStoreTimeout);
  // Forwards log lines (one StreamLogs call per batch).
  void send_logs(const std::vector<LogLineView>& lines);
  // A GrpcStore sharing this client's channel.
  std::shared_ptr<Store> store();

  // The coordinator's address; after a join through a node relay, the coordinator's behind it
  // (what routes to other hosts are chosen by), not the relay's socket.
  const std::string& address() const;

 private:
  std::shared_ptr<detail::Connection> conn_;
  std::string upstream_;
  Millis rpc_deadline_;
  struct Watcher;
  std::unique_ptr<Watcher> watcher_;
};

}  // namespace ptrain::rendezvous
