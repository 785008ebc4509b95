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
#include <unordered_set>

#include "grpc_common.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/token.h"
#include "server_store.h"
#include "timer_queue.h"

namespace ptrain::rendezvous {

using detail::ServerStore;
using detail::TimerQueue;
using detail::WaitOutcome;

namespace {

// The server ends a wait this long before the client's deadline, so the client gets our message.
constexpr Millis kDeadlineMargin{200};

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

class Coordinator::Impl final : public proto::Coordinator::CallbackService {
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
  }

  ~Impl() override { stop(); }

  void start() {
    detail::route_grpc_logs();
    std::string listen = detail::host_port(opt_.bind, opt_.port);
    grpc::ServerBuilder builder;
    detail::configure_coordinator_server(
        builder, listen, &port_, opt_.token,
        [this](const char* why) { count_rejected("a call (on its headers)", "a client", why); });
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) {
      server_.reset();
      throw IoError(
          fmt::format("cannot listen on {}: {}", listen, bind_failure(opt_.bind, opt_.port)),
          opt_.port ? "choose another rendezvous.port, or 0 to let the kernel pick"
                    : "check rendezvous.bind");
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
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + Millis(1000));
      server_->Wait();
      server_.reset();
    }
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
      members_.clear();
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

  std::vector<int> missing_ranks() const {
    std::lock_guard<std::mutex> lock(mu_);
    return missing_locked();
  }

  std::vector<int> joined_ranks() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<int> out;
    for (const auto& [rank, m] : members_) out.push_back(rank);
    return out;
  }

  Store& store() { return store_; }

  // ---- gRPC handlers -------------------------------------------------------------------

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* ctx, const proto::JoinRequest* req,
                                 proto::JoinResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Join")) return finish(reactor, unauthenticated());
    std::vector<std::pair<grpc::ServerUnaryReactor*, grpc::Status>> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto st = refuse_locked(); !st.ok()) return finish(reactor, st);
      int rank = req->rank();
      int total = opt_.world_size + opt_.extra_roles;
      bool server_role = req->role() == "server";
      if (!req->role().empty() && req->role() != "worker" && !server_role)
        return finish(reactor, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                            fmt::format("unknown role '{}' (worker or server)",
                                                        req->role())));
      int lo = server_role ? opt_.world_size : 0, hi = server_role ? total : opt_.world_size;
      if (rank < lo || rank >= hi)
        return finish(
            reactor, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                  fmt::format("rank {} is out of range for role {}: [{}, {})", rank,
                                              server_role ? "server" : "worker", lo, hi)));
      if (req->round() != round_)
        return finish(reactor, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                            fmt::format("Join for round {} but the coordinator "
                                                        "is in round {}",
                                                        req->round(), round_)));
      if (auto it = members_.find(rank); it != members_.end())
        return finish(reactor,
                      grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                   fmt::format("rank {} already joined round {} from {} pid {}; "
                                               "this Join came from {} pid {}",
                                               rank, round_, it->second.node, it->second.pid,
                                               req->node(), req->pid())));
      Member& m = members_[rank];
      m.node = req->node();
      m.pid = req->pid();
      m.last_seen = Clock::now();
      auto pending = std::make_shared<Pending>();
      pending->reactor = reactor;
      pending->join_response = resp;
      pending->rank = rank;
      if (static_cast<int>(members_.size()) == total) {
        rendezvous_done_ = true;
        auto now = Clock::now();
        for (auto& [r, mem] : members_) mem.last_seen = now;
        pending_joins_.push_back(pending);
        for (auto& p : pending_joins_) {
          p->finished = true;
          if (p->timer) timers_.cancel(p->timer);
          fill_join_locked(p->rank, *p->join_response);
          done.emplace_back(p->reactor, grpc::Status::OK);
        }
        pending_joins_.clear();
      } else {
        pending_joins_.push_back(pending);
        auto deadline = wait_deadline(ctx, opt_.join_timeout);
        std::weak_ptr<Pending> weak = pending;
        pending->timer = timers_.schedule(deadline, [this, weak] {
          if (auto p = weak.lock()) join_timed_out(p);
        });
      }
    }
    for (auto& [r, st] : done) r->Finish(st);
    return reactor;
  }

  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const proto::HeartbeatRequest* req,
                                      proto::HeartbeatResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Heartbeat")) return finish(reactor, unauthenticated());
    std::lock_guard<std::mutex> lock(mu_);
    if (req->round() == round_) {
      if (auto it = members_.find(req->rank()); it != members_.end()) {
        it->second.last_seen = Clock::now();
        it->second.hang_reported = false;
      }
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
      if (auto it = members_.find(req->rank()); it != members_.end()) it->second.left = true;
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
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "Get")) return finish(reactor, unauthenticated());
    store_.wait_async({req->key()}, wait_deadline(ctx, Millis(req->timeout_ms())),
                      [reactor, resp](WaitOutcome out) {
                        if (out.code == WaitOutcome::Code::Ok)
                          resp->set_value(std::move(out.values[0]));
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
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx, "MultiGet")) return finish(reactor, unauthenticated());
    store_.wait_async({req->keys().begin(), req->keys().end()},
                      wait_deadline(ctx, Millis(req->timeout_ms())),
                      [reactor, resp](WaitOutcome out) {
                        if (out.code == WaitOutcome::Code::Ok)
                          for (auto& v : out.values) resp->add_values(std::move(v));
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

  grpc::ServerUnaryReactor* Barrier(grpc::CallbackServerContext* ctx,
                                    const proto::BarrierRequest* req, proto::Empty*) override;

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
  struct Member {
    std::string node;
    int64_t pid = 0;
    Clock::time_point last_seen;
    bool hang_reported = false;
    bool left = false;
  };
  // A unary call that waits for others (Join, Barrier); finished exactly once under mu_.
  struct Pending {
    grpc::ServerUnaryReactor* reactor = nullptr;
    proto::JoinResponse* join_response = nullptr;
    int rank = 0;
    std::string barrier;
    TimerQueue::Id timer = 0;
    bool finished = false;
  };
  struct BarrierState {
    int count = 0;
    std::set<int> arrived;
    std::vector<std::shared_ptr<Pending>> waiting;
  };

  static grpc::ServerUnaryReactor* finish(grpc::ServerUnaryReactor* r, const grpc::Status& st) {
    r->Finish(st);
    return r;
  }

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

  bool authorized(grpc::CallbackServerContext* ctx, const char* method) {
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
  static Clock::time_point wait_deadline(grpc::CallbackServerContext* ctx, Millis timeout) {
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
      if (!members_.count(r)) out.push_back(r);
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

  void join_timed_out(const std::shared_ptr<Pending>& p) {
    grpc::Status st;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (p->finished) return;
      p->finished = true;
      std::erase(pending_joins_, p);
      auto missing = missing_locked();
      int total = opt_.world_size + opt_.extra_roles;
      st = grpc::Status(
          grpc::StatusCode::DEADLINE_EXCEEDED,
          fmt::format("rendezvous timed out after {:.3g} s: {} of {} ranks joined; missing "
                      "rank{} {}",
                      opt_.join_timeout.count() / 1000.0, total - missing.size(), total,
                      missing.size() == 1 ? "" : "s", list_ranks(missing, expected_nodes_)));
    }
    p->reactor->Finish(st);
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
        std::vector<int> missing;
        for (int r = 0; r < b.count; ++r)
          if (!b.arrived.count(r)) missing.push_back(r);
        detail = fmt::format("{} of {} arrived", b.arrived.size(), b.count);
        if (b.arrived.size() + missing.size() == static_cast<size_t>(b.count))
          detail += fmt::format("; missing rank{} {}", missing.size() == 1 ? "" : "s",
                                list_ranks(missing, expected_nodes_));
        // The caller stops waiting, so it no longer counts as arrived.
        b.arrived.erase(p->rank);
        std::erase(b.waiting, p);
        if (b.waiting.empty()) barriers_.erase(it);
      }
      st = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        fmt::format("barrier '{}' timed out after {} ms: {}", p->barrier,
                                    timeout.count(), detail));
    }
    p->reactor->Finish(st);
  }

  // Fails every pending Join and Barrier with st.
  void fail_pending(const grpc::Status& st, bool /*shutdown*/) {
    std::vector<grpc::ServerUnaryReactor*> reactors;
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
    for (auto* r : reactors) r->Finish(st);
  }

  void end_watches(std::optional<proto::WatchEvent> event);

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
      for (auto& [rank, m] : members_) {
        if (m.left || m.hang_reported) continue;
        auto silent = std::chrono::duration_cast<Millis>(now - m.last_seen);
        if (silent < opt_.heartbeat_timeout) continue;
        m.hang_reported = true;
        hung.emplace_back(rank, fmt::format("rank {} ({} pid {}) sent no heartbeat for {:.3g} s",
                                            rank, m.node, m.pid, silent.count() / 1000.0));
      }
    }
    if (ev_.on_hang)
      for (auto& [rank, why] : hung) ev_.on_hang(rank, why);
  }

  CoordinatorOptions opt_;
  CoordinatorEvents ev_;
  TimerQueue timers_;  // before store_ and server_: both use it until they stop
  ServerStore store_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<uint64_t> rejected_{0};

  mutable std::mutex mu_;
  bool stopped_ = false;
  int round_ = 0;
  bool aborted_ = false;
  std::string abort_reason_;
  bool rendezvous_done_ = false;
  std::map<int, Member> members_;
  std::map<int, std::string> expected_nodes_;
  std::vector<std::shared_ptr<Pending>> pending_joins_;
  std::map<std::string, BarrierState> barriers_;
  std::unordered_set<WatchReactor*> watches_;
};

// ---- Barrier ---------------------------------------------------------------------------

grpc::ServerUnaryReactor* Coordinator::Impl::Barrier(grpc::CallbackServerContext* ctx,
                                                     const proto::BarrierRequest* req,
                                                     proto::Empty*) {
  auto* reactor = ctx->DefaultReactor();
  if (!authorized(ctx, "Barrier")) return finish(reactor, unauthenticated());
  std::vector<grpc::ServerUnaryReactor*> release;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto st = refuse_locked(); !st.ok()) return finish(reactor, st);
    if (req->count() < 1)
      return finish(reactor, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                          fmt::format("barrier '{}': count must be >= 1, got {}",
                                                      req->name(), req->count())));
    BarrierState& b = barriers_[req->name()];
    if (b.count == 0) b.count = req->count();
    if (b.count != req->count())
      return finish(reactor,
                    grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 fmt::format("barrier '{}': rank {} expects {} "
                                             "participants, others expect {}",
                                             req->name(), req->rank(), req->count(), b.count)));
    if (!b.arrived.insert(req->rank()).second)
      return finish(reactor, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                          fmt::format("barrier '{}': rank {} arrived twice",
                                                      req->name(), req->rank())));
    auto p = std::make_shared<Pending>();
    p->reactor = reactor;
    p->rank = req->rank();
    p->barrier = req->name();
    if (static_cast<int>(b.arrived.size()) == b.count) {
      for (auto& w : b.waiting) {
        w->finished = true;
        if (w->timer) timers_.cancel(w->timer);
        release.push_back(w->reactor);
      }
      release.push_back(reactor);
      barriers_.erase(req->name());
    } else {
      b.waiting.push_back(p);
      Millis timeout(req->timeout_ms());
      std::weak_ptr<Pending> weak = p;
      p->timer = timers_.schedule(wait_deadline(ctx, timeout), [this, weak, timeout] {
        if (auto sp = weak.lock()) barrier_timed_out(sp, timeout);
      });
    }
  }
  for (auto* r : release) r->Finish(grpc::Status::OK);
  return reactor;
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

}  // namespace ptrain::rendezvous
