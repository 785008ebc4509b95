#include "grpc_common.h"

#include <absl/synchronization/mutex.h>
#include <fmt/format.h>
#include <grpc/support/log.h>
#include <spdlog/spdlog.h>

#include <mutex>

#include "ptrain/core/error.h"
#include "ptrain/rendezvous/tls.h"
#include "ptrain/rendezvous/token.h"

namespace ptrain::rendezvous::detail {

static void grpc_log_to_spdlog(gpr_log_func_args* args) {
  spdlog::debug("grpc: {}:{}: {}", args->file ? args->file : "?", args->line,
                args->message ? args->message : "");
}

void route_grpc_logs() {
  static std::once_flag once;
  std::call_once(once, [] {
    gpr_set_log_function(grpc_log_to_spdlog);
    // Debian's abseil checks every absl::Mutex acquisition for lock-order cycles (a debug aid
    // that keeps a global graph): ~7% of a 4,096-client rendezvous went there (perf). gRPC's
    // mutexes are gRPC's business; turn the check off before the first channel or server.
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  });
}

void configure_coordinator_server(grpc::ServerBuilder& builder, const std::string& listen,
                                  int* port, const std::string& token,
                                  std::function<void(const char*)> on_reject,
                                  std::function<void(const std::string&)> on_warning,
                                  ServerListeners* listeners) {
  ServerLimits limits;
  limits.token = token;
  limits.on_reject = std::move(on_reject);
  limits.on_warning = std::move(on_warning);
  limits.max_message_bytes = kMaxMessageBytes;
  // A worker keeps one connection with a Watch stream and makes a few calls at a time, but a
  // Join or JoinNode waits for the whole world on its stream: a connection that multiplexes
  // many ranks or node relays (ptrain bench rdzv --connections) needs a stream for each, or the
  // ones past the cap never reach the coordinator and the rendezvous times out.
  limits.max_concurrent_streams = kMaxStreamsPerConnection;
  // Thousands of workers handshaking at once queue behind each other (a mutual TLS handshake
  // costs the coordinator a few ms of CPU): they get longer than an idle intruder would.
  limits.handshake_timeout_ms = 10000;
  configure_server(builder, listen, port, limits, listeners);
  // Every wait the coordinator serves (Join, Barrier, store waits) ends on its own timer queue
  // before the client's deadline, so gRPC's per-call deadline timer is redundant here. At 65,536
  // pending Joins gRPC's timer lists (rescanned as time advances) were ~20% of the coordinator's
  // CPU and grew with the number of calls in flight. A client that goes away still ends its
  // call: the connection closes.
  builder.AddChannelArgument(GRPC_ARG_ENABLE_DEADLINE_CHECKS, 0);
}

std::string host_port(const std::string& host, int port) {
  if (host.find(':') != std::string::npos && host.front() != '[')
    return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

Connection::Connection(std::string address, std::string token, ConnectionOptions options)
    : address_(std::move(address)), token_(std::move(token)) {
  route_grpc_logs();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // One TCP connection per Connection: clients in one process (tests, the benchmark) behave like
  // separate workers instead of sharing gRPC's global subchannel.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // Retry a refused connection quickly: workers may start a moment before the coordinator.
  // (Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC also uses it as the connect timeout, and a
  // loaded coordinator accepting thousands of connections needs more than a few ms per handshake.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  if (!options.deadline_timers) args.SetInt(GRPC_ARG_ENABLE_DEADLINE_CHECKS, 0);
  auto creds = channel_credentials(args, address_);
  channel_ = grpc::CreateCustomChannel(address_, creds, args);
  stub_ = proto::Coordinator::NewStub(channel_);
}

void Connection::connect(Millis timeout) {
  if (!channel_->WaitForConnected(std::chrono::system_clock::now() + timeout))
    throw RemoteError(fmt::format("cannot reach the coordinator at {} after {:.3g} s", address_,
                                  timeout.count() / 1000.0),
                      "check that the launcher is running and that PTRAIN_COORDINATOR is right");
}

void Connection::prepare(grpc::ClientContext& ctx, Millis deadline) const {
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  ctx.AddMetadata(kTokenMetadataKey, token_);
}

void Connection::fail(const grpc::Status& status, const char* call, Millis deadline) const {
  const std::string& msg = status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::UNAUTHENTICATED:
      throw RemoteError(fmt::format("the coordinator at {} refused {}: wrong or missing job token",
                                    address_, call),
                        "PTRAIN_TOKEN must be the token of this job's launcher");
    case grpc::StatusCode::UNAVAILABLE:
      throw RemoteError(
          fmt::format("cannot reach the coordinator at {} ({} failed: {})", address_, call, msg),
          "check that the launcher is still running");
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      // Our server ends its waits before the client deadline with a message that names what
      // was missing; gRPC's own deadline message says nothing, so say what we waited for.
      if (!msg.empty() && msg != "Deadline Exceeded") throw TimeoutError(msg);
      throw TimeoutError(fmt::format("the coordinator at {} did not answer {} within {} ms",
                                     address_, call, deadline.count()));
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      throw ConfigError(fmt::format("coordinator refused {}: {}", call, msg));
    case grpc::StatusCode::ABORTED:
      throw RemoteError(fmt::format("{} aborted: {}", call, msg));
    default:
      throw RemoteError(fmt::format("{} to the coordinator at {} failed ({}): {}", call, address_,
                                    static_cast<int>(status.error_code()), msg));
  }
}

}  // namespace ptrain::rendezvous::detail
