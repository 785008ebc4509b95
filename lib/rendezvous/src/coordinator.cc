// The coordinator service: membership and rendezvous rounds, barriers, heartbeats and the hang
// watchdog, the abort broadcast over Watch, and the store RPCs over ServerStore.
#include "ptrain/rendezvous/coordinator.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "answer_budget.h"
#include "grpc_common.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/token.h"
#include "server_store.h"
#include "timer_queue.h"

namespace ptrain::rendezvous {

using detail::AnswerBudget;
using detail::ServerStore;
using detail::TimerQueue;
using detail::WaitOutcome;

namespace {

// The server ends a wait this long before the client's deadline, so the client gets our message.
constexpr Millis kDeadlineMargin{200};

// Completion queues (one thread each) that serve the calls that wait for the world. Debian's
// gRPC checks every completion against the list of operations pending on its queue (a linear
// scan), and a call waiting in Join or Barrier keeps one there: with all 65,536 ranks of a flat
// rendezvous on gRPC's single callback queue, that scan was ~40% of the coordinator's CPU and
// made the rendezvous grow with the square of the ranks. Spread over 16 queues it is negligible.
constexpr int kWaitQueues = 16;
// Calls of each waiting method requested ahead on every queue: a burst of joins finds a request
// waiting instead of queueing until a queue's thread asks for the next one.
constexpr int kRequestsPerQueue = 32;

using PC = proto::Coordinator;
// Join, JoinNode, Barrier and NodeBarrier (the calls that wait for others) are async methods on
// the coordinator's own completion queues; every other method uses gRPC's callback API.
using CoordinatorService = PC::WithAsyncMethod_Join<PC::WithAsyncMethod_JoinNode<
    PC::WithAsyncMethod_Barrier<PC::WithAsyncMethod_NodeBarrier<PC::WithCallbackMethod_Heartbeat<
        PC::WithCallbackMethod_Leave<PC::WithCallbackMethod_Watch<PC::WithCallbackMethod_Set<
            PC::WithCallbackMethod_Get<PC::WithCallbackMethod_Add<PC::WithCallbackMethod_CompareSet<
                PC::WithCallbackMethod_Wait<PC::WithCallbackMethod_MultiGet<
                    PC::WithCallbackMethod_Check<PC::WithCallbackMethod_Delete<
                        PC::WithCallbackMethod_Report<PC::WithCallbackMethod_StreamLogs<
                            PC::WithCallbackMethod_NodeHeartbeat<PC::Service>>>>>>>>>>>>>>>>>>;

// The answer of a unary call that waits (AsyncCall below): send() once, from any thread.
class Reply {
 public:
  virtual void send(const grpc::Status& st) = 0;

 protected:
  ~Reply() = default;
};

// The reactor of a Get or MultiGet: the value bytes of its answer count against the
// coordinator's AnswerBudget until gRPC has sent the answer (OnDone), i.e. until the client's
// flow control took it in.
class AnswerReactor final : public grpc::ServerUnaryReactor {
 public:
  AnswerReactor(AnswerBudget* budget, grpc::CallbackServerContext* ctx)
      : budget_(budget), ctx_(ctx) {}
  // Reserves the answer's bytes; when the budget has no room, finishes the call with
  // RESOURCE_EXHAUSTED and returns false.
  bool reserve(const std::vector<Bytes>& values) {
    int64_t bytes = 0;
    for (const auto& v : values) bytes += static_cast<int64_t>(v.size());
    if (bytes < budget_->limits().counted_from) return true;
    std::string why;
    peer_ = ctx_->peer();
    if (!budget_->take(peer_, bytes, &why)) {
      Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "the coordinator holds back this answer: " + why));
      return false;
    }
    bytes_ = bytes;
    return true;
  }
  void OnDone() override {
    if (bytes_ > 0) budget_->give(peer_, bytes_);
    delete this;
  }

 private:
  AnswerBudget* budget_;
  grpc::CallbackServerContext* ctx_;
  std::string peer_;
  int64_t bytes_ = 0;
};

// An event on one of the wait queues.
class QueueEvent {
 public:
  virtual void proceed(bool ok) = 0;

 protected:
  ~QueueEvent() = default;
};

std::string list_ranks(const std::vector<int>& ranks, const std::map<int, std::string>& nodes,
                       size_t max_named = 8) {
  std::string out;
  for (size_t i = 0; i < ranks.size() && i < max_named; ++i) {
    if (i) out += ", ";
    out += std::to_string(ranks[i]);
    auto it = nodes.find(ranks[i]);
    if (it != nodes.end() && !it->second.empty()) out += " (" + it->second + ")";
  }
  if (ranks.size() > max_named) out += fmt::format(" and {} more", ranks.size() - max_named);
  return out;
}

// Why a bind failed, asked of the OS directly (gRPC only says "no address added").
std::string bind_failure(const std::string& host, int port) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
  if (inet_pton(AF_INET, host.c_str(), &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr) == 1) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.c_str(), &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr) ==
             1) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(port));
    family = AF_INET6;
    len = sizeof(sockaddr_in6);
  } else {
    return "not a numeric IP address";
  }
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::strerror(errno);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&ss), len);
  int err = errno;
  ::close(fd);
  if (rc == 0) return "the address could not be bound";
  if (err == EADDRINUSE) return "address in use";
  return std::strerror(err);
}

grpc::Status unauthenticated() {
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong or missing job token");
}

}  // namespace

class Coordinator::Impl final : public CoordinatorService {
 public:
  Impl(CoordinatorOptions options, CoordinatorEvents events)
      : opt_(std::move(options)), ev_(std::move(events)), store_(timers_) {
    if (opt_.world_size < 1)
      throw ConfigError(
          fmt::format("coordinator: world_size must be at least 1, got {}", opt_.world_size));
    if (opt_.extra_roles < 0)
      throw ConfigError(
          fmt::format("coordinator: extra_roles must be >= 0, got {}", opt_.extra_roles));
    if (opt_.mesh.size() != opt_.world_size)
      throw ConfigError(
          fmt::format("coordinator: mesh {}x{}x{} (dp x tp x pp) has {} ranks but "
                      "world_size is {}",
                      opt_.mesh.dp, opt_.mesh.tp, opt_.mesh.pp, opt_.mesh.size(), opt_.world_size));
    if (opt_.token.empty())
      throw ConfigError("coordinator: the job token is empty", "make one with make_token()");
    members_.resize(static_cast<size_t>(opt_.world_size) + opt_.extra_roles);
  }

  ~Impl() override { stop(); }

  void start() {
    detail::route_grpc_logs();
    std::string listen = detail::host_port(opt_.bind, opt_.port);
    grpc::ServerBuilder builder;
    detail::configure_coordinator_server(
        builder, listen, &port_, opt_.token,
        [this](const char* why) { count_rejected("a call (on its headers)", "a client", why); },
        [this](const std::string& line) {
          if (ev_.on_warning) ev_.on_warning(line);
        },
        &listeners_);
    builder.RegisterService(this);
    for (int i = 0; i < kWaitQueues; ++i) queues_.push_back(builder.AddCompletionQueue());
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) {
      server_.reset();
      shutdown_queues();
      throw IoError(
          fmt::format("cannot listen on {}: {}", listen, bind_failure(opt_.bind, opt_.port)),
          opt_.port ? "choose another rendezvous.port, or 0 to let the kernel pick"
                    : "check rendezvous.bind");
    }
    for (auto& q : queues_) {
      request_waits(q.get());
      threads_.emplace_back([cq = q.get()] {
        void* tag = nullptr;
        bool ok = false;
        while (cq->Next(&tag, &ok)) static_cast<QueueEvent*>(tag)->proceed(ok);
      });
    }
    schedule_watchdog();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopped_) return;
      stopped_ = true;
    }
    fail_pending(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator shut down"), true);
    store_.cancel_all("the coordinator shut down");
    end_watches(std::nullopt);
    // Every wait was ended above; connections left open (a client that never closes) are ended
    // before the server shuts down, since gRPC would not end them itself.
    listeners_.stop();
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + Millis(1000));
      server_->Wait();
    }
    shutdown_queues();
    server_.reset();
  }

  int port() const { return port_; }
  std::string address() const { return detail::host_port(opt_.bind, port_); }

  void expect(int rank, std::string node) {
    std::lock_guard<std::mutex> lock(mu_);
    expected_nodes_[rank] = std::move(node);
  }

  void abort(const std::string& reason) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      aborted_ = true;
      abort_reason_ = reason;
    }
    fail_pending(grpc::Status(grpc::StatusCode::ABORTED, "job aborted: " + reason), false);
    proto::WatchEvent event;
    event.set_kind(proto::WatchEvent::ABORT);
    event.set_reason(reason);
    end_watches(event);
  }

  void begin_round(int round) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      round_ = round;
      aborted_ = false;
      abort_reason_.clear();
      for (auto& m : members_) m = Member{};
      joined_count_ = 0;
      rendezvous_done_ = false;
    }
    fail_pending(
        grpc::Status(grpc::StatusCode::ABORTED, fmt::format("rendezvous round {} began", round)),
        false);
    proto::WatchEvent event;
    event.set_kind(proto::WatchEvent::RESTART);
    event.set_reason(fmt::format("the group restarts in round {}", round));
    event.set_round(round);
    end_watches(event);
  }

  int round() const {
    std::lock_guard<std::mutex> lock(mu_);
    return round_;
  }

  void reshape(int world_size, MeshShape mesh, std::string spec_yaml) {
    if (world_size < 1 || mesh.size() != world_size)
      throw ConfigError(
          fmt::format("coordinator: cannot reshape to {} ranks in mesh {}x{}x{} (dp x tp x pp)",
                      world_size, mesh.dp, mesh.tp, mesh.pp));
    std::lock_guard<std::mutex> lock(mu_);
    opt_.world_size = world_size;
    opt_.mesh = mesh;
    opt_.spec_yaml = std::move(spec_yaml);
    members_.assign(static_cast<size_t>(world_size) + opt_.extra_roles, Member{});
    joined_count_ = 0;
    rendezvous_done_ = false;
    expected_nodes_.clear();
  }

  std::vector<int> missing_ranks() const {
    std::lock_guard<std::mutex> lock(mu_);
    return missing_locked();
  }

  std::vector<int> joined_ranks() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<int> out;
    for (size_t r = 0; r < members_.size(); ++r)
      if (members_[r].joined) out.push_back(static_cast<int>(r));
    return out;
  }

  Store& store() { return store_; }

  CoordinatorStats stats() const {
    return {join_rpcs_.load(), node_join_rpcs_.load(), heartbeat_rpcs_.load(),
            barrier_rpcs_.load()};
  }

  // ---- gRPC handlers -------------------------------------------------------------------

  void join(const grpc::ServerContextBase* ctx, const proto::JoinRequest* req,
            proto::JoinResponse* resp, Reply* reactor) {
    if (!authorized(ctx, "Join")) return finish(reactor, unauthenticated());
    join_rpcs_.fetch_add(1, std::memory_order_relaxed);
    std::vector<Reply*> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto st = refuse_locked(); !st.ok()) return finish(reactor, st);
      bool server_role = req->role() == "server";
      if (!req->role().empty() && req->role() != "worker" && !server_role)
        return finish(reactor, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                            fmt::format("unknown role '{}' (worker or server)",
                                                        req->role())));
      if (auto st =
              admissible_locked(req->rank(), server_role, req->round(), req->node(), req->pid());
          !st.ok())
        return finish(reactor, st);
      admit_locked(req->rank(), node_id_locked(req->node()), req->pid());
      auto pending = std::make_shared<Pending>();
      pending->reactor = reactor;
      pending->join_response = resp;
      pending->ranks = {req->rank()};
      wait_for_round_locked(ctx, std::move(pending), done);
    }
    for (auto* r : done) r->send(grpc::Status::OK);
  }

  void join_node(const grpc::ServerContextBase* ctx, const proto::JoinNodeRequest* req,
                 proto::JoinNodeResponse* resp, Reply* reactor) {
    if (!authorized(ctx, "JoinNode")) return finish(reactor, unauthenticated());
    join_rpcs_.fetch_add(1, std::memory_order_relaxed);
    node_join_rpcs_.fetch_add(1, std::memory_order_relaxed);
    std::vector<Reply*> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto st = refuse_locked(); !st.ok()) return finish(reactor, st);
      // The node's own ranks, then those of the nodes below it in a relay tree.
      std::vector<const proto::JoinNodeRequest*> entries{req};
      for (const auto& sub : req->subtree()) entries.push_back(&sub);
      size_t total = 0;
      for (const auto* e : entries) total += static_cast<size_t>(e->ranks_size());
      if (total == 0)
        return finish(reactor,
                      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   fmt::format("JoinNode from {} names no ranks", req->node())));
      // All or nothing: check every rank before admitting any.
      std::unordered_set<int> seen;
      for (const auto* e : entries) {
        for (const auto& r : e->ranks()) {
          if (!seen.insert(r.rank()).second)
            return finish(reactor, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                                fmt::format("JoinNode from {} names rank {} twice",
                                                            e->node(), r.rank())));
          if (auto st = admissible_locked(r.rank(), false, e->round(), e->node(), r.pid());
              !st.ok())
            return finish(reactor, st);
        }
      }
      auto pending = std::make_shared<Pending>();
      pending->reactor = reactor;
      pending->node_response = resp;
      pending->ranks.reserve(total);
      for (const auto* e : entries) {
        if (e->ranks().empty()) continue;
        int node = node_id_locked(e->node());
        for (const auto& r : e->ranks()) {
          admit_locked(r.rank(), node, r.pid());
          pending->ranks.push_back(r.rank());
        }
      }
      wait_for_round_locked(ctx, std::move(pending), done);
    }
    for (auto* r : done) r->send(grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const proto::HeartbeatRequest* req,
                                      proto::HeartbeatResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Heartbeat")) return finish(reactor, unauthenticated());
    heartbeat_rpcs_.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(mu_);
    if (req->round() == round_) beat_locked(req->rank(), req->step(), Clock::now());
    resp->set_abort(aborted_);
    resp->set_reason(abort_reason_);
    return finish(reactor, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* NodeHeartbeat(grpc::CallbackServerContext* ctx,
                                          const proto::NodeHeartbeatRequest* req,
                                          proto::HeartbeatResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "NodeHeartbeat")) return finish(reactor, unauthenticated());
    heartbeat_rpcs_.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(mu_);
    if (req->round() == round_) {
      auto now = Clock::now();
      for (const auto& b : req->ranks())
        beat_locked(b.rank(), b.step(), now - Millis(std::max<int64_t>(b.age_ms(), 0)));
    }
    resp->set_abort(aborted_);
    resp->set_reason(abort_reason_);
    return finish(reactor, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* ctx, const proto::LeaveRequest* req,
                                  proto::Empty*) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Leave")) return finish(reactor, unauthenticated());
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (Member* m = member_locked(req->rank())) m->left = true;
    }
    if (ev_.on_leave) ev_.on_leave(req->rank(), req->exit_code(), req->reason());
    return finish(reactor, grpc::Status::OK);
  }

  class WatchReactor;
  grpc::ServerWriteReactor<proto::WatchEvent>* Watch(grpc::CallbackServerContext* ctx,
                                                     const proto::WatchRequest* req) override;

  grpc::ServerUnaryReactor* Set(grpc::CallbackServerContext* ctx, const proto::SetRequest* req,
                                proto::Empty*) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Set")) return finish(reactor, unauthenticated());
    return finish(reactor, guarded([&] { store_.set(req->key(), req->value()); }));
  }

  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx, const proto::GetRequest* req,
                                proto::GetResponse* resp) override {
    auto* reactor = new AnswerReactor(&answers_, ctx);
    if (!authorized(ctx, "Get")) return finish(reactor, unauthenticated());
    store_.wait_async({req->key()}, wait_deadline(ctx, Millis(req->timeout_ms())),
                      [reactor, resp](WaitOutcome out) {
                        if (out.code == WaitOutcome::Code::Ok) {
                          if (!reactor->reserve(out.values)) return;
                          resp->set_value(std::move(out.values[0]));
                        }
                        reactor->Finish(to_status(out));
                      });
    return reactor;
  }

  grpc::ServerUnaryReactor* Add(grpc::CallbackServerContext* ctx, const proto::AddRequest* req,
                                proto::AddResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Add")) return finish(reactor, unauthenticated());
    return finish(reactor, guarded([&] { resp->set_value(store_.add(req->key(), req->delta())); }));
  }

  grpc::ServerUnaryReactor* CompareSet(grpc::CallbackServerContext* ctx,
                                       const proto::CompareSetRequest* req,
                                       proto::CompareSetResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "CompareSet")) return finish(reactor, unauthenticated());
    return finish(
        reactor, guarded([&] {
          std::optional<Bytes> expected;
          if (!req->expect_absent()) expected = req->expected();
          bool swapped = false;
          resp->set_value(store_.compare_set(req->key(), expected, req->desired(), &swapped));
          resp->set_swapped(swapped);
        }));
  }

  grpc::ServerUnaryReactor* Wait(grpc::CallbackServerContext* ctx, const proto::WaitRequest* req,
                                 proto::Empty*) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Wait")) return finish(reactor, unauthenticated());
    store_.wait_async({req->keys().begin(), req->keys().end()},
                      wait_deadline(ctx, Millis(req->timeout_ms())),
                      [reactor](WaitOutcome out) { reactor->Finish(to_status(out)); });
    return reactor;
  }

  grpc::ServerUnaryReactor* MultiGet(grpc::CallbackServerContext* ctx,
                                     const proto::MultiGetRequest* req,
                                     proto::MultiGetResponse* resp) override {
    auto* reactor = new AnswerReactor(&answers_, ctx);
    if (!authorized(ctx, "MultiGet")) return finish(reactor, unauthenticated());
    store_.wait_async({req->keys().begin(), req->keys().end()},
                      wait_deadline(ctx, Millis(req->timeout_ms())),
                      [reactor, resp](WaitOutcome out) {
                        if (out.code == WaitOutcome::Code::Ok) {
                          if (!reactor->reserve(out.values)) return;
                          for (auto& v : out.values) resp->add_values(std::move(v));
                        }
                        reactor->Finish(to_status(out));
                      });
    return reactor;
  }

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* ctx, const proto::CheckRequest* req,
                                  proto::CheckResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Check")) return finish(reactor, unauthenticated());
    resp->set_all_present(store_.check({req->keys().begin(), req->keys().end()}));
    return finish(reactor, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx,
                                   const proto::DeleteRequest* req, proto::Empty*) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Delete")) return finish(reactor, unauthenticated());
    store_.erase(req->key());
    return finish(reactor, grpc::Status::OK);
  }

  void barrier(const grpc::ServerContextBase* ctx, const proto::BarrierRequest* req, proto::Empty*,
               Reply* reactor);
  void node_barrier(const grpc::ServerContextBase* ctx, const proto::NodeBarrierRequest* req,
                    proto::Empty*, Reply* reactor);

  grpc::ServerUnaryReactor* Report(grpc::CallbackServerContext* ctx,
                                   const proto::ReportRequest* req, proto::Empty*) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Report")) return finish(reactor, unauthenticated());
    if (ev_.on_report) ev_.on_report(req->rank(), req->json());
    return finish(reactor, grpc::Status::OK);
  }

  class LogReactor;
  grpc::ServerReadReactor<proto::LogBatch>* StreamLogs(grpc::CallbackServerContext* ctx,
                                                       proto::Empty*) override;

 private:
  // One slot per participant, allocated once: joining is an index, not a map insertion, and a
  // member costs a few dozen bytes (node names are interned).
  struct Member {
    Clock::time_point last_seen;
    int64_t pid = 0;
    int64_t step = 0;
    int32_t node = -1;  // index into node_names_
    bool joined = false;
    bool hang_reported = false;
    bool left = false;
  };
  // A unary call that waits for others (Join, JoinNode, Barrier, NodeBarrier); finished exactly
  // once under mu_.
  struct Pending {
    Reply* reactor = nullptr;
    proto::JoinResponse* join_response = nullptr;      // Join
    proto::JoinNodeResponse* node_response = nullptr;  // JoinNode
    std::vector<int> ranks;                            // the ranks this call stands for
    std::string barrier;
    TimerQueue::Id timer = 0;
    bool finished = false;
  };
  struct BarrierState {
    int count = 0;
    int live = 0;  // waiting calls not finished yet (timed-out ones stay in `waiting`)
    std::unordered_set<int> arrived;
    std::string detail;  // the timeout description, valid while arrived.size() == detail_arrived
    size_t detail_arrived = 0;
    std::vector<std::shared_ptr<Pending>> waiting;
  };

  Member* member_locked(int rank) {
    if (rank < 0 || rank >= static_cast<int>(members_.size()) || !members_[rank].joined)
      return nullptr;
    return &members_[rank];
  }

  int node_id_locked(const std::string& node) {
    auto [it, inserted] = node_ids_.try_emplace(node, static_cast<int>(node_names_.size()));
    if (inserted) node_names_.push_back(node);
    return it->second;
  }

  const std::string& node_name(int32_t id) const {
    static const std::string kUnknown;
    return id >= 0 && id < static_cast<int>(node_names_.size()) ? node_names_[id] : kUnknown;
  }

  // With mu_ held: why `rank` may not join now (OK when it may).
  grpc::Status admissible_locked(int rank, bool server_role, int round, const std::string& node,
                                 int64_t pid) const {
    int total = opt_.world_size + opt_.extra_roles;
    int lo = server_role ? opt_.world_size : 0, hi = server_role ? total : opt_.world_size;
    if (rank < lo || rank >= hi)
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          fmt::format("rank {} is out of range for role {}: [{}, {})", rank,
                                      server_role ? "server" : "worker", lo, hi));
    if (round != round_)
      return grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          fmt::format("Join for round {} but the coordinator is in round {}", round, round_));
    if (const Member& m = members_[rank]; m.joined)
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          fmt::format("rank {} already joined round {} from {} pid {}; this Join "
                                      "came from {} pid {}",
                                      rank, round_, node_name(m.node), m.pid, node, pid));
    return grpc::Status::OK;
  }

  void admit_locked(int rank, int node, int64_t pid) {
    Member& m = members_[rank];
    m = Member{};
    m.joined = true;
    m.node = node;
    m.pid = pid;
    m.last_seen = Clock::now();
    ++joined_count_;
  }

  // With mu_ held: parks `p` until the round is complete, or completes the round (every parked
  // call goes to `done`, to be finished outside mu_).
  void wait_for_round_locked(const grpc::ServerContextBase* ctx, std::shared_ptr<Pending> p,
                             std::vector<Reply*>& done) {
    if (joined_count_ < static_cast<int>(members_.size())) {
      auto deadline = wait_deadline(ctx, opt_.join_timeout);
      std::weak_ptr<Pending> weak = p;
      p->timer = timers_.schedule(deadline, [this, weak] {
        if (auto sp = weak.lock()) join_timed_out(sp);
      });
      pending_joins_.push_back(std::move(p));
      return;
    }
    rendezvous_done_ = true;
    auto now = Clock::now();
    for (auto& m : members_) m.last_seen = now;
    pending_joins_.push_back(std::move(p));
    done.reserve(pending_joins_.size());
    for (auto& w : pending_joins_) {
      if (w->finished) continue;
      w->finished = true;
      if (w->timer) timers_.cancel(w->timer);
      if (w->join_response) fill_join_locked(w->ranks.front(), *w->join_response);
      if (w->node_response) fill_node_locked(w->ranks, *w->node_response);
      done.push_back(w->reactor);
    }
    pending_joins_.clear();
  }

  void beat_locked(int rank, int64_t step, Clock::time_point seen) {
    Member* m = member_locked(rank);
    if (!m) return;
    if (seen > m->last_seen) m->last_seen = seen;
    m->step = step;
    if (seen + opt_.heartbeat_timeout > Clock::now()) m->hang_reported = false;
  }

  static grpc::ServerUnaryReactor* finish(grpc::ServerUnaryReactor* r, const grpc::Status& st) {
    r->Finish(st);
    return r;
  }
  static void finish(Reply* r, const grpc::Status& st) { r->send(st); }

  static grpc::Status to_status(const WaitOutcome& out) {
    switch (out.code) {
      case WaitOutcome::Code::Ok:
        return grpc::Status::OK;
      case WaitOutcome::Code::Timeout:
        return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, out.message);
      case WaitOutcome::Code::Cancelled:
        break;
    }
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, out.message);
  }

  // Runs a store mutation; the errors a client can cause become INVALID_ARGUMENT.
  template <class F>
  static grpc::Status guarded(F&& f) {
    try {
      f();
      return grpc::Status::OK;
    } catch (const ConfigError& e) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
    }
  }

  bool authorized(const grpc::ServerContextBase* ctx, const char* method) {
    const auto& md = ctx->client_metadata();
    auto it = md.find(kTokenMetadataKey);
    bool ok = it != md.end() &&
              token_equal(std::string_view(it->second.data(), it->second.size()), opt_.token);
    if (!ok) count_rejected(method, ctx->peer(), it == md.end() ? "missing" : "wrong");
    return ok;
  }

  void count_rejected(const char* method, const std::string& peer, const char* why) {
    // Thousands of misconfigured clients must not flood the console: the first few, then
    // every thousandth.
    uint64_t n = rejected_.fetch_add(1) + 1;
    if (ev_.on_warning && (n <= 5 || n % 1000 == 0))
      ev_.on_warning(fmt::format("rejected {} from {}: {} job token ({} rejected so far)", method,
                                 peer, why, n));
  }

  // With mu_ held: the refusal for a waiting call while aborted or stopped.
  grpc::Status refuse_locked() const {
    if (stopped_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator shut down");
    if (aborted_) return grpc::Status(grpc::StatusCode::ABORTED, "job aborted: " + abort_reason_);
    return grpc::Status::OK;
  }

  // The server-side end of a wait: its own timeout, but before the client's deadline.
  static Clock::time_point wait_deadline(const grpc::ServerContextBase* ctx, Millis timeout) {
    auto ours = Clock::now() + std::max(timeout, Millis(0));
    auto theirs_sys = ctx->deadline();
    if (theirs_sys < std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
      auto left = std::chrono::duration_cast<Millis>(theirs_sys - std::chrono::system_clock::now());
      auto theirs = Clock::now() + std::max(left - kDeadlineMargin, left / 2);
      return std::min(ours, theirs);
    }
    return ours;
  }

  std::vector<int> missing_locked() const {
    std::vector<int> out;
    for (int r = 0; r < opt_.world_size + opt_.extra_roles; ++r)
      if (!members_[r].joined) out.push_back(r);
    return out;
  }

  void fill_join_locked(int rank, proto::JoinResponse& resp) const {
    resp.set_rank(rank);
    resp.set_world_size(opt_.world_size);
    if (rank < opt_.world_size) {
      MeshCoords c = coords_of(rank, opt_.mesh);
      resp.mutable_coords()->set_dp(c.dp);
      resp.mutable_coords()->set_tp(c.tp);
      resp.mutable_coords()->set_pp(c.pp);
    }
    resp.mutable_mesh()->set_dp(opt_.mesh.dp);
    resp.mutable_mesh()->set_tp(opt_.mesh.tp);
    resp.mutable_mesh()->set_pp(opt_.mesh.pp);
    resp.set_run_id(opt_.run_id);
    resp.set_run_dir(opt_.run_dir);
    resp.set_spec_yaml(opt_.spec_yaml);
    resp.set_round(round_);
  }

  void fill_node_locked(const std::vector<int>& ranks, proto::JoinNodeResponse& resp) const {
    for (int r : ranks) resp.add_ranks(r);
    resp.set_world_size(opt_.world_size);
    resp.mutable_mesh()->set_dp(opt_.mesh.dp);
    resp.mutable_mesh()->set_tp(opt_.mesh.tp);
    resp.mutable_mesh()->set_pp(opt_.mesh.pp);
    resp.set_run_id(opt_.run_id);
    resp.set_run_dir(opt_.run_dir);
    resp.set_spec_yaml(opt_.spec_yaml);
    resp.set_round(round_);
  }

  void join_timed_out(const std::shared_ptr<Pending>& p) {
    grpc::Status st;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (p->finished) return;
      p->finished = true;  // stays in pending_joins_ (skipped there): no O(n) erase per timeout
      // Joins that time out together share one message (it costs O(world)).
      if (join_timeout_msg_.empty() || join_timeout_msg_count_ != joined_count_) {
        auto missing = missing_locked();
        int total = opt_.world_size + opt_.extra_roles;
        join_timeout_msg_ = fmt::format(
            "rendezvous timed out after {:.3g} s: {} of {} ranks joined; missing rank{} {}",
            opt_.join_timeout.count() / 1000.0, total - missing.size(), total,
            missing.size() == 1 ? "" : "s", list_ranks(missing, expected_nodes_));
        join_timeout_msg_count_ = joined_count_;
      }
      st = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, join_timeout_msg_);
    }
    p->reactor->send(st);
  }

  void barrier_timed_out(const std::shared_ptr<Pending>& p, Millis timeout) {
    grpc::Status st;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (p->finished) return;
      p->finished = true;
      auto it = barriers_.find(p->barrier);
      std::string detail;
      if (it != barriers_.end()) {
        BarrierState& b = it->second;
        // Waiters that time out together share one description (it costs O(count)).
        if (b.detail.empty() || b.detail_arrived != b.arrived.size()) {
          std::vector<int> missing;
          for (int r = 0; r < b.count; ++r)
            if (!b.arrived.count(r)) missing.push_back(r);
          b.detail = fmt::format("{} of {} arrived", b.arrived.size(), b.count);
          if (b.arrived.size() + missing.size() == static_cast<size_t>(b.count))
            b.detail += fmt::format("; missing rank{} {}", missing.size() == 1 ? "" : "s",
                                    list_ranks(missing, expected_nodes_));
        }
        detail = b.detail;
        // The caller stops waiting, so its ranks no longer count as arrived.
        for (int r : p->ranks) b.arrived.erase(r);
        b.detail_arrived = b.arrived.size();
        if (--b.live == 0) barriers_.erase(it);
      }
      st = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        fmt::format("barrier '{}' timed out after {} ms: {}", p->barrier,
                                    timeout.count(), detail));
    }
    p->reactor->send(st);
  }

  // Fails every pending Join and Barrier with st.
  void fail_pending(const grpc::Status& st, bool /*shutdown*/) {
    std::vector<Reply*> reactors;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto take = [&](std::vector<std::shared_ptr<Pending>>& list) {
        for (auto& p : list) {
          if (p->finished) continue;
          p->finished = true;
          if (p->timer) timers_.cancel(p->timer);
          reactors.push_back(p->reactor);
        }
        list.clear();
      };
      take(pending_joins_);
      for (auto& [name, b] : barriers_) take(b.waiting);
      barriers_.clear();
    }
    for (auto* r : reactors) r->send(st);
  }

  template <class Req, class Resp>
  class AsyncCall;
  // Asks for the next call of every waiting method on `cq`.
  void request_waits(grpc::ServerCompletionQueue* cq);
  void request_waits_once(grpc::ServerCompletionQueue* cq);

  void shutdown_queues() {
    for (auto& q : queues_) q->Shutdown();
    for (auto& t : threads_) t.join();
    threads_.clear();
    // Drains what no thread took (a server that never started has no threads).
    for (auto& q : queues_) {
      void* tag = nullptr;
      bool ok = false;
      while (q->Next(&tag, &ok)) static_cast<QueueEvent*>(tag)->proceed(false);
    }
    queues_.clear();
  }

  void end_watches(std::optional<proto::WatchEvent> event);

  // With mu_ held: `ranks` arrive at barrier `name`; either parks the call (reactor) or releases
  // every waiter into `release` (finished outside mu_). A non-OK status refuses the call.
  grpc::Status arrive_locked(const grpc::ServerContextBase* ctx, const std::string& name,
                             std::vector<int> ranks, int count, Millis timeout, Reply* reactor,
                             std::vector<Reply*>& release);

  void schedule_watchdog() {
    Millis interval = std::clamp(opt_.heartbeat_timeout / 4, Millis(10), Millis(1000));
    timers_.schedule(Clock::now() + interval, [this] {
      check_heartbeats();
      bool stopped;
      {
        std::lock_guard<std::mutex> lock(mu_);
        stopped = stopped_;
      }
      if (!stopped) schedule_watchdog();
    });
  }

  void check_heartbeats() {
    std::vector<std::pair<int, std::string>> hung;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Ranks still waiting in Join are covered by join_timeout, not by the hang watchdog.
      if (!rendezvous_done_ || aborted_ || stopped_) return;
      auto now = Clock::now();
      for (size_t rank = 0; rank < members_.size(); ++rank) {
        Member& m = members_[rank];
        if (!m.joined || m.left || m.hang_reported) continue;
        auto silent = std::chrono::duration_cast<Millis>(now - m.last_seen);
        if (silent < opt_.heartbeat_timeout) continue;
        m.hang_reported = true;
        hung.emplace_back(static_cast<int>(rank),
                          fmt::format("rank {} ({} pid {}) sent no heartbeat for {:.3g} s", rank,
                                      node_name(m.node), m.pid, silent.count() / 1000.0));
      }
    }
    if (ev_.on_hang)
      for (auto& [rank, why] : hung) ev_.on_hang(rank, why);
  }

  CoordinatorOptions opt_;
  CoordinatorEvents ev_;
  TimerQueue timers_;     // before store_ and server_: both use it until they stop
  AnswerBudget answers_;  // before server_: its calls give back what they took when they end
  ServerStore store_;
  std::unique_ptr<grpc::Server> server_;
  ServerListeners listeners_;  // after server_: stops accepting before the server goes
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::thread> threads_;  // one per queue
  int port_ = 0;
  std::atomic<uint64_t> rejected_{0};

  mutable std::mutex mu_;
  bool stopped_ = false;
  int round_ = 0;
  bool aborted_ = false;
  std::string abort_reason_;
  bool rendezvous_done_ = false;
  std::vector<Member> members_;  // world_size + extra_roles slots
  int joined_count_ = 0;
  std::unordered_map<std::string, int> node_ids_;
  std::vector<std::string> node_names_;
  std::string join_timeout_msg_;
  int join_timeout_msg_count_ = -1;
  std::atomic<uint64_t> join_rpcs_{0}, node_join_rpcs_{0}, heartbeat_rpcs_{0}, barrier_rpcs_{0};
  std::map<int, std::string> expected_nodes_;
  std::vector<std::shared_ptr<Pending>> pending_joins_;
  std::map<std::string, BarrierState> barriers_;
  std::unordered_set<WatchReactor*> watches_;
};

// ---- Barrier ---------------------------------------------------------------------------

void Coordinator::Impl::barrier(const grpc::ServerContextBase* ctx,
                                const proto::BarrierRequest* req, proto::Empty*, Reply* reactor) {
  if (!authorized(ctx, "Barrier")) return finish(reactor, unauthenticated());
  barrier_rpcs_.fetch_add(1, std::memory_order_relaxed);
  std::vector<Reply*> release;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto st = arrive_locked(ctx, req->name(), {req->rank()}, req->count(),
                                Millis(req->timeout_ms()), reactor, release);
        !st.ok())
      return finish(reactor, st);
  }
  for (auto* r : release) r->send(grpc::Status::OK);
}

void Coordinator::Impl::node_barrier(const grpc::ServerContextBase* ctx,
                                     const proto::NodeBarrierRequest* req, proto::Empty*,
                                     Reply* reactor) {
  if (!authorized(ctx, "NodeBarrier")) return finish(reactor, unauthenticated());
  barrier_rpcs_.fetch_add(1, std::memory_order_relaxed);
  if (req->ranks().empty())
    return finish(reactor, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                        fmt::format("barrier '{}': NodeBarrier names no ranks",
                                                    req->name())));
  std::vector<Reply*> release;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto st = arrive_locked(ctx, req->name(), {req->ranks().begin(), req->ranks().end()},
                                req->count(), Millis(req->timeout_ms()), reactor, release);
        !st.ok())
      return finish(reactor, st);
  }
  for (auto* r : release) r->send(grpc::Status::OK);
}

grpc::Status Coordinator::Impl::arrive_locked(const grpc::ServerContextBase* ctx,
                                              const std::string& name, std::vector<int> ranks,
                                              int count, Millis timeout, Reply* reactor,
                                              std::vector<Reply*>& release) {
  if (auto st = refuse_locked(); !st.ok()) return st;
  if (count < 1)
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        fmt::format("barrier '{}': count must be >= 1, got {}", name, count));
  auto [it, created] = barriers_.try_emplace(name);
  BarrierState& b = it->second;
  if (b.count == 0) b.count = count;
  auto refuse = [&](grpc::Status st) {
    if (created) barriers_.erase(it);
    return st;
  };
  if (b.count != count)
    return refuse(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               fmt::format("barrier '{}': rank {} expects {} participants, "
                                           "others expect {}",
                                           name, ranks.front(), count, b.count)));
  // All or nothing: a call whose ranks cannot all arrive leaves none of them arrived.
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (b.arrived.insert(ranks[i]).second) continue;
    for (size_t j = 0; j < i; ++j) b.arrived.erase(ranks[j]);
    return refuse(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                               fmt::format("barrier '{}': rank {} arrived twice", name, ranks[i])));
  }
  if (static_cast<int>(b.arrived.size()) >= b.count) {
    release.reserve(b.waiting.size() + 1);
    for (auto& w : b.waiting) {
      if (w->finished) continue;
      w->finished = true;
      if (w->timer) timers_.cancel(w->timer);
      release.push_back(w->reactor);
    }
    release.push_back(reactor);
    barriers_.erase(it);
    return grpc::Status::OK;
  }
  auto p = std::make_shared<Pending>();
  p->reactor = reactor;
  p->ranks = std::move(ranks);
  p->barrier = name;
  std::weak_ptr<Pending> weak = p;
  p->timer = timers_.schedule(wait_deadline(ctx, timeout), [this, weak, timeout] {
    if (auto sp = weak.lock()) barrier_timed_out(sp, timeout);
  });
  b.waiting.push_back(std::move(p));
  ++b.live;
  return grpc::Status::OK;
}

// ---- The waiting methods on the coordinator's completion queues ------------------------

// One call of a waiting method: requested on a queue, handled when it arrives (the next one is
// requested first), answered by send() from whichever thread completes the wait, and deleted
// when its answer has gone out, or when the queue shuts down before a call came.
template <class Req, class Resp>
class Coordinator::Impl::AsyncCall final : public QueueEvent, public Reply {
 public:
  using RequestFn = void (Impl::*)(grpc::ServerContext*, Req*,
                                   grpc::ServerAsyncResponseWriter<Resp>*, grpc::CompletionQueue*,
                                   grpc::ServerCompletionQueue*, void*);
  using HandleFn = void (Impl::*)(const grpc::ServerContextBase*, const Req*, Resp*, Reply*);

  AsyncCall(Impl* impl, grpc::ServerCompletionQueue* cq, RequestFn request, HandleFn handle)
      : impl_(impl), cq_(cq), request_(request), handle_(handle) {
    (impl_->*request_)(&ctx_, &req_, &writer_, cq_, cq_, static_cast<QueueEvent*>(this));
  }

  void proceed(bool ok) override {
    if (!arrived_ && ok) {
      arrived_ = true;
      new AsyncCall(impl_, cq_, request_, handle_);
      (impl_->*handle_)(&ctx_, &req_, &resp_, this);  // `this` may be answered (not deleted)
      return;
    }
    delete this;  // answered, or the queue shut down
  }

  void send(const grpc::Status& st) override {
    writer_.Finish(resp_, st, static_cast<QueueEvent*>(this));
  }

 private:
  Impl* impl_;
  grpc::ServerCompletionQueue* cq_;
  RequestFn request_;
  HandleFn handle_;
  grpc::ServerContext ctx_;
  Req req_;
  Resp resp_;
  grpc::ServerAsyncResponseWriter<Resp> writer_{&ctx_};
  bool arrived_ = false;
};

void Coordinator::Impl::request_waits(grpc::ServerCompletionQueue* cq) {
  for (int i = 0; i < kRequestsPerQueue; ++i) request_waits_once(cq);
}

void Coordinator::Impl::request_waits_once(grpc::ServerCompletionQueue* cq) {
  new AsyncCall<proto::JoinRequest, proto::JoinResponse>(this, cq, &Impl::RequestJoin, &Impl::join);
  new AsyncCall<proto::JoinNodeRequest, proto::JoinNodeResponse>(this, cq, &Impl::RequestJoinNode,
                                                                 &Impl::join_node);
  new AsyncCall<proto::BarrierRequest, proto::Empty>(this, cq, &Impl::RequestBarrier,
                                                     &Impl::barrier);
  new AsyncCall<proto::NodeBarrierRequest, proto::Empty>(this, cq, &Impl::RequestNodeBarrier,
                                                         &Impl::node_barrier);
}

// ---- Watch -----------------------------------------------------------------------------

class Coordinator::Impl::WatchReactor final : public grpc::ServerWriteReactor<proto::WatchEvent> {
 public:
  explicit WatchReactor(Impl* impl) : impl_(impl) {}
  // Called at most once, after the reactor left watches_ (or never entered it).
  void end(const std::optional<proto::WatchEvent>& event) {
    if (event) {
      event_ = *event;
      StartWriteAndFinish(&event_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      Finish(grpc::Status::OK);
    }
  }
  void OnCancel() override {
    // The client went away: finish unless end() already did.
    bool mine;
    {
      std::lock_guard<std::mutex> lock(impl_->mu_);
      mine = impl_->watches_.erase(this) > 0;
    }
    if (mine) Finish(grpc::Status::CANCELLED);
  }
  void OnDone() override { delete this; }

 private:
  Impl* impl_;
  proto::WatchEvent event_;
};

grpc::ServerWriteReactor<proto::WatchEvent>* Coordinator::Impl::Watch(
    grpc::CallbackServerContext* ctx, const proto::WatchRequest*) {
  auto* w = new WatchReactor(this);  // deletes itself in OnDone (gRPC callback API ownership)
  if (!authorized(ctx, "Watch")) {
    w->Finish(unauthenticated());
    return w;
  }
  std::optional<proto::WatchEvent> event;
  bool end_now = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) {
      end_now = true;
    } else if (aborted_) {
      end_now = true;
      event.emplace();
      event->set_kind(proto::WatchEvent::ABORT);
      event->set_reason(abort_reason_);
      event->set_round(round_);
    } else {
      watches_.insert(w);
    }
  }
  if (end_now) w->end(event);
  return w;
}

void Coordinator::Impl::end_watches(std::optional<proto::WatchEvent> event) {
  std::vector<WatchReactor*> ending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (event && event->round() == 0) event->set_round(round_);
    ending.assign(watches_.begin(), watches_.end());
    watches_.clear();
  }
  // Outside mu_: a reactor's OnCancel takes mu_. Leaving watches_ first makes end() the only
  // Finish of each reactor.
  for (auto* w : ending) w->end(event);
}

// ---- StreamLogs ------------------------------------------------------------------------

class Coordinator::Impl::LogReactor final : public grpc::ServerReadReactor<proto::LogBatch> {
 public:
  explicit LogReactor(Impl* impl) : impl_(impl) {}
  void begin() { StartRead(&batch_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    if (impl_->ev_.on_log) {
      for (const auto& l : batch_.lines()) {
        LogLineView line{l.node(), l.rank(), l.time_us(), l.stderr(), l.text()};
        impl_->ev_.on_log(line);
      }
    }
    batch_.Clear();
    StartRead(&batch_);
  }
  void OnDone() override { delete this; }

 private:
  Impl* impl_;
  proto::LogBatch batch_;
};

grpc::ServerReadReactor<proto::LogBatch>* Coordinator::Impl::StreamLogs(
    grpc::CallbackServerContext* ctx, proto::Empty*) {
  auto* r = new LogReactor(this);  // deletes itself in OnDone
  if (!authorized(ctx, "StreamLogs"))
    r->Finish(unauthenticated());
  else
    r->begin();
  return r;
}

// ---- Coordinator -----------------------------------------------------------------------

Coordinator::Coordinator(CoordinatorOptions options, CoordinatorEvents events)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(events))) {}
Coordinator::~Coordinator() {
  impl_->stop();
}
void Coordinator::start() {
  impl_->start();
}
int Coordinator::port() const {
  return impl_->port();
}
std::string Coordinator::address() const {
  return impl_->address();
}
void Coordinator::expect(int rank, std::string node) {
  impl_->expect(rank, std::move(node));
}
void Coordinator::abort(const std::string& reason) {
  impl_->abort(reason);
}
void Coordinator::begin_round(int round) {
  impl_->begin_round(round);
}
void Coordinator::reshape(int world_size, MeshShape mesh, std::string spec_yaml) {
  impl_->reshape(world_size, mesh, std::move(spec_yaml));
}
int Coordinator::round() const {
  return impl_->round();
}
std::vector<int> Coordinator::missing_ranks() const {
  return impl_->missing_ranks();
}
std::vector<int> Coordinator::joined_ranks() const {
  return impl_->joined_ranks();
}
Store& Coordinator::store() {
  return impl_->store();
}
CoordinatorStats Coordinator::stats() const {
  return impl_->stats();
}

}  // namespace ptrain::rendezvous
