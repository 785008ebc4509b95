#include "ptrain/rendezvous/bench.h"

#include <fmt/format.h>

#include <condition_variable>
#include <mutex>

#include "grpc_common.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/tls.h"
#include "ptrain/rendezvous/token.h"

namespace ptrain::rendezvous {

namespace {

// One simulated worker: its calls' state lives here until both callbacks ran.
struct SimClient {
  int rank = 0;
  detail::Connection* conn = nullptr;
  grpc::ClientContext join_ctx, barrier_ctx;
  proto::JoinRequest join_req;
  proto::JoinResponse join_resp;
  proto::BarrierRequest barrier_req;
  proto::Empty barrier_resp;
};

class Tracker {
 public:
  explicit Tracker(int n) : left_joins_(n), left_barriers_(n) {}
  void joined() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--left_joins_ == 0) join_end_ = Clock::now();
  }
  void passed() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--left_barriers_ == 0) {
      end_ = Clock::now();
      cv_.notify_all();
    }
  }
  void failed(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.empty()) error_ = what;
    cv_.notify_all();
  }
  // Waits until every barrier passed or a client failed; returns the error (empty when none).
  std::string wait(Millis timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return left_barriers_ == 0 || !error_.empty(); }))
      return fmt::format("timed out after {} ms with {} joins and {} barriers outstanding",
                         timeout.count(), left_joins_, left_barriers_);
    return error_;
  }
  Clock::time_point join_end() const { return join_end_; }
  Clock::time_point end() const { return end_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int left_joins_, left_barriers_;
  std::string error_;
  Clock::time_point join_end_, end_;
};

double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

RdzvBenchResult run_rdzv_bench(const RdzvBenchOptions& options) {
  const int n = options.clients;
  if (n < 1) throw ConfigError(fmt::format("bench rdzv: --clients must be >= 1, got {}", n));
  const int nconn = options.connections > 0 ? std::min(options.connections, n) : n;
  // The process's identity for this run only (the bench is the process's sole gRPC user).
  struct TlsScope {
    explicit TlsScope(bool on) {
      set_process_tls(on ? std::optional<TlsIdentity>(make_job_tls()) : std::nullopt);
    }
    ~TlsScope() { set_process_tls(std::nullopt); }
  } tls_scope(options.tls);
  CoordinatorOptions copt;
  copt.token = make_token();
  copt.world_size = n;
  copt.mesh = {n, 1, 1};
  copt.join_timeout = options.timeout;
  Coordinator coordinator(copt);
  coordinator.start();

  RdzvBenchResult result;
  auto t_connect = Clock::now();
  std::vector<std::unique_ptr<detail::Connection>> conns;
  conns.reserve(nconn);
  for (int i = 0; i < nconn; ++i) {
    conns.push_back(std::make_unique<detail::Connection>(coordinator.address(), copt.token));
    conns.back()->channel().GetState(true);  // start connecting; they proceed in parallel
  }
  for (auto& c : conns) c->connect(options.timeout);
  result.connect_s = seconds(Clock::now() - t_connect);

  std::vector<std::unique_ptr<SimClient>> clients;
  clients.reserve(n);
  for (int r = 0; r < n; ++r) {
    auto c = std::make_unique<SimClient>();
    c->rank = r;
    c->conn = conns[r % nconn].get();
    c->conn->prepare(c->join_ctx, options.timeout);
    c->conn->prepare(c->barrier_ctx, options.timeout);
    c->join_req.set_rank(r);
    c->join_req.set_node("bench");
    c->join_req.set_local_rank(r);
    c->join_req.set_role("worker");
    c->barrier_req.set_name("bench");
    c->barrier_req.set_rank(r);
    c->barrier_req.set_count(n);
    c->barrier_req.set_timeout_ms(options.timeout.count());
    clients.push_back(std::move(c));
  }

  Tracker tracker(n);
  auto t0 = Clock::now();
  for (auto& cp : clients) {
    SimClient* c = cp.get();
    c->conn->stub().async()->Join(
        &c->join_ctx, &c->join_req, &c->join_resp, [c, &tracker](grpc::Status st) {
          if (!st.ok()) {
            tracker.failed(fmt::format("rank {} Join: {}", c->rank, st.error_message()));
            return;
          }
          tracker.joined();
          c->conn->stub().async()->Barrier(
              &c->barrier_ctx, &c->barrier_req, &c->barrier_resp, [c, &tracker](grpc::Status bst) {
                if (!bst.ok())
                  tracker.failed(fmt::format("rank {} Barrier: {}", c->rank, bst.error_message()));
                else
                  tracker.passed();
              });
        });
  }
  std::string error = tracker.wait(options.timeout + Millis(5000));
  if (!error.empty()) {
    // Unblock any call still in flight before the clients' state goes away.
    for (auto& c : clients) {
      c->join_ctx.TryCancel();
      c->barrier_ctx.TryCancel();
    }
    coordinator.abort("benchmark failed");
    throw RemoteError("bench rdzv: " + error);
  }
  result.join_s = seconds(tracker.join_end() - t0);
  result.total_s = seconds(tracker.end() - t0);
  return result;
}

}  // namespace ptrain::rendezvous
