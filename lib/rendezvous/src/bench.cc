#include "ptrain/rendezvous/bench.h"

#include <fmt/format.h>
#include <unistd.h>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>

#include "grpc_common.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/node_relay.h"
#include "ptrain/rendezvous/tls.h"
#include "ptrain/rendezvous/token.h"
#include "timer_queue.h"

namespace ptrain::rendezvous {

namespace {

// The connections of ranks that would each be a process of their own: without gRPC's per-call
// deadline timers, whose cost in one process grows with every call it has pending (the
// coordinator answers each wait before its deadline anyway).
constexpr int kClientQueues = 16;

detail::ConnectionOptions simulated_ranks() {
  detail::ConnectionOptions o;
  o.deadline_timers = false;
  return o;
}

// One simulated worker: its calls' state lives here until both answers came. Its calls run on
// one of the bench's completion queues (ClientQueues): each would be a process of its own, and
// gRPC's callback API puts every call of a process on one queue, whose bookkeeping (Debian's
// gRPC scans the queue's pending operations at every completion) then grows with the square of
// the simulated ranks.
struct SimClient {
  int rank = 0;
  detail::Connection* conn = nullptr;
  grpc::CompletionQueue* cq = nullptr;
  grpc::ClientContext join_ctx, barrier_ctx;
  proto::JoinRequest join_req;
  proto::JoinResponse join_resp;
  proto::BarrierRequest barrier_req;
  proto::Empty barrier_resp;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<proto::JoinResponse>> join_call;
  std::unique_ptr<grpc::ClientAsyncResponseReader<proto::Empty>> barrier_call;
  bool in_barrier = false;
};

// Completion queues with a thread each that drive the SimClients' Join -> Barrier chains.
class ClientQueues {
 public:
  ClientQueues(int n, std::function<void(SimClient*)> on_event) : on_event_(std::move(on_event)) {
    for (int i = 0; i < n; ++i) queues_.push_back(std::make_unique<grpc::CompletionQueue>());
    for (auto& q : queues_)
      threads_.emplace_back([cq = q.get(), this] {
        void* tag = nullptr;
        bool ok = false;
        while (cq->Next(&tag, &ok)) on_event_(static_cast<SimClient*>(tag));
      });
  }
  ~ClientQueues() {
    for (auto& q : queues_) q->Shutdown();
    for (auto& t : threads_) t.join();
  }
  grpc::CompletionQueue* queue(int i) { return queues_[i % queues_.size()].get(); }

 private:
  std::function<void(SimClient*)> on_event_;
  std::vector<std::unique_ptr<grpc::CompletionQueue>> queues_;
  std::vector<std::thread> threads_;
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
      error_ = fmt::format("timed out after {} ms with {} joins and {} barriers outstanding",
                           timeout.count(), left_joins_, left_barriers_);
    return error_;
  }
  // Runs f unless a client failed or the wait gave up: no call starts once the bench unwinds.
  template <class F>
  void unless_failed(F&& f) {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.empty()) f();
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

// Resident set size of this process, in bytes.
double rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * static_cast<double>(::sysconf(_SC_PAGESIZE));
}

// N ranks as N/K nodes: each node's NodeRelay joins its K ranks with one JoinNode and passes the
// barrier with one NodeBarrier; the ranks themselves call the relay in-process.
// Where the simulated ranks meet: the in-process coordinator or options.target.
struct Meeting {
  std::string address, token;
  std::function<double()> rss;
  std::function<uint64_t()> heartbeat_rpcs;
  std::function<void(const std::string&)> abort;
};

RdzvBenchResult run_hierarchical(const RdzvBenchOptions& options, const Meeting& coordinator) {
  const std::string& token = coordinator.token;
  const int n = options.clients, k = options.ranks_per_node;
  const int nodes = (n + k - 1) / k;
  const int nconn = options.connections > 0 ? std::min(options.connections, nodes) : nodes;
  RdzvBenchResult result;
  result.nodes = nodes;
  auto t_connect = Clock::now();
  std::vector<std::shared_ptr<detail::Connection>> conns;
  conns.reserve(nconn);
  for (int i = 0; i < nconn; ++i) {
    conns.push_back(
        std::make_shared<detail::Connection>(coordinator.address, token, simulated_ranks()));
    conns.back()->channel().GetState(true);
  }
  for (auto& c : conns) c->connect(options.timeout);
  result.connect_s = seconds(Clock::now() - t_connect);

  auto timers = std::make_shared<detail::TimerQueue>();
  std::vector<std::unique_ptr<NodeRelay>> relays;
  relays.reserve(nodes);
  for (int i = 0; i < nodes; ++i) {
    NodeRelayOptions ro;
    ro.node = fmt::format("node{}", i);
    ro.node_rank = i;
    const auto pos = relay_tree_position(i, nodes, options.tree_fanout);
    ro.tree_children = pos.children;
    if (pos.parent >= 0) ro.parent = relays[static_cast<size_t>(pos.parent)].get();
    for (int r = i * k; r < std::min(n, (i + 1) * k); ++r) ro.ranks.push_back(r);
    relays.push_back(std::make_unique<NodeRelay>(conns[i % nconn], timers, std::move(ro)));
  }

  Tracker tracker(n);
  double rss0 = coordinator.rss();
  auto t0 = Clock::now();
  for (auto& relay : relays) {
    NodeRelay* rl = relay.get();
    for (int r : rl->options().ranks) {
      JoinRequestView req;
      req.rank = r;
      req.node = rl->options().node;
      req.node_rank = rl->options().node_rank;
      req.local_rank = r - rl->options().ranks.front();
      req.timeout = options.timeout;
      rl->join(req, [rl, r, n, &tracker, &options](const RelayStatus& st, const JoinResult&) {
        if (!st.ok()) {
          tracker.failed(fmt::format("rank {} Join: {}", r, st.message));
          return;
        }
        tracker.joined();
        rl->barrier("bench", r, n, options.timeout, [r, &tracker](const RelayStatus& bst) {
          if (!bst.ok())
            tracker.failed(fmt::format("rank {} Barrier: {}", r, bst.message));
          else
            tracker.passed();
        });
      });
    }
  }
  std::string error = tracker.wait(options.timeout + Millis(5000));
  if (!error.empty()) {
    for (auto& relay : relays) relay->cancel_calls();
    coordinator.abort("benchmark failed");
    throw RemoteError("bench rdzv: " + error);
  }
  result.rss_bytes_per_rank = (coordinator.rss() - rss0) / n;
  result.join_s = seconds(tracker.join_end() - t0);
  result.total_s = seconds(tracker.end() - t0);

  if (options.heartbeat_period.count() > 0) {
    // Every rank heartbeats to its relay each period; each relay sends one NodeHeartbeat.
    auto before = coordinator.heartbeat_rpcs();
    auto start = Clock::now();
    int64_t step = 0;
    for (auto tick = start; tick < start + options.heartbeat_window;
         tick += options.heartbeat_period) {
      std::this_thread::sleep_until(tick);
      ++step;
      for (auto& relay : relays) {
        for (int r : relay->options().ranks) relay->heartbeat(r, step, 0);
        relay->flush_heartbeat();
      }
    }
    std::this_thread::sleep_until(start + options.heartbeat_window);
    auto counted = coordinator.heartbeat_rpcs() - before;
    result.heartbeat_rpcs_per_s = static_cast<double>(counted) / seconds(Clock::now() - start);
  }
  for (auto& relay : relays) relay->cancel_calls();
  return result;
}

}  // namespace

RdzvBenchResult run_rdzv_bench(const RdzvBenchOptions& options) {
  const int n = options.clients;
  if (n < 1) throw ConfigError(fmt::format("bench rdzv: --clients must be >= 1, got {}", n));
  const int nconn = options.connections > 0 ? std::min(options.connections, n) : n;
  if (options.ranks_per_node < 1)
    throw ConfigError(
        fmt::format("bench rdzv: --ranks-per-node must be >= 1, got {}", options.ranks_per_node));
  {
    // Every rank (or node relay) of a connection holds a stream with its waiting Join.
    const int callers = (n + options.ranks_per_node - 1) / options.ranks_per_node;
    const int conns = options.connections > 0 ? std::min(options.connections, callers) : callers;
    const int per_conn = (callers + conns - 1) / conns;
    if (per_conn > detail::kMaxStreamsPerConnection / 2)
      throw ConfigError(
          fmt::format("bench rdzv: {} callers per connection; the coordinator allows {} streams "
                      "per connection",
                      per_conn, detail::kMaxStreamsPerConnection),
          "give more --connections");
  }
  if (options.tls && options.target)
    throw ConfigError("bench rdzv: tls needs the coordinator in this process",
                      "run it with --in-process (--tls on implies it)");
  // The process's identity for this run only (the bench is the process's sole gRPC user).
  struct TlsScope {
    explicit TlsScope(bool on) {
      set_process_tls(on ? std::optional<TlsIdentity>(make_job_tls()) : std::nullopt);
    }
    ~TlsScope() { set_process_tls(std::nullopt); }
  } tls_scope(options.tls);
  std::unique_ptr<Coordinator> local;
  Meeting coordinator;
  if (options.target) {
    coordinator.address = options.target->address;
    coordinator.token = options.target->token;
    coordinator.rss = options.target->rss_bytes;
    coordinator.heartbeat_rpcs = options.target->heartbeat_rpcs;
    coordinator.abort = [](const std::string&) {};
  } else {
    CoordinatorOptions copt;
    copt.token = make_token();
    copt.world_size = n;
    copt.mesh = {n, 1, 1};
    copt.join_timeout = options.timeout;
    local = std::make_unique<Coordinator>(copt);
    local->start();
    Coordinator* c = local.get();
    coordinator.address = c->address();
    coordinator.token = copt.token;
    coordinator.rss = rss_bytes;
    coordinator.heartbeat_rpcs = [c] { return c->stats().heartbeat_rpcs; };
    coordinator.abort = [c](const std::string& why) { c->abort(why); };
  }
  if (options.ranks_per_node > 1) {
    auto res = run_hierarchical(options, coordinator);
    res.us_per_rank = res.total_s * 1e6 / n;
    return res;
  }

  RdzvBenchResult result;
  result.nodes = n;
  auto t_connect = Clock::now();
  std::vector<std::unique_ptr<detail::Connection>> conns;
  conns.reserve(nconn);
  for (int i = 0; i < nconn; ++i) {
    conns.push_back(std::make_unique<detail::Connection>(coordinator.address, coordinator.token,
                                                         simulated_ranks()));
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
  // A queue's thread runs each client's next step: its Join answered -> its Barrier.
  ClientQueues queues(kClientQueues, [&tracker](SimClient* c) {
    if (!c->status.ok()) {
      tracker.failed(fmt::format("rank {} {}: {}", c->rank, c->in_barrier ? "Barrier" : "Join",
                                 c->status.error_message()));
      return;
    }
    if (c->in_barrier) {
      tracker.passed();
      return;
    }
    tracker.joined();
    tracker.unless_failed([c] {
      c->in_barrier = true;
      c->barrier_call = c->conn->stub().PrepareAsyncBarrier(&c->barrier_ctx, c->barrier_req, c->cq);
      c->barrier_call->StartCall();
      c->barrier_call->Finish(&c->barrier_resp, &c->status, c);
    });
  });
  for (int r = 0; r < n; ++r) clients[r]->cq = queues.queue(r);
  double rss0 = coordinator.rss();
  auto t0 = Clock::now();
  for (auto& cp : clients) {
    SimClient* c = cp.get();
    c->join_call = c->conn->stub().PrepareAsyncJoin(&c->join_ctx, c->join_req, c->cq);
    c->join_call->StartCall();
    c->join_call->Finish(&c->join_resp, &c->status, c);
  }
  std::string error = tracker.wait(options.timeout + Millis(5000));
  if (!error.empty()) {
    // Unblock any call still in flight before the clients' state goes away (the queues drain
    // their answers before `queues` is destroyed, which happens before `clients`).
    for (auto& c : clients) {
      c->join_ctx.TryCancel();
      c->barrier_ctx.TryCancel();
    }
    coordinator.abort("benchmark failed");
    throw RemoteError("bench rdzv: " + error);
  }
  result.rss_bytes_per_rank = (coordinator.rss() - rss0) / n;
  result.join_s = seconds(tracker.join_end() - t0);
  result.total_s = seconds(tracker.end() - t0);
  result.us_per_rank = result.total_s * 1e6 / n;
  return result;
}

}  // namespace ptrain::rendezvous
