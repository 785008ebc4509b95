// A server's TCP listener run by ptrain instead of gRPC, so that the number of open connections
// has a cap (libgrpc 1.51 has none): connections are accepted here and handed to the server
// through gRPC's external connection acceptor.
#pragma once

#include <grpcpp/server_builder.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace ptrain::rendezvous::detail {

struct GateCounts {
  int open = 0;           // connections handed to the server and not known to be closed
  uint64_t accepted = 0;  // handed to the server in all
  uint64_t refused = 0;   // closed at once: the cap was reached
  uint64_t evicted = 0;   // silent connections ended to make room for a new one
};

class ConnectionGate {
 public:
  // Binds `listen` (host:port; port 0 picks a free one) and listens; throws IoError.
  // `warn` gets a line when connections were refused or ended at the cap (one per 10 s).
  ConnectionGate(const std::string& listen, int max_connections,
                 std::function<void(const std::string&)> warn);
  ~ConnectionGate();  // stops accepting and closes the listening sockets
  ConnectionGate(const ConnectionGate&) = delete;
  ConnectionGate& operator=(const ConnectionGate&) = delete;

  int port() const { return port_; }
  int max_connections() const { return max_; }
  // Accepts from now on, handing each connection to `acceptor` (from
  // ServerBuilder::experimental().AddExternalConnectionAcceptor); gRPC closes the ones that
  // arrive before its server started.
  void start(std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor);
  GateCounts counts() const;
  // Only stops accepting: call it before the server shuts down, since gRPC does not end a
  // connection handed to a server that is shutting down at once. Idempotent.
  void stop_accepting();
  // Stops accepting and shuts down every connection still open. gRPC's server does not end the
  // connections it got from an external acceptor when it shuts down; left open, their teardown
  // races gRPC's own (an abort in grpc_cq_internal_unref at exit). Call it just before the
  // server shuts down. Idempotent.
  void stop();

 private:
  struct Open {
    int fd;
    ino_t inode;  // the socket's: gRPC may close the fd and the number be reused
    std::chrono::steady_clock::time_point since;
  };
  void loop();
  void admit(int listener, int fd);
  // Drops the connections gRPC has closed; ends the oldest connection that sent nothing for a
  // second, if any, and returns whether it did.
  bool make_room();
  // Tells `warn_` what was refused or ended at the cap since its last line (one per 10 s).
  void maybe_warn(std::chrono::steady_clock::time_point now);

  std::vector<int> listeners_;
  int wake_ = -1;  // eventfd that stops loop()
  int port_ = 0;
  int max_;
  std::function<void(const std::string&)> warn_;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor_;
  std::deque<Open> open_;  // in accept order; only loop() touches it
  std::chrono::steady_clock::time_point next_scan_{};
  std::atomic<int> open_count_{0};
  std::atomic<uint64_t> accepted_{0}, refused_{0}, evicted_{0};
  std::chrono::steady_clock::time_point last_warning_{};
  uint64_t refused_at_warning_ = 0, evicted_at_warning_ = 0;
  std::thread thread_;
};

// The cap a server gets when ServerLimits::max_connections is 0: three quarters of the process's
// descriptor limit (RLIMIT_NOFILE), leaving the rest to files, pipes and worker processes.
int default_max_connections();

}  // namespace ptrain::rendezvous::detail
