// RelayServer: the coordinator's gRPC service on a node-local unix socket, over a NodeRelay.
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "grpc_common.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/node_relay.h"
#include "ptrain/rendezvous/tls.h"
#include "ptrain/rendezvous/token.h"

namespace ptrain::rendezvous {

namespace {

grpc::Status to_grpc(const RelayStatus& st) {
  return grpc::Status(static_cast<grpc::StatusCode>(st.code), st.message);
}

// The time left of a server call, for the call it is forwarded as.
Millis time_left(grpc::CallbackServerContext* ctx, Millis fallback) {
  auto deadline = ctx->deadline();
  auto now = std::chrono::system_clock::now();
  if (deadline > now + std::chrono::hours(24 * 365)) return fallback;
  return std::max(Millis(1), std::chrono::duration_cast<Millis>(deadline - now));
}

}  // namespace

class RelayServer::Impl final : public proto::Coordinator::CallbackService {
 public:
  Impl(const std::string& coordinator, const std::string& token, NodeRelayOptions options,
       std::string socket_path, Millis heartbeat_period, const std::string& tree_listen)
      : token_(token),
        socket_path_(std::move(socket_path)),
        relay_(coordinator, token, std::move(options)) {
    std::error_code ec;
    std::filesystem::remove(socket_path_, ec);  // a previous round's socket
    grpc::ServerBuilder builder;
    int port = 0;
    // Local (UDS) credentials: the token is checked on the headers, as at the coordinator; the
    // handlers check it again. The upward channel is the coordinator client's (TLS with a job
    // identity).
    ServerLimits limits;
    limits.token = token_;
    limits.max_message_bytes = detail::kMaxMessageBytes;
    // Child relays of a relay tree send their whole subtree's calls over one connection each.
    limits.max_concurrent_streams = tree_listen.empty() ? 16 : detail::kMaxStreamsPerConnection;
    configure_server(builder, address(), &port, limits, &listeners_);
    int tree_port = 0;
    if (!tree_listen.empty())
      add_listening_port(builder, tree_listen, &tree_port, limits, &listeners_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    if (!server_)
      throw IoError(fmt::format("cannot listen on the node relay socket {}", socket_path_),
                    "check that the run folder is writable");
    if (!tree_listen.empty()) {
      if (tree_port == 0)
        throw IoError(
            fmt::format("the node relay cannot listen on {} for its child relays", tree_listen),
            "check the node's address (the one it reaches the coordinator from)");
      auto colon = tree_listen.rfind(':');
      tree_address_ = tree_listen.substr(0, colon) + ":" + std::to_string(tree_port);
    }
    if (heartbeat_period.count() > 0) relay_.start_heartbeats(heartbeat_period);
  }

  ~Impl() override;

  std::string address() const { return "unix:" + socket_path_; }
  const std::string& tree_address() const { return tree_address_; }
  NodeRelay& relay() { return relay_; }

  // ---- through the relay ---------------------------------------------------------------

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* ctx, const proto::JoinRequest* req,
                                 proto::JoinResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx)) return unauthenticated(reactor);
    JoinRequestView view;
    view.rank = req->rank();
    view.node = req->node();
    view.node_rank = req->node_rank();
    view.local_rank = req->local_rank();
    view.pid = req->pid();
    view.round = req->round();
    view.role = req->role().empty() ? "worker" : req->role();
    view.timeout = time_left(ctx, view.timeout);
    const NodeRelayOptions& ro = relay_.options();
    relay_.join(view,
                [reactor, resp,
                 upstream = ro.coordinator.empty() ? relay_.upstream().address() : ro.coordinator](
                    const RelayStatus& st, const JoinResult& r) {
                  if (st.ok()) {
                    resp->set_rank(r.rank);
                    resp->set_world_size(r.world_size);
                    resp->mutable_coords()->set_dp(r.coords.dp);
                    resp->mutable_coords()->set_tp(r.coords.tp);
                    resp->mutable_coords()->set_pp(r.coords.pp);
                    resp->mutable_mesh()->set_dp(r.mesh.dp);
                    resp->mutable_mesh()->set_tp(r.mesh.tp);
                    resp->mutable_mesh()->set_pp(r.mesh.pp);
                    resp->set_run_id(r.run_id);
                    resp->set_run_dir(r.run_dir);
                    resp->set_spec_yaml(r.spec_yaml);
                    resp->set_round(r.round);
                    resp->set_upstream(upstream);
                  }
                  reactor->Finish(to_grpc(st));
                });
    return reactor;
  }

  grpc::ServerUnaryReactor* Barrier(grpc::CallbackServerContext* ctx,
                                    const proto::BarrierRequest* req, proto::Empty*) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx)) return unauthenticated(reactor);
    relay_.barrier(req->name(), req->rank(), req->count(), Millis(req->timeout_ms()),
                   [reactor](const RelayStatus& st) { reactor->Finish(to_grpc(st)); });
    return reactor;
  }

  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const proto::HeartbeatRequest* req,
                                      proto::HeartbeatResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx)) return unauthenticated(reactor);
    auto reply = relay_.heartbeat(req->rank(), req->step(), req->round());
    resp->set_abort(reply.abort);
    resp->set_reason(reply.reason);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx, const proto::GetRequest* req,
                                proto::GetResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx)) return unauthenticated(reactor);
    relay_.get(req->key(), Millis(req->timeout_ms()),
               [reactor, resp](const RelayStatus& st, const std::string& value) {
                 if (st.ok()) resp->set_value(value);
                 reactor->Finish(to_grpc(st));
               });
    return reactor;
  }

  class WatchReactor;
  grpc::ServerWriteReactor<proto::WatchEvent>* Watch(grpc::CallbackServerContext* ctx,
                                                     const proto::WatchRequest* req) override;

  // ---- forwarded as they are -----------------------------------------------------------

  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* ctx, const proto::LeaveRequest* req,
                                  proto::Empty* resp) override {
    return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
      a->Leave(c, q, r, std::move(cb));
    });
  }
  grpc::ServerUnaryReactor* Report(grpc::CallbackServerContext* ctx,
                                   const proto::ReportRequest* req, proto::Empty* resp) override {
    return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
      a->Report(c, q, r, std::move(cb));
    });
  }
  grpc::ServerUnaryReactor* Set(grpc::CallbackServerContext* ctx, const proto::SetRequest* req,
                                proto::Empty* resp) override {
    return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
      a->Set(c, q, r, std::move(cb));
    });
  }
  grpc::ServerUnaryReactor* Add(grpc::CallbackServerContext* ctx, const proto::AddRequest* req,
                                proto::AddResponse* resp) override {
    return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
      a->Add(c, q, r, std::move(cb));
    });
  }
  grpc::ServerUnaryReactor* CompareSet(grpc::CallbackServerContext* ctx,
                                       const proto::CompareSetRequest* req,
                                       proto::CompareSetResponse* resp) override {
    return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
      a->CompareSet(c, q, r, std::move(cb));
    });
  }
  grpc::ServerUnaryReactor* Wait(grpc::CallbackServerContext* ctx, const proto::WaitRequest* req,
                                 proto::Empty* resp) override {
    return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
      a->Wait(c, q, r, std::move(cb));
    });
  }
  grpc::ServerUnaryReactor* MultiGet(grpc::CallbackServerContext* ctx,
                                     const proto::MultiGetRequest* req,
                                     proto::MultiGetResponse* resp) override {
    return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
      a->MultiGet(c, q, r, std::move(cb));
    });
  }
  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* ctx, const proto::CheckRequest* req,
                                  proto::CheckResponse* resp) override {
    return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
      a->Check(c, q, r, std::move(cb));
    });
  }
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx,
                                   const proto::DeleteRequest* req, proto::Empty* resp) override {
    return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
      a->Delete(c, q, r, std::move(cb));
    });
  }
  // ---- node-level calls: merged into this relay's own when it has child relays ------------

  grpc::ServerUnaryReactor* JoinNode(grpc::CallbackServerContext* ctx,
                                     const proto::JoinNodeRequest* req,
                                     proto::JoinNodeResponse* resp) override {
    if (!tree_parent())
      return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
        a->JoinNode(c, q, r, std::move(cb));
      });
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx)) return unauthenticated(reactor);
    relay_.join_subtree(*req, time_left(ctx, kDefaultRpcDeadline),
                        [reactor, resp](const RelayStatus& st, const proto::JoinNodeResponse& r) {
                          if (st.ok()) *resp = r;
                          reactor->Finish(to_grpc(st));
                        });
    return reactor;
  }
  grpc::ServerUnaryReactor* NodeHeartbeat(grpc::CallbackServerContext* ctx,
                                          const proto::NodeHeartbeatRequest* req,
                                          proto::HeartbeatResponse* resp) override {
    if (!tree_parent())
      return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
        a->NodeHeartbeat(c, q, r, std::move(cb));
      });
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx)) return unauthenticated(reactor);
    auto reply = relay_.heartbeat_subtree(*req);
    resp->set_abort(reply.abort);
    resp->set_reason(reply.reason);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerUnaryReactor* NodeBarrier(grpc::CallbackServerContext* ctx,
                                        const proto::NodeBarrierRequest* req,
                                        proto::Empty* resp) override {
    if (!tree_parent())
      return forward(ctx, req, resp, [](auto* a, auto* c, auto* q, auto* r, auto cb) {
        a->NodeBarrier(c, q, r, std::move(cb));
      });
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx)) return unauthenticated(reactor);
    relay_.barrier_subtree(req->name(), {req->ranks().begin(), req->ranks().end()}, req->count(),
                           Millis(req->timeout_ms()),
                           [reactor](const RelayStatus& st) { reactor->Finish(to_grpc(st)); });
    return reactor;
  }

  class LogReactor;
  grpc::ServerReadReactor<proto::LogBatch>* StreamLogs(grpc::CallbackServerContext* ctx,
                                                       proto::Empty*) override;

 private:
  bool tree_parent() const { return relay_.options().tree_children > 0; }

  bool authorized(grpc::CallbackServerContext* ctx) const {
    const auto& md = ctx->client_metadata();
    auto it = md.find(kTokenMetadataKey);
    return it != md.end() &&
           token_equal(std::string_view(it->second.data(), it->second.size()), token_);
  }
  static grpc::ServerUnaryReactor* unauthenticated(grpc::ServerUnaryReactor* r) {
    r->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong or missing job token"));
    return r;
  }

  // Sends the call upward unchanged; its answer (or failure) is the local call's.
  template <class Req, class Resp, class Method>
  grpc::ServerUnaryReactor* forward(grpc::CallbackServerContext* ctx, const Req* req, Resp* resp,
                                    Method method) {
    auto* reactor = ctx->DefaultReactor();
    if (!authorized(ctx)) return unauthenticated(reactor);
    auto upward = std::make_shared<grpc::ClientContext>();
    relay_.upstream().prepare(*upward, time_left(ctx, kDefaultRpcDeadline));
    {
      std::lock_guard<std::mutex> lock(mu_);
      forwarded_.insert(upward.get());
      if (stopping_) upward->TryCancel();
    }
    auto* async = relay_.upstream().stub().async();
    method(async, upward.get(), req, resp, [this, upward, reactor](grpc::Status st) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        forwarded_.erase(upward.get());
      }
      reactor->Finish(st);
    });
    return reactor;
  }

  std::string token_;
  std::string socket_path_;
  std::string tree_address_;
  NodeRelay relay_;
  std::unique_ptr<grpc::Server> server_;
  ServerListeners listeners_;  // after server_: stops accepting before the server goes
  std::mutex mu_;
  bool stopping_ = false;
  std::unordered_set<WatchReactor*> watches_;
  std::unordered_set<grpc::ClientContext*> forwarded_;
};

// ---- Watch: local streams share the relay's one upward stream ---------------------------

class RelayServer::Impl::WatchReactor final : public grpc::ServerWriteReactor<proto::WatchEvent> {
 public:
  explicit WatchReactor(Impl* impl) : impl_(impl) {}
  void subscribe() {
    // `self` is only touched while it is still in watches_ (not finished, so not deleted).
    id_ = impl_->relay_.watch([impl = impl_, self = this](const WatchEventView& ev) {
      bool mine;
      {
        std::lock_guard<std::mutex> lock(impl->mu_);
        mine = impl->watches_.erase(self) > 0;
      }
      if (mine) self->end(ev);
    });
  }
  // Called at most once, after the reactor left watches_.
  void end(const std::optional<WatchEventView>& ev) {
    if (!ev || ev->kind == WatchEventView::Kind::Closed) {
      Finish(ev ? grpc::Status(grpc::StatusCode::UNAVAILABLE, ev->reason) : grpc::Status::OK);
      return;
    }
    event_.set_kind(ev->kind == WatchEventView::Kind::Abort ? proto::WatchEvent::ABORT
                                                            : proto::WatchEvent::RESTART);
    event_.set_reason(ev->reason);
    event_.set_round(ev->round);
    StartWriteAndFinish(&event_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnCancel() override {
    bool mine;
    {
      std::lock_guard<std::mutex> lock(impl_->mu_);
      mine = impl_->watches_.erase(this) > 0;
    }
    if (mine) Finish(grpc::Status::CANCELLED);
  }
  void OnDone() override {
    impl_->relay_.unwatch(id_);
    delete this;
  }

 private:
  Impl* impl_;
  int id_ = 0;
  proto::WatchEvent event_;
};

grpc::ServerWriteReactor<proto::WatchEvent>* RelayServer::Impl::Watch(
    grpc::CallbackServerContext* ctx, const proto::WatchRequest*) {
  auto* w = new WatchReactor(this);  // deletes itself in OnDone (gRPC callback API ownership)
  if (!authorized(ctx)) {
    w->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong or missing job token"));
    return w;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      w->Finish(grpc::Status::OK);
      return w;
    }
    watches_.insert(w);
  }
  w->subscribe();
  return w;
}

// ---- StreamLogs: one upward stream per local stream, written from its own thread ----------

class RelayServer::Impl::LogReactor final : public grpc::ServerReadReactor<proto::LogBatch> {
 public:
  explicit LogReactor(Impl* impl) : impl_(impl) {}
  void begin() { StartRead(&batch_); }
  void OnReadDone(bool ok) override {
    if (ok) {
      for (auto& l : *batch_.mutable_lines()) all_.add_lines()->Swap(&l);
      batch_.Clear();
      StartRead(&batch_);
      return;
    }
    // The local stream ended: send its lines upward without holding a gRPC thread.
    std::thread([this] {
      grpc::ClientContext ctx;
      impl_->relay_.upstream().prepare(ctx, kDefaultRpcDeadline);
      proto::Empty resp;
      auto writer = impl_->relay_.upstream().stub().StreamLogs(&ctx, &resp);
      writer->Write(all_);
      writer->WritesDone();
      Finish(writer->Finish());
    }).detach();
  }
  void OnDone() override { delete this; }

 private:
  Impl* impl_;
  proto::LogBatch batch_, all_;
};

grpc::ServerReadReactor<proto::LogBatch>* RelayServer::Impl::StreamLogs(
    grpc::CallbackServerContext* ctx, proto::Empty*) {
  auto* r = new LogReactor(this);  // deletes itself in OnDone
  if (!authorized(ctx))
    r->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong or missing job token"));
  else
    r->begin();
  return r;
}

RelayServer::Impl::~Impl() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  // Local Watch streams end as if the coordinator had closed the job.
  std::vector<WatchReactor*> ending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ending.assign(watches_.begin(), watches_.end());
    watches_.clear();
  }
  for (auto* w : ending) w->end(std::nullopt);
  relay_.cancel_calls();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto* c : forwarded_) c->TryCancel();
  }
  listeners_.stop_accepting();
  server_->Shutdown(std::chrono::system_clock::now() + Millis(1000));
  server_->Wait();
  listeners_.stop();  // what the calls in flight needed is done
  std::error_code ec;
  std::filesystem::remove(socket_path_, ec);
}

// ---- RelayServer -------------------------------------------------------------------------

RelayServer::RelayServer(const std::string& coordinator, const std::string& token,
                         NodeRelayOptions options, std::string socket_path, Millis heartbeat_period,
                         const std::string& tree_listen)
    : impl_(std::make_unique<Impl>(coordinator, token, std::move(options), std::move(socket_path),
                                   heartbeat_period, tree_listen)) {}
RelayServer::~RelayServer() = default;
std::string RelayServer::address() const {
  return impl_->address();
}
const std::string& RelayServer::tree_address() const {
  return impl_->tree_address();
}
NodeRelay& RelayServer::relay() {
  return impl_->relay();
}

}  // namespace ptrain::rendezvous
