#include "ptrain/rendezvous/client.h"

#include <fmt/format.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "grpc_common.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/grpc_store.h"

namespace ptrain::rendezvous {

namespace {
// A Watch stream is reopened after this long, so even the job-long call has a deadline.
constexpr Millis kWatchReopen{std::chrono::hours(1)};
}  // namespace

struct CoordinatorClient::Watcher {
  std::mutex mu;
  grpc::ClientContext* ctx = nullptr;  // the open stream's context, for cancellation
  bool stopping = false;
  std::thread thread;

  ~Watcher() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
      if (ctx) ctx->TryCancel();
    }
    if (thread.joinable()) thread.join();
  }
};

CoordinatorClient::CoordinatorClient(std::string address, std::string token, Millis connect_timeout,
                                     Millis rpc_deadline)
    : conn_(std::make_shared<detail::Connection>(std::move(address), std::move(token))),
      rpc_deadline_(rpc_deadline) {
  conn_->connect(connect_timeout);
}

CoordinatorClient::~CoordinatorClient() = default;

const std::string& CoordinatorClient::address() const {
  return upstream_.empty() ? conn_->address() : upstream_;
}

JoinResult CoordinatorClient::join(const JoinRequestView& request) {
  grpc::ClientContext ctx;
  conn_->prepare(ctx, request.timeout);
  proto::JoinRequest req;
  req.set_rank(request.rank);
  req.set_node(request.node);
  req.set_node_rank(request.node_rank);
  req.set_local_rank(request.local_rank);
  req.set_pid(request.pid);
  req.set_round(request.round);
  req.set_role(request.role);
  proto::JoinResponse resp;
  auto st = conn_->stub().Join(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Join", request.timeout);
  JoinResult out;
  out.rank = resp.rank();
  out.world_size = resp.world_size();
  out.mesh = {resp.mesh().dp(), resp.mesh().tp(), resp.mesh().pp()};
  out.coords = {resp.coords().dp(), resp.coords().tp(), resp.coords().pp()};
  out.run_id = resp.run_id();
  out.run_dir = resp.run_dir();
  out.spec_yaml = resp.spec_yaml();
  out.round = resp.round();
  upstream_ = resp.upstream();
  return out;
}

HeartbeatReply CoordinatorClient::heartbeat(int rank, int64_t step, int round) {
  grpc::ClientContext ctx;
  conn_->prepare(ctx, rpc_deadline_);
  proto::HeartbeatRequest req;
  req.set_rank(rank);
  req.set_step(step);
  req.set_round(round);
  proto::HeartbeatResponse resp;
  auto st = conn_->stub().Heartbeat(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Heartbeat", rpc_deadline_);
  return {resp.abort(), resp.reason()};
}

void CoordinatorClient::leave(int rank, int exit_code, const std::string& reason) {
  grpc::ClientContext ctx;
  conn_->prepare(ctx, rpc_deadline_);
  proto::LeaveRequest req;
  req.set_rank(rank);
  req.set_exit_code(exit_code);
  req.set_reason(reason);
  proto::Empty resp;
  auto st = conn_->stub().Leave(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Leave", rpc_deadline_);
}

void CoordinatorClient::report(int rank, const std::string& json) {
  grpc::ClientContext ctx;
  conn_->prepare(ctx, rpc_deadline_);
  proto::ReportRequest req;
  req.set_rank(rank);
  req.set_json(json);
  proto::Empty resp;
  auto st = conn_->stub().Report(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Report", rpc_deadline_);
}

void CoordinatorClient::barrier(const std::string& name, int rank, int count, Millis timeout) {
  Millis deadline = timeout + rpc_deadline_;
  grpc::ClientContext ctx;
  conn_->prepare(ctx, deadline);
  proto::BarrierRequest req;
  req.set_name(name);
  req.set_rank(rank);
  req.set_count(count);
  req.set_timeout_ms(timeout.count());
  proto::Empty resp;
  auto st = conn_->stub().Barrier(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Barrier", deadline);
}

void CoordinatorClient::send_logs(const std::vector<LogLineView>& lines) {
  grpc::ClientContext ctx;
  conn_->prepare(ctx, rpc_deadline_);
  proto::Empty resp;
  auto writer = conn_->stub().StreamLogs(&ctx, &resp);
  proto::LogBatch batch;
  for (const auto& l : lines) {
    auto* line = batch.add_lines();
    line->set_node(l.node);
    line->set_rank(l.rank);
    line->set_time_us(l.time_us);
    line->set_stderr(l.is_stderr);
    line->set_text(l.text);
  }
  writer->Write(batch);  // a failure shows in Finish()
  writer->WritesDone();
  auto st = writer->Finish();
  if (!st.ok()) conn_->fail(st, "StreamLogs", rpc_deadline_);
}

std::shared_ptr<Store> CoordinatorClient::store() {
  return std::make_shared<GrpcStore>(conn_, rpc_deadline_);
}

void CoordinatorClient::watch(int rank, std::function<void(const WatchEventView&)> on_event) {
  PTRAIN_CHECK(!watcher_, "CoordinatorClient::watch called twice");
  watcher_ = std::make_unique<Watcher>();
  Watcher* w = watcher_.get();
  auto conn = conn_;
  w->thread = std::thread([w, conn, rank, on_event = std::move(on_event)] {
    for (;;) {
      grpc::ClientContext ctx;
      conn->prepare(ctx, kWatchReopen);
      {
        std::lock_guard<std::mutex> lock(w->mu);
        if (w->stopping) return;
        w->ctx = &ctx;
      }
      proto::WatchRequest req;
      req.set_rank(rank);
      auto reader = conn->stub().Watch(&ctx, req);
      proto::WatchEvent event;
      bool final_event = false;
      while (reader->Read(&event)) {
        WatchEventView view;
        view.reason = event.reason();
        view.round = event.round();
        if (event.kind() == proto::WatchEvent::ABORT) {
          view.kind = WatchEventView::Kind::Abort;
        } else if (event.kind() == proto::WatchEvent::RESTART) {
          view.kind = WatchEventView::Kind::Restart;
        } else {
          continue;
        }
        final_event = true;
        on_event(view);
      }
      auto st = reader->Finish();
      bool stopping;
      {
        std::lock_guard<std::mutex> lock(w->mu);
        w->ctx = nullptr;
        stopping = w->stopping;
      }
      if (stopping || final_event) return;
      if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) continue;
      WatchEventView closed;
      closed.kind = WatchEventView::Kind::Closed;
      if (st.ok())
        closed.reason = fmt::format("the coordinator at {} closed the job", conn->address());
      else if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED)
        closed.reason = fmt::format("the coordinator at {} refused the job token", conn->address());
      else
        closed.reason =
            fmt::format("lost the coordinator at {}: {}", conn->address(), st.error_message());
      on_event(closed);
      return;
    }
  });
}

}  // namespace ptrain::rendezvous
