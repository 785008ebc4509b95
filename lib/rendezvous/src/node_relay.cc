// NodeRelay: batches a node's Joins, barrier arrivals and heartbeats into node-level RPCs.
#include "ptrain/rendezvous/node_relay.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "grpc_common.h"
#include "ptrain/core/error.h"
#include "timer_queue.h"

namespace ptrain::rendezvous {

namespace {

constexpr Millis kWatchReopen{std::chrono::hours(1)};

RelayStatus from_grpc(const grpc::Status& st) {
  return {static_cast<int>(st.error_code()), st.error_message()};
}

JoinResult result_of(int rank, const proto::JoinNodeResponse& r) {
  JoinResult out;
  out.rank = rank;
  out.world_size = r.world_size();
  out.mesh = {r.mesh().dp(), r.mesh().tp(), r.mesh().pp()};
  if (rank < out.world_size) out.coords = coords_of(rank, out.mesh);
  out.run_id = r.run_id();
  out.run_dir = r.run_dir();
  out.spec_yaml = r.spec_yaml();
  out.round = r.round();
  return out;
}

JoinResult result_of(const proto::JoinResponse& r) {
  JoinResult out;
  out.rank = r.rank();
  out.world_size = r.world_size();
  out.mesh = {r.mesh().dp(), r.mesh().tp(), r.mesh().pp()};
  out.coords = {r.coords().dp(), r.coords().tp(), r.coords().pp()};
  out.run_id = r.run_id();
  out.run_dir = r.run_dir();
  out.spec_yaml = r.spec_yaml();
  out.round = r.round();
  return out;
}

}  // namespace

class NodeRelay::Impl : public std::enable_shared_from_this<NodeRelay::Impl> {
 public:
  Impl(std::shared_ptr<detail::Connection> conn, std::shared_ptr<detail::TimerQueue> timers,
       NodeRelayOptions opt)
      : conn_(std::move(conn)), timers_(std::move(timers)), opt_(std::move(opt)) {
    for (int r : opt_.ranks) local_.insert(r);
  }

  // Ends every upward call in flight (their local callers get CANCELLED).
  void cancel_calls() {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    for (auto* c : in_flight_) c->TryCancel();
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      if (watch_ctx_) watch_ctx_->TryCancel();
      for (auto* c : in_flight_) c->TryCancel();
    }
    beat_cv_.notify_all();
    if (beat_thread_.joinable()) beat_thread_.join();
    if (watch_thread_.joinable()) watch_thread_.join();
  }

  // ---- Join ----------------------------------------------------------------------------

  void join(const JoinRequestView& req, JoinDone done) {
    if (req.round != opt_.round || !local_.count(req.rank) || req.role != "worker") {
      join_direct(req, std::move(done));  // not one of this node's ranks: the flat path
      return;
    }
    JoinBatch batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!joined_.insert(req.rank).second) {
        RelayStatus st{static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION),
                       fmt::format("rank {} already joined round {} on {}; this Join came from "
                                   "pid {}",
                                   req.rank, opt_.round, opt_.node, req.pid)};
        done(st, JoinResult{});
        return;
      }
      unsent_joins_.push_back({req, std::move(done)});
      batch = take_joins_if_ready_locked();
    }
    if (!batch.empty()) send_join_node(std::move(batch));
  }

  void join_subtree(const proto::JoinNodeRequest& req, Millis timeout, SubtreeJoinDone done) {
    JoinBatch batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++counters_.subtree_joins;
      children_seen_.insert(req.node_rank());
      subtree_ranks_ += req.ranks_size();
      for (const auto& sub : req.subtree()) subtree_ranks_ += sub.ranks_size();
      unsent_children_.push_back({req, timeout, std::move(done)});
      batch = take_joins_if_ready_locked();
    }
    if (!batch.empty()) send_join_node(std::move(batch));
  }

  void flush_joins() {
    JoinBatch batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      join_timer_ = 0;
      batch = take_joins_locked();
    }
    if (!batch.empty()) send_join_node(std::move(batch));
  }

  // ---- Barrier -------------------------------------------------------------------------

  void barrier(const std::string& name, int rank, int count, Millis timeout, Done done) {
    arrive(name, {rank}, count, timeout, std::move(done), false);
  }

  void barrier_subtree(const std::string& name, std::vector<int> ranks, int count, Millis timeout,
                       Done done) {
    arrive(name, std::move(ranks), count, timeout, std::move(done), true);
  }

  void arrive(const std::string& name, std::vector<int> ranks, int count, Millis timeout, Done done,
              bool subtree) {
    std::vector<Arrival> batch;
    int batch_count = count;
    Millis batch_timeout = timeout;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (subtree) ++counters_.subtree_barriers;
      BarrierBatch& b = barriers_[name];
      if (b.arrived == 0) {
        b.count = count;
        b.timeout = timeout;
      }
      b.arrived += static_cast<int>(ranks.size());
      b.unsent.push_back({std::move(ranks), std::move(done)});
      // Complete for this node: every local rank and every rank of the subtree below it is in,
      // or the barrier needs no more than that.
      if (b.arrived >= static_cast<int>(local_.size()) + subtree_ranks_ || b.arrived >= b.count) {
        if (b.timer) timers_->cancel(b.timer);
        b.timer = 0;
        batch = take_barrier_locked(b);
        batch_count = b.count;
        batch_timeout = b.timeout;
      } else if (!b.timer) {
        std::weak_ptr<Impl> weak = shared_from_this();
        b.timer = timers_->schedule(Clock::now() + opt_.batch_window, [weak, name] {
          if (auto self = weak.lock()) self->flush_barrier(name);
        });
      }
    }
    if (!batch.empty()) send_node_barrier(name, batch_count, batch_timeout, std::move(batch));
  }

  void flush_barrier(const std::string& name) {
    std::vector<Arrival> batch;
    int count = 0;
    Millis timeout{0};
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = barriers_.find(name);
      if (it == barriers_.end()) return;
      it->second.timer = 0;
      batch = take_barrier_locked(it->second);
      count = it->second.count;
      timeout = it->second.timeout;
    }
    if (!batch.empty()) send_node_barrier(name, count, timeout, std::move(batch));
  }

  // ---- Heartbeats ----------------------------------------------------------------------

  HeartbeatReply heartbeat(int rank, int64_t step, int round) {
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.local_heartbeats;
    if (round == opt_.round) beats_[rank] = {step, Clock::now()};
    return {aborted_, abort_reason_};
  }

  HeartbeatReply heartbeat_subtree(const proto::NodeHeartbeatRequest& req) {
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.subtree_heartbeats;
    if (req.round() == opt_.round) {
      auto now = Clock::now();
      for (const auto& b : req.ranks())
        beats_[b.rank()] = {b.step(), now - Millis(std::max<int64_t>(b.age_ms(), 0))};
    }
    return {aborted_, abort_reason_};
  }

  void flush_heartbeat() {
    auto call = std::make_shared<BeatCall>();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (beat_in_flight_ || stopping_) return;
      beat_in_flight_ = true;
      ++counters_.upward_heartbeats;
      auto now = Clock::now();
      call->req.set_node(opt_.node);
      call->req.set_round(opt_.round);
      for (const auto& [rank, b] : beats_) {
        auto* rb = call->req.add_ranks();
        rb->set_rank(rank);
        rb->set_step(b.step);
        rb->set_age_ms(std::chrono::duration_cast<Millis>(now - b.seen).count());
      }
    }
    if (opt_.parent) {
      HeartbeatReply reply = opt_.parent->heartbeat_subtree(call->req);
      std::lock_guard<std::mutex> lock(mu_);
      beat_in_flight_ = false;
      if (reply.abort && !aborted_) {
        aborted_ = true;
        abort_reason_ = reply.reason;
      }
      return;
    }
    begin_call(call->ctx, opt_.rpc_deadline);
    auto self = shared_from_this();
    conn_->stub().async()->NodeHeartbeat(&call->ctx, &call->req, &call->resp,
                                         [self, call](grpc::Status st) {
                                           self->end_call(call->ctx);
                                           std::lock_guard<std::mutex> lock(self->mu_);
                                           self->beat_in_flight_ = false;
                                           if (st.ok() && call->resp.abort() && !self->aborted_) {
                                             self->aborted_ = true;
                                             self->abort_reason_ = call->resp.reason();
                                           }
                                         });
  }

  void start_heartbeats(Millis period) {
    std::lock_guard<std::mutex> lock(mu_);
    PTRAIN_CHECK(!beat_thread_.joinable(), "NodeRelay::start_heartbeats called twice");
    beat_thread_ = std::thread([this, period] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!beat_cv_.wait_for(lock, period, [this] { return stopping_; })) {
        lock.unlock();
        flush_heartbeat();
        lock.lock();
      }
    });
  }

  // ---- Store ---------------------------------------------------------------------------

  void get(const std::string& key, Millis timeout,
           std::function<void(const RelayStatus&, const std::string&)> done) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++counters_.local_gets;
      auto [it, first] = gets_.try_emplace(key);
      it->second.push_back(std::move(done));
      if (!first) return;  // the call in flight answers this one too
      ++counters_.upward_gets;
    }
    auto call = std::make_shared<GetCall>();
    call->req.set_key(key);
    call->req.set_timeout_ms(timeout.count());
    begin_call(call->ctx, timeout + opt_.rpc_deadline);
    auto self = shared_from_this();
    conn_->stub().async()->Get(
        &call->ctx, &call->req, &call->resp, [self, call, key](grpc::Status st) {
          self->end_call(call->ctx);
          std::vector<std::function<void(const RelayStatus&, const std::string&)>> waiting;
          {
            std::lock_guard<std::mutex> lock(self->mu_);
            auto it = self->gets_.find(key);
            if (it != self->gets_.end()) {
              waiting = std::move(it->second);
              self->gets_.erase(it);
            }
          }
          RelayStatus rs = from_grpc(st);
          for (auto& w : waiting) w(rs, call->resp.value());
        });
  }

  // ---- Watch ---------------------------------------------------------------------------

  int watch(std::function<void(const WatchEventView&)> on_event) {
    std::optional<WatchEventView> now;
    int id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      id = next_watch_++;
      if (final_event_) {
        now = final_event_;
      } else {
        watchers_[id] = std::move(on_event);
        if (!watch_thread_.joinable()) watch_thread_ = std::thread([this] { watch_loop(); });
      }
    }
    if (now) on_event(*now);
    return id;
  }

  void unwatch(int id) {
    std::lock_guard<std::mutex> lock(mu_);
    watchers_.erase(id);
  }

  Counters counters() const {
    std::lock_guard<std::mutex> lock(mu_);
    return counters_;
  }

  const NodeRelayOptions& options() const { return opt_; }
  detail::Connection& upstream() { return *conn_; }

 private:
  struct LocalJoin {
    JoinRequestView req;
    JoinDone done;
  };
  struct ChildJoin {
    proto::JoinNodeRequest req;
    Millis timeout;
    SubtreeJoinDone done;
  };
  struct JoinBatch {
    std::vector<LocalJoin> local;
    std::vector<ChildJoin> children;
    bool empty() const { return local.empty() && children.empty(); }
  };
  struct JoinCall {
    grpc::ClientContext ctx;
    proto::JoinNodeRequest req;
    proto::JoinNodeResponse resp;
    JoinBatch joins;
  };
  // Ranks that arrive at a barrier together: one local rank, or a child relay's batch.
  struct Arrival {
    std::vector<int> ranks;
    Done done;
  };
  struct DirectJoinCall {
    grpc::ClientContext ctx;
    proto::JoinRequest req;
    proto::JoinResponse resp;
  };
  struct BarrierBatch {
    int count = 0;
    Millis timeout{0};
    int arrived = 0;    // local arrivals so far
    int in_flight = 0;  // NodeBarrier calls not answered yet
    std::vector<Arrival> unsent;
    detail::TimerQueue::Id timer = 0;
  };
  struct BarrierCall {
    grpc::ClientContext ctx;
    proto::NodeBarrierRequest req;
    proto::Empty resp;
    std::vector<Arrival> arrivals;
  };
  struct BeatCall {
    grpc::ClientContext ctx;
    proto::NodeHeartbeatRequest req;
    proto::HeartbeatResponse resp;
  };
  struct GetCall {
    grpc::ClientContext ctx;
    proto::GetRequest req;
    proto::GetResponse resp;
  };
  struct Beat {
    int64_t step = 0;
    Clock::time_point seen;
  };

  // Sets the deadline and token of an upward call and tracks it until end_call.
  void begin_call(grpc::ClientContext& ctx, Millis deadline) {
    conn_->prepare(ctx, deadline);
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_.insert(&ctx);
    if (cancelled_) ctx.TryCancel();
  }
  void end_call(grpc::ClientContext& ctx) {
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_.erase(&ctx);
  }

  JoinBatch take_joins_locked() {
    if (join_timer_) timers_->cancel(join_timer_);
    join_timer_ = 0;
    return {std::move(unsent_joins_), std::move(unsent_children_)};
  }

  // Every local rank and every child relay has joined at least once: send what waits now.
  // Otherwise the batch goes upward when the window ends.
  JoinBatch take_joins_if_ready_locked() {
    if (joined_.size() == local_.size() &&
        static_cast<int>(children_seen_.size()) >= opt_.tree_children)
      return take_joins_locked();
    if (!join_timer_) {
      std::weak_ptr<Impl> weak = shared_from_this();
      Millis window = opt_.tree_children > 0 ? std::max(opt_.batch_window, opt_.tree_window)
                                             : opt_.batch_window;
      join_timer_ = timers_->schedule(Clock::now() + window, [weak] {
        if (auto self = weak.lock()) self->flush_joins();
      });
    }
    return {};
  }

  std::vector<Arrival> take_barrier_locked(BarrierBatch& b) {
    if (!b.unsent.empty()) ++b.in_flight;
    return std::move(b.unsent);
  }

  // The ranks a JoinNode request names, in the order its answer lists them.
  static void add_joined_ranks(const proto::JoinNodeRequest& req, proto::JoinNodeResponse& resp) {
    for (const auto& r : req.ranks()) resp.add_ranks(r.rank());
    for (const auto& sub : req.subtree())
      for (const auto& r : sub.ranks()) resp.add_ranks(r.rank());
  }

  void send_join_node(JoinBatch batch) {
    auto call = std::make_shared<JoinCall>();
    call->req.set_node(opt_.node);
    call->req.set_node_rank(opt_.node_rank);
    call->req.set_round(opt_.round);
    Millis timeout{0};
    for (const auto& j : batch.local) {
      auto* r = call->req.add_ranks();
      r->set_rank(j.req.rank);
      r->set_local_rank(j.req.local_rank);
      r->set_pid(j.req.pid);
      timeout = std::max(timeout, j.req.timeout);
    }
    // The subtree stays flat: a child's own entry, then the entries it carries.
    for (const auto& c : batch.children) {
      auto* e = call->req.add_subtree();
      e->set_node(c.req.node());
      e->set_node_rank(c.req.node_rank());
      e->set_round(c.req.round());
      *e->mutable_ranks() = c.req.ranks();
      for (const auto& sub : c.req.subtree()) *call->req.add_subtree() = sub;
      timeout = std::max(timeout, c.timeout);
    }
    call->joins = std::move(batch);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++counters_.upward_joins;
    }
    auto answer = [call](const RelayStatus& rs) {
      for (auto& j : call->joins.local) {
        JoinResult res = rs.ok() ? result_of(j.req.rank, call->resp) : JoinResult{};
        j.done(rs, res);
      }
      for (auto& c : call->joins.children) {
        proto::JoinNodeResponse resp;
        if (rs.ok()) {
          resp = call->resp;
          resp.clear_ranks();
          add_joined_ranks(c.req, resp);
        }
        c.done(rs, resp);
      }
    };
    if (opt_.parent) {
      opt_.parent->join_subtree(
          call->req, timeout,
          [call, answer](const RelayStatus& rs, const proto::JoinNodeResponse& resp) {
            call->resp = resp;
            answer(rs);
          });
      return;
    }
    begin_call(call->ctx, timeout);
    auto self = shared_from_this();
    conn_->stub().async()->JoinNode(&call->ctx, &call->req, &call->resp,
                                    [self, call, answer](grpc::Status st) {
                                      self->end_call(call->ctx);
                                      answer(from_grpc(st));
                                    });
  }

  void join_direct(const JoinRequestView& req, JoinDone done) {
    auto call = std::make_shared<DirectJoinCall>();
    call->req.set_rank(req.rank);
    call->req.set_node(req.node);
    call->req.set_node_rank(req.node_rank);
    call->req.set_local_rank(req.local_rank);
    call->req.set_pid(req.pid);
    call->req.set_round(req.round);
    call->req.set_role(req.role);
    begin_call(call->ctx, req.timeout);
    auto self = shared_from_this();
    conn_->stub().async()->Join(
        &call->ctx, &call->req, &call->resp, [self, call, done = std::move(done)](grpc::Status st) {
          self->end_call(call->ctx);
          done(from_grpc(st), st.ok() ? result_of(call->resp) : JoinResult{});
        });
  }

  void send_node_barrier(const std::string& name, int count, Millis timeout,
                         std::vector<Arrival> batch) {
    auto call = std::make_shared<BarrierCall>();
    call->req.set_name(name);
    call->req.set_count(count);
    call->req.set_timeout_ms(timeout.count());
    for (const auto& a : batch)
      for (int rank : a.ranks) call->req.add_ranks(rank);
    call->arrivals = std::move(batch);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++counters_.upward_barriers;
    }
    auto self = shared_from_this();
    auto answer = [self, call, name](const RelayStatus& rs) {
      {
        std::lock_guard<std::mutex> lock(self->mu_);
        auto it = self->barriers_.find(name);
        // Done with this name once nothing is in flight or waiting: it may be used again.
        if (it != self->barriers_.end() && --it->second.in_flight == 0 &&
            it->second.unsent.empty()) {
          if (it->second.timer) self->timers_->cancel(it->second.timer);
          self->barriers_.erase(it);
        }
      }
      for (auto& a : call->arrivals) a.done(rs);
    };
    if (opt_.parent) {
      std::vector<int> ranks(call->req.ranks().begin(), call->req.ranks().end());
      opt_.parent->barrier_subtree(name, std::move(ranks), count, timeout, answer);
      return;
    }
    begin_call(call->ctx, timeout + opt_.rpc_deadline);
    conn_->stub().async()->NodeBarrier(&call->ctx, &call->req, &call->resp,
                                       [self, call, answer](grpc::Status st) {
                                         self->end_call(call->ctx);
                                         answer(from_grpc(st));
                                       });
  }

  void watch_loop() {
    for (;;) {
      grpc::ClientContext ctx;
      conn_->prepare(ctx, kWatchReopen);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
        watch_ctx_ = &ctx;
      }
      proto::WatchRequest req;
      req.set_rank(opt_.ranks.empty() ? -1 : opt_.ranks.front());
      auto reader = conn_->stub().Watch(&ctx, req);
      proto::WatchEvent event;
      std::optional<WatchEventView> view;
      while (!view && reader->Read(&event)) {
        if (event.kind() != proto::WatchEvent::ABORT && event.kind() != proto::WatchEvent::RESTART)
          continue;
        view.emplace();
        view->kind = event.kind() == proto::WatchEvent::ABORT ? WatchEventView::Kind::Abort
                                                              : WatchEventView::Kind::Restart;
        view->reason = event.reason();
        view->round = event.round();
      }
      if (view) ctx.TryCancel();
      auto st = reader->Finish();
      {
        std::lock_guard<std::mutex> lock(mu_);
        watch_ctx_ = nullptr;
        if (stopping_) return;
      }
      if (!view && st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) continue;
      if (!view) {
        view.emplace();
        view->kind = WatchEventView::Kind::Closed;
        view->reason = st.ok()
                           ? fmt::format("the coordinator at {} closed the job", conn_->address())
                           : fmt::format("lost the coordinator at {}: {}", conn_->address(),
                                         st.error_message());
      }
      std::map<int, std::function<void(const WatchEventView&)>> watchers;
      {
        std::lock_guard<std::mutex> lock(mu_);
        final_event_ = view;
        if (view->kind == WatchEventView::Kind::Abort && !aborted_) {
          aborted_ = true;
          abort_reason_ = view->reason;
        }
        watchers.swap(watchers_);
      }
      for (auto& [id, fn] : watchers) fn(*view);
      return;
    }
  }

  std::shared_ptr<detail::Connection> conn_;
  std::shared_ptr<detail::TimerQueue> timers_;
  NodeRelayOptions opt_;
  std::unordered_set<int> local_;

  mutable std::mutex mu_;
  bool stopping_ = false;
  bool cancelled_ = false;
  std::unordered_set<grpc::ClientContext*> in_flight_;
  std::unordered_set<int> joined_;
  std::vector<LocalJoin> unsent_joins_;
  std::vector<ChildJoin> unsent_children_;
  std::unordered_set<int> children_seen_;  // node ranks of the child relays that joined
  int subtree_ranks_ = 0;                  // ranks joined through child relays
  detail::TimerQueue::Id join_timer_ = 0;
  std::map<std::string, BarrierBatch> barriers_;
  std::map<int, Beat> beats_;
  bool beat_in_flight_ = false;
  bool aborted_ = false;
  std::string abort_reason_;
  std::thread beat_thread_;
  std::condition_variable beat_cv_;
  std::unordered_map<std::string,
                     std::vector<std::function<void(const RelayStatus&, const std::string&)>>>
      gets_;
  std::map<int, std::function<void(const WatchEventView&)>> watchers_;
  std::optional<WatchEventView> final_event_;
  int next_watch_ = 1;
  grpc::ClientContext* watch_ctx_ = nullptr;
  std::thread watch_thread_;
  Counters counters_;
};

NodeRelay::NodeRelay(const std::string& address, const std::string& token, NodeRelayOptions options,
                     Millis connect_timeout) {
  auto conn = std::make_shared<detail::Connection>(address, token);
  conn->connect(connect_timeout);
  impl_ = std::make_shared<Impl>(std::move(conn), std::make_shared<detail::TimerQueue>(),
                                 std::move(options));
}

NodeRelay::NodeRelay(std::shared_ptr<detail::Connection> upstream,
                     std::shared_ptr<detail::TimerQueue> timers, NodeRelayOptions options)
    : impl_(std::make_shared<Impl>(std::move(upstream), std::move(timers), std::move(options))) {}

NodeRelay::~NodeRelay() {
  impl_->shutdown();
}

void NodeRelay::join(const JoinRequestView& request, JoinDone done) {
  impl_->join(request, std::move(done));
}
void NodeRelay::barrier(const std::string& name, int rank, int count, Millis timeout, Done done) {
  impl_->barrier(name, rank, count, timeout, std::move(done));
}
void NodeRelay::join_subtree(const proto::JoinNodeRequest& request, Millis timeout,
                             SubtreeJoinDone done) {
  impl_->join_subtree(request, timeout, std::move(done));
}
void NodeRelay::barrier_subtree(const std::string& name, std::vector<int> ranks, int count,
                                Millis timeout, Done done) {
  impl_->barrier_subtree(name, std::move(ranks), count, timeout, std::move(done));
}
HeartbeatReply NodeRelay::heartbeat_subtree(const proto::NodeHeartbeatRequest& request) {
  return impl_->heartbeat_subtree(request);
}
HeartbeatReply NodeRelay::heartbeat(int rank, int64_t step, int round) {
  return impl_->heartbeat(rank, step, round);
}
void NodeRelay::cancel_calls() {
  impl_->cancel_calls();
}
void NodeRelay::flush_heartbeat() {
  impl_->flush_heartbeat();
}
void NodeRelay::start_heartbeats(Millis period) {
  impl_->start_heartbeats(period);
}
void NodeRelay::get(const std::string& key, Millis timeout,
                    std::function<void(const RelayStatus&, const std::string&)> done) {
  impl_->get(key, timeout, std::move(done));
}
int NodeRelay::watch(std::function<void(const WatchEventView&)> on_event) {
  return impl_->watch(std::move(on_event));
}
void NodeRelay::unwatch(int id) {
  impl_->unwatch(id);
}
NodeRelay::Counters NodeRelay::counters() const {
  return impl_->counters();
}
const NodeRelayOptions& NodeRelay::options() const {
  return impl_->options();
}
detail::Connection& NodeRelay::upstream() {
  return impl_->upstream();
}

RelayTreePosition relay_tree_position(int node, int nodes, int fanout) {
  RelayTreePosition pos;
  if (fanout < 1 || nodes <= fanout || node < 0 || node >= nodes) return pos;
  if (node >= fanout) pos.parent = node / fanout - 1;
  // Children of node p: fanout * (p + 1) .. fanout * (p + 1) + fanout - 1, those that exist.
  int64_t first = static_cast<int64_t>(fanout) * (node + 1);
  int64_t end = std::min<int64_t>(nodes, first + fanout);
  pos.children = static_cast<int>(std::max<int64_t>(0, end - first));
  return pos;
}

std::string relay_tree_key(int round, int node) {
  return fmt::format("ptrain/relay-tree/{}/{}", round, node);
}

std::string relay_tree_listen(const std::string& coordinator) {
  std::string host = coordinator, port = "0";
  if (auto colon = coordinator.rfind(':'); colon != std::string::npos) {
    host = coordinator.substr(0, colon);
    port = coordinator.substr(colon + 1);
  }
  if (host.size() > 1 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0)
    throw IoError(fmt::format("node relay: cannot resolve the coordinator host '{}': {}", host,
                              ::gai_strerror(rc)));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, ::freeaddrinfo);
  // A connected UDP socket sends nothing; it only asks the kernel which source address it would
  // use on the route to the coordinator.
  int fd = ::socket(res->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw IoError(fmt::format("node relay: socket: {}", std::strerror(errno)));
  sockaddr_storage local{};
  socklen_t len = sizeof(local);
  int rc = ::connect(fd, res->ai_addr, res->ai_addrlen);
  if (rc == 0) rc = ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len);
  int err = errno;
  ::close(fd);
  if (rc != 0)
    throw IoError(fmt::format("node relay: no route to the coordinator host '{}': {}", host,
                              std::strerror(err)));
  char buf[INET6_ADDRSTRLEN] = {};
  if (local.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr, buf, sizeof(buf));
    return fmt::format("[{}]:0", buf);
  }
  ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&local)->sin_addr, buf, sizeof(buf));
  return fmt::format("{}:0", buf);
}

std::string private_socket_dir(const std::string& parent) {
  const uid_t uid = ::getuid();
  std::string dir = fmt::format("{}/ptrain-{}", parent, uid);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw IoError(fmt::format("cannot create the socket folder {}: {}", dir, std::strerror(errno)),
                  "check that " + parent + " is writable");
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0)
    throw IoError(fmt::format("cannot read the socket folder {}: {}", dir, std::strerror(errno)));
  // Another user may have made it first (to read or replace this user's sockets): refuse it.
  if (!S_ISDIR(st.st_mode) || st.st_uid != uid || (st.st_mode & 077) != 0)
    throw IoError(fmt::format("the socket folder {} is not a private folder of this user ({}, "
                              "owner uid {}, mode {:o})",
                              dir, S_ISDIR(st.st_mode) ? "a folder" : "not a folder", st.st_uid,
                              st.st_mode & 07777),
                  "remove it, or give the job a shorter logging.dir");
  return dir;
}

std::string relay_socket_path(const std::string& run_dir, int node_rank) {
  std::string path = fmt::format("{}/relay-{}.sock", run_dir, node_rank);
  // sun_path holds 108 bytes with the terminating zero.
  if (path.size() < 100) return path;
  return fmt::format("{}/relay-{}-{}.sock", private_socket_dir("/tmp"), ::getpid(), node_rank);
}

}  // namespace ptrain::rendezvous
