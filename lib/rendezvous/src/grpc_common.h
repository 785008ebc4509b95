// Shared by the coordinator and its clients: message limits, gRPC log routing, the Connection
// (channel + stub + token) and the mapping of grpc::Status onto project errors.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "ptrain.grpc.pb.h"
#include "ptrain/core/time.h"
#include "ptrain/rendezvous/store.h"
#include "ptrain/rendezvous/tls.h"

namespace ptrain::rendezvous::detail {

// A little above kMaxValueBytes so that an over-size value reaches our own check and gets our
// message instead of gRPC's RESOURCE_EXHAUSTED.
inline constexpr int kMaxMessageBytes = static_cast<int>(kMaxValueBytes + (1 << 20));

// Routes gRPC's own log lines into spdlog at debug level (our errors say what failed) and turns
// off abseil's mutex deadlock detection (a debug aid that costs every gRPC lock); once.
void route_grpc_logs();

// The coordinator's cap on concurrent calls (streams) per client connection.
inline constexpr int kMaxStreamsPerConnection = 4096;

// The coordinator's listening port with its credentials (tls.h) and limits: messages up to
// kMaxMessageBytes, the token checked on the headers (with TLS), a memory quota, handshake and
// idle timeouts.
void configure_coordinator_server(grpc::ServerBuilder& builder, const std::string& listen,
                                  int* port, const std::string& token,
                                  std::function<void(const char*)> on_reject,
                                  std::function<void(const std::string&)> on_warning,
                                  ServerListeners* listeners);

// "[::1]:port" for IPv6 literals, "host:port" otherwise.
std::string host_port(const std::string& host, int port);

struct ConnectionOptions {
  // gRPC arms a timer per call to enforce its deadline. A worker has a handful of calls in flight
  // and keeps them; a process that simulates thousands of ranks (ptrain bench rdzv) turns them
  // off: the coordinator ends every wait itself before the deadline (and a dead coordinator
  // closes the connection), and gRPC's timer lists cost time that grows with the calls pending.
  bool deadline_timers = true;
};

class Connection {
 public:
  Connection(std::string address, std::string token, ConnectionOptions options = {});
  // Blocks until the channel is connected; RemoteError "cannot reach the coordinator at ADDR
  // after N s" otherwise.
  void connect(Millis timeout);
  // Sets the deadline and the token on a fresh context.
  void prepare(grpc::ClientContext& ctx, Millis deadline) const;
  // Turns a failed status of `call` into ConfigError / TimeoutError / RemoteError.
  [[noreturn]] void fail(const grpc::Status& status, const char* call, Millis deadline) const;

  const std::string& address() const { return address_; }
  proto::Coordinator::Stub& stub() { return *stub_; }
  grpc::Channel& channel() { return *channel_; }

 private:
  std::string address_;
  std::string token_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<proto::Coordinator::Stub> stub_;
};

}  // namespace ptrain::rendezvous::detail
