// The parameter server and its client over gRPC (proto/ptrain.proto, service ParamServer).
#include "ptrain/parallel/param_server.h"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "ptrain.grpc.pb.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/tls.h"
#include "ptrain/rendezvous/token.h"

namespace ptrain::parallel {
namespace {

// Parameter shards are far larger than the coordinator's messages.
constexpr int kMaxMessage = 1 << 30;

std::string error_text(const grpc::Status& st) {
  return fmt::format("{} ({})", st.error_message(), int(st.error_code()));
}

}  // namespace

std::string param_server_key(int index, int round) {
  return round == 0 ? fmt::format("ptrain/ps/{}/address", index)
                    : fmt::format("ptrain/ps/r{}/{}/address", round, index);
}

struct ParamServer::Impl final : proto::ParamServer::Service {
  ParamServerOptions opt;
  std::unique_ptr<optim::Optimizer> optimizer;
  size_t begin = 0, size = 0;
  // Full-layout buffers: the optimizer indexes by absolute element; only the shard is used.
  std::vector<float> params, grads;
  std::vector<float> buffers;  // the model's buffers (server 0 only)

  mutable std::mutex mu;
  std::condition_variable cv;
  std::vector<int64_t> clock;  // pushed steps per worker
  int finished = 0;
  int snapshots_running = 0;  // on_snapshot calls in progress
  int64_t version = 0;
  int64_t start_version = 0;  // the version when serving began (the rate counts from it)
  double start_s = 0;
  bool stopping = false;
  std::unique_ptr<grpc::Server> server;
  rendezvous::ServerListeners listeners;  // after server: stops accepting before the server goes
  int port = 0;

  int64_t min_clock() const { return *std::min_element(clock.begin(), clock.end()); }

  ShardSnapshot snapshot_locked() const {
    ShardSnapshot snap;
    snap.index = opt.index;
    snap.version = version;
    snap.optimizer_steps = optimizer->steps();
    snap.begin = begin;
    snap.params.assign(params.begin() + long(begin), params.begin() + long(begin + size));
    for (const auto& st : optimizer->state())
      snap.state.emplace_back(st.name, std::vector<float>(st.data, st.data + st.size));
    snap.buffers = buffers;
    return snap;
  }

  grpc::Status check(grpc::ServerContext* ctx, int worker) const {
    if (!opt.token.empty()) {
      auto it = ctx->client_metadata().find(rendezvous::kTokenMetadataKey);
      std::string_view got = it == ctx->client_metadata().end()
                                 ? ""
                                 : std::string_view(it->second.data(), it->second.size());
      if (!rendezvous::token_equal(got, opt.token))
        return {grpc::StatusCode::UNAUTHENTICATED, "wrong or missing job token"};
    }
    if (worker < 0 || worker >= opt.workers)
      return {grpc::StatusCode::INVALID_ARGUMENT,
              fmt::format("worker {} is outside [0, {})", worker, opt.workers)};
    return grpc::Status::OK;
  }

  grpc::Status Push(grpc::ServerContext* ctx, const proto::PushRequest* req,
                    proto::PushResponse* resp) override {
    if (auto st = check(ctx, req->worker()); !st.ok()) return st;
    if (req->grads().size() != size * sizeof(float))
      return {grpc::StatusCode::INVALID_ARGUMENT,
              fmt::format("{} gradient bytes for a shard of {} floats", req->grads().size(), size)};
    if (!req->buffer_delta().empty() &&
        req->buffer_delta().size() != buffers.size() * sizeof(float))
      return {grpc::StatusCode::INVALID_ARGUMENT,
              fmt::format("{} buffer bytes for {} buffer floats", req->buffer_delta().size(),
                          buffers.size())};
    std::unique_lock lock(mu);
    if (!req->buffer_delta().empty()) {
      const char* d = req->buffer_delta().data();
      for (size_t i = 0; i < buffers.size(); ++i) {
        float v;
        std::memcpy(&v, d + i * sizeof(float), sizeof(float));
        buffers[i] += v;
      }
    }
    std::memcpy(grads.data() + begin, req->grads().data(), size * sizeof(float));
    optimizer->step(params.data(), grads.data(), req->lr());
    ++version;
    auto& c = clock[size_t(req->worker())];
    c = std::max(c, req->step() + 1);
    if (req->last()) ++finished;
    resp->set_version(version);
    resp->set_updates_per_s(rate_locked());
    cv.notify_all();
    if (opt.snapshot_every > 0 && opt.on_snapshot && version % opt.snapshot_every == 0) {
      // Counted while it runs, so that wait_done() does not report the end before it is over.
      ShardSnapshot snap = snapshot_locked();
      ++snapshots_running;
      lock.unlock();
      opt.on_snapshot(std::move(snap));
      lock.lock();
      --snapshots_running;
      cv.notify_all();
    }
    return grpc::Status::OK;
  }

  grpc::Status SaveShard(grpc::ServerContext* ctx, const proto::ShardPiece* req,
                         proto::ShardPieceResponse*) override {
    if (auto st = check(ctx, 0); !st.ok()) return st;
    if (!opt.on_piece)
      return {grpc::StatusCode::FAILED_PRECONDITION,
              fmt::format("parameter server {} does not collect checkpoints", opt.index)};
    if (req->data().size() % sizeof(float) != 0 || req->pieces() < 1)
      return {grpc::StatusCode::INVALID_ARGUMENT, "a malformed checkpoint piece"};
    ShardSnapshot piece;
    piece.index = req->server();
    piece.version = req->version();
    piece.optimizer_steps = req->optimizer_steps();
    piece.begin = size_t(req->begin());
    piece.pieces = req->pieces();
    std::vector<float> data(req->data().size() / sizeof(float));
    std::memcpy(data.data(), req->data().data(), req->data().size());
    if (req->name() == "params")
      piece.params = std::move(data);
    else
      piece.state.emplace_back(req->name(), std::move(data));
    try {
      opt.on_piece(std::move(piece));
    } catch (const std::exception& e) {
      return {grpc::StatusCode::INTERNAL, e.what()};
    }
    return grpc::Status::OK;
  }

  grpc::Status Pull(grpc::ServerContext* ctx, const proto::PullRequest* req,
                    proto::PullResponse* resp) override {
    if (auto st = check(ctx, req->worker()); !st.ok()) return st;
    Millis wait = std::min(Millis(std::max<int64_t>(0, req->timeout_ms())), opt.max_wait);
    std::unique_lock lock(mu);
    bool ok = cv.wait_for(lock, wait, [&] {
      return stopping || ctx->IsCancelled() || min_clock() >= req->min_clock();
    });
    if (stopping) return {grpc::StatusCode::UNAVAILABLE, "the parameter server is stopping"};
    if (!ok || ctx->IsCancelled()) {
      size_t slow = size_t(std::min_element(clock.begin(), clock.end()) - clock.begin());
      return {grpc::StatusCode::DEADLINE_EXCEEDED,
              fmt::format("waited {} ms for every worker to reach step {}; the slowest, worker "
                          "{}, is at step {}",
                          wait.count(), req->min_clock(), slow, clock[slow])};
    }
    resp->mutable_params()->assign(reinterpret_cast<const char*>(params.data() + begin),
                                   size * sizeof(float));
    if (!buffers.empty())
      resp->mutable_buffers()->assign(reinterpret_cast<const char*>(buffers.data()),
                                      buffers.size() * sizeof(float));
    resp->set_version(version);
    resp->set_min_clock(min_clock());
    if (req->last()) {
      ++finished;
      cv.notify_all();
    }
    return grpc::Status::OK;
  }

  double rate_locked() const {
    double dt = mono_seconds() - start_s;
    return dt > 0 ? double(version - start_version) / dt : 0;
  }
};

ParamServer::ParamServer(ParamServerOptions options, std::unique_ptr<optim::Optimizer> optimizer,
                         std::vector<float> init, std::vector<float> buffers)
    : impl_(std::make_unique<Impl>()) {
  auto& s = *impl_;
  s.buffers = std::move(buffers);
  PTRAIN_CHECK(options.workers >= 1, "workers {}", options.workers);
  s.begin = optimizer->shard().begin;
  s.size = optimizer->shard().size();
  PTRAIN_CHECK(init.size() == s.size, "init {} vs shard {}", init.size(), s.size);
  s.params.assign(optimizer->shard().end, 0.0f);
  s.grads.assign(optimizer->shard().end, 0.0f);
  std::copy(init.begin(), init.end(), s.params.begin() + long(s.begin));
  s.clock.assign(size_t(options.workers), options.start_clock);
  s.version = options.start_version;
  s.opt = std::move(options);
  s.optimizer = std::move(optimizer);
}

ParamServer::~ParamServer() {
  shutdown();
}

void ParamServer::start() {
  auto& s = *impl_;
  grpc::ServerBuilder builder;
  rendezvous::ServerLimits limits;
  limits.token = s.opt.token;
  // A request is at most a Push: this server's shard and the buffer delta, plus slack for the
  // other fields. (Responses, the Pulls, are as big; both directions share the limit.)
  limits.max_message_bytes =
      static_cast<int64_t>((s.size + s.buffers.size()) * sizeof(float)) + (int64_t{1} << 20);
  PTRAIN_CHECK(limits.max_message_bytes < kMaxMessage, "shard of {} floats is over 1 GiB", s.size);
  // Every worker may have one Push in flight (the synchronous server holds a thread per call).
  limits.memory_bytes =
      std::max<int64_t>(int64_t{256} << 20, (s.opt.workers + 2) * limits.max_message_bytes);
  limits.max_concurrent_streams = 8;
  rendezvous::configure_server(builder, fmt::format("{}:{}", s.opt.bind, s.opt.port), &s.port,
                               limits, &s.listeners);
  builder.RegisterService(&s);
  s.server = builder.BuildAndStart();
  if (!s.server || s.port == 0)
    throw IoError(fmt::format("parameter server {} cannot listen on {}", s.opt.index, s.opt.bind),
                  "check parallel.servers and that the address is local");
  s.start_s = mono_seconds();
  s.start_version = s.version;
}

std::string ParamServer::address() const {
  return fmt::format("{}:{}", impl_->opt.bind, impl_->port);
}

bool ParamServer::wait_done(Millis timeout) {
  auto& s = *impl_;
  std::unique_lock lock(s.mu);
  auto done = [&] { return s.finished >= s.opt.workers && s.snapshots_running == 0; };
  return s.cv.wait_for(lock, timeout, [&] { return done() || s.stopping; }) && done();
}

void ParamServer::shutdown() {
  auto& s = *impl_;
  {
    std::lock_guard lock(s.mu);
    s.stopping = true;
  }
  s.cv.notify_all();
  if (s.server) {
    s.listeners.stop_accepting();
    s.server->Shutdown(std::chrono::system_clock::now() + Millis(1000));
    s.server->Wait();
    s.listeners.stop();  // Pushes in flight were answered first
    s.server.reset();
  }
}

int64_t ParamServer::version() const {
  std::lock_guard lock(impl_->mu);
  return impl_->version;
}

ShardSnapshot ParamServer::snapshot() const {
  std::lock_guard lock(impl_->mu);
  return impl_->snapshot_locked();
}

double ParamServer::updates_per_s() const {
  std::lock_guard lock(impl_->mu);
  return impl_->rate_locked();
}

struct ParamClient::Impl {
  std::string token;
  Millis deadline;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<proto::ParamServer::Stub> stub;
  std::string buffer;
};

ParamClient::ParamClient(int index, std::string address, std::string token, Millis rpc_deadline)
    : index_(index), address_(std::move(address)), impl_(std::make_unique<Impl>()) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessage);
  args.SetMaxSendMessageSize(kMaxMessage);
  impl_->token = std::move(token);
  impl_->deadline = rpc_deadline;
  auto creds = rendezvous::channel_credentials(args, address_);
  impl_->channel = grpc::CreateCustomChannel(address_, creds, args);
  impl_->stub = proto::ParamServer::NewStub(impl_->channel);
}

ParamClient::~ParamClient() = default;

namespace {
[[noreturn]] void fail(int index, const std::string& address, const char* call,
                       const grpc::Status& st) {
  if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
    throw TimeoutError(fmt::format("parameter server {} at {}: {} timed out: {}", index, address,
                                   call, st.error_message()),
                       "a worker or server is stuck or dead; see its log");
  throw RemoteError(
      fmt::format("parameter server {} at {} failed {}: {}", index, address, call, error_text(st)),
      fmt::format("see server-{}.log in the run folder; the server may have died", index));
}
}  // namespace

double ParamClient::push(int worker, int64_t step, float lr, const float* grads, size_t n,
                         bool last, const float* buffer_delta, size_t nbuf) {
  proto::PushRequest req;
  req.set_worker(worker);
  req.set_step(step);
  req.set_lr(lr);
  req.set_last(last);
  req.mutable_grads()->assign(reinterpret_cast<const char*>(grads), n * sizeof(float));
  if (buffer_delta && nbuf > 0)
    req.mutable_buffer_delta()->assign(reinterpret_cast<const char*>(buffer_delta),
                                       nbuf * sizeof(float));
  proto::PushResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + impl_->deadline);
  ctx.AddMetadata(rendezvous::kTokenMetadataKey, impl_->token);
  auto st = impl_->stub->Push(&ctx, req, &resp);
  if (!st.ok()) fail(index_, address_, "Push", st);
  return resp.updates_per_s();
}

PullResult ParamClient::pull(int worker, int64_t min_clock, float* out, size_t n, Millis wait,
                             float* buffers, size_t nbuf, bool last) {
  proto::PullRequest req;
  req.set_worker(worker);
  req.set_min_clock(min_clock);
  req.set_timeout_ms(wait.count());
  req.set_last(last);
  proto::PullResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + wait + impl_->deadline);
  ctx.AddMetadata(rendezvous::kTokenMetadataKey, impl_->token);
  auto st = impl_->stub->Pull(&ctx, req, &resp);
  if (!st.ok()) fail(index_, address_, "Pull", st);
  if (resp.params().size() != n * sizeof(float))
    throw RemoteError(fmt::format("parameter server {} at {} sent {} bytes of parameters, "
                                  "expected {}",
                                  index_, address_, resp.params().size(), n * sizeof(float)),
                      "every worker and server must run the same job spec");
  std::memcpy(out, resp.params().data(), n * sizeof(float));
  if (buffers && nbuf > 0) {
    if (resp.buffers().size() != nbuf * sizeof(float))
      throw RemoteError(fmt::format("parameter server {} at {} sent {} bytes of model buffers, "
                                    "expected {}",
                                    index_, address_, resp.buffers().size(), nbuf * sizeof(float)),
                        "every worker and server must run the same job spec");
    std::memcpy(buffers, resp.buffers().data(), nbuf * sizeof(float));
  }
  return {resp.version(), resp.min_clock()};
}

void ParamClient::send_snapshot(const ShardSnapshot& snap) {
  const int pieces = 1 + int(snap.state.size());
  auto send = [&](const std::string& name, const std::vector<float>& data) {
    proto::ShardPiece req;
    req.set_version(snap.version);
    req.set_server(snap.index);
    req.set_pieces(pieces);
    req.set_name(name);
    req.set_begin(int64_t(snap.begin));
    req.set_optimizer_steps(snap.optimizer_steps);
    req.mutable_data()->assign(reinterpret_cast<const char*>(data.data()),
                               data.size() * sizeof(float));
    proto::ShardPieceResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + impl_->deadline);
    ctx.AddMetadata(rendezvous::kTokenMetadataKey, impl_->token);
    auto st = impl_->stub->SaveShard(&ctx, req, &resp);
    if (!st.ok()) fail(index_, address_, "SaveShard", st);
  };
  send("params", snap.params);
  for (const auto& [name, data] : snap.state) send(name, data);
}

}  // namespace ptrain::parallel
