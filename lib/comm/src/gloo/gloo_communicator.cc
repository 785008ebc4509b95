// The Gloo backend: collectives through gloo's option-struct API on one TCP context per group,
// run in issue order by a worker thread; point-to-point through unbound buffers.
#include <fmt/format.h>
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/transport/pair.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>

#include "../work.h"
#include "ptrain/comm/gloo.h"
#include "ptrain/core/error.h"
#include "store_adaptor.h"

namespace ptrain::comm {
namespace {

using detail::OpState;
using detail::StateWork;

// Slot prefixes for the traffic gloo's own collectives do not generate (gloo uses 0x01-0x08).
constexpr uint64_t kP2pSlotPrefix = 0xA0ull << 56;
constexpr uint64_t kReduceScatterSlotPrefix = 0xB0ull << 56;
constexpr uint32_t kMaxP2pTag = (1u << 24) - 1;
constexpr uint32_t kCheckTag = 0xC0FFEE;
constexpr uint32_t kCountsTag = 0xC0FFEF;
constexpr uint32_t kAlltoallvTag = 0xA11A11;

enum class OpKind : uint32_t {
  kAllreduce = 1,
  kReduceScatter,
  kAllgather,
  kBroadcast,
  kBarrier,
  kAlltoallv
};

const char* op_name(uint32_t kind) {
  switch (static_cast<OpKind>(kind)) {
    case OpKind::kAllreduce:
      return "allreduce";
    case OpKind::kReduceScatter:
      return "reduce_scatter";
    case OpKind::kAllgather:
      return "allgather";
    case OpKind::kBroadcast:
      return "broadcast";
    case OpKind::kBarrier:
      return "barrier";
    case OpKind::kAlltoallv:
      return "alltoallv";
  }
  return "unknown op";
}

// What each rank says it is about to run; all ranks of a group must agree.
struct OpMeta {
  uint32_t kind = 0;
  uint32_t dtype = 0;
  uint64_t count = 0;
  int32_t root = -1;
  uint32_t reduce = 0;
  uint64_t seq = 0;
  bool operator==(const OpMeta&) const = default;
};
static_assert(sizeof(OpMeta) == 32);

std::string describe_meta(const OpMeta& m) {
  std::string s = op_name(m.kind);
  if (static_cast<OpKind>(m.kind) != OpKind::kBarrier)
    s += fmt::format(" of {} x {}", m.count, dtype_name(static_cast<DType>(m.dtype)));
  if (static_cast<OpKind>(m.kind) == OpKind::kAllreduce ||
      static_cast<OpKind>(m.kind) == OpKind::kReduceScatter)
    s += fmt::format(" {}", to_string(static_cast<ReduceOp>(m.reduce)));
  if (static_cast<OpKind>(m.kind) == OpKind::kBroadcast) s += fmt::format(" from root {}", m.root);
  return s + fmt::format(" (op #{})", m.seq);
}

bool mentions_timeout(const std::string& msg) {
  std::string lower(msg);
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  return lower.find("timed out") != std::string::npos || lower.find("timeout") != std::string::npos;
}

// Gloo's exceptions become ours, naming the op and the group.
std::exception_ptr translate(const std::string& what, const std::exception& e) {
  if (mentions_timeout(e.what()))
    return std::make_exception_ptr(
        TimeoutError(fmt::format("{} timed out: {}", what, e.what()),
                     "a peer may have died, stalled, or issued a different operation"));
  return std::make_exception_ptr(
      RemoteError(fmt::format("{} failed: {}", what, e.what()),
                  "a peer closed its connection or aborted; see its log"));
}

using ReduceFn = void (*)(void*, const void*, const void*, size_t);
ReduceFn reduce_fn(ReduceOp op) {
  if (op == ReduceOp::kMax) return static_cast<ReduceFn>(&gloo::max<float>);
  return static_cast<ReduceFn>(&gloo::sum<float>);
}

void scale(float* x, size_t n, float alpha) {
  for (size_t i = 0; i < n; ++i) x[i] *= alpha;
}

// One tcp::Device (an epoll loop thread) per address, shared by every group of the process.
std::shared_ptr<gloo::transport::Device> shared_device(const GlooOptions& options) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<gloo::transport::Device>> devices;
  std::string host = options.hostname.empty() ? "127.0.0.1" : options.hostname;
  std::string key = options.iface.empty() ? "host:" + host : "iface:" + options.iface;
  std::lock_guard<std::mutex> lock(mu);
  if (auto device = devices[key].lock()) return device;
  gloo::transport::tcp::attr attr;
  if (options.iface.empty())
    attr.hostname = host;
  else
    attr.iface = options.iface;
  std::shared_ptr<gloo::transport::Device> device;
  try {
    device = gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    throw ConfigError(fmt::format("gloo: cannot use {} for the TCP transport: {}", key, e.what()),
                      "set the address or interface of this host that its peers can reach");
  }
  devices[key] = device;
  return device;
}

// State shared by the communicator, its queued ops and its Work handles.
class GlooCore {
 public:
  GlooCore(GroupInfo group, CommOptions options, std::shared_ptr<gloo::Context> ctx)
      : group_(std::move(group)), options_(options), ctx_(std::move(ctx)) {
    queue_ = std::make_unique<detail::OpQueue>();
  }
  ~GlooCore() { queue_.reset(); }  // finish queued ops before the context goes away

  detail::OpQueue& queue() { return *queue_; }
  const std::shared_ptr<gloo::Context>& ctx() const { return ctx_; }
  const GroupInfo& group() const { return group_; }

  // Fails every later op and closes this rank's connections, so that the peers' ops fail at
  // once instead of at their timeout. (The op in flight here ends at its own gloo timeout: the
  // Debian gloo headers do not expose a way to fail it early.)
  void abort(const std::string& reason) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!broken_.empty()) return;
      broken_ = reason;
    }
    if (!ctx_) return;
    for (int i = 0; i < group_.size; ++i) {
      if (i == group_.rank) continue;
      try {
        if (auto& pair = ctx_->getPair(i)) pair->close();
      } catch (const std::exception&) {
        // Already closed or failed: nothing left to tell that peer.
      }
    }
  }

  void throw_if_broken(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!broken_.empty())
      throw RemoteError(fmt::format("{}: the communicator is unusable after an earlier failure: {}",
                                    what, broken_),
                        "recreate the group (a restart does this)");
  }

  // Runs on the worker thread: check agreement, then the op body; failures abort the group.
  void run(OpMeta meta, const std::string& what, const std::function<void()>& body) {
    throw_if_broken(what);
    meta.seq = seq_++;
    try {
      if (ctx_ && options_.check_consistency) check(meta, what);
      body();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      auto error = translate(what, e);
      abort(e.what());
      std::rethrow_exception(error);
    }
  }

  void reduce_scatter_ring(const float* send, float* recv, size_t chunk, ReduceOp op, uint64_t seq);

  // alltoallv: every rank's send and recv counts are gathered, and rank i's send count to j
  // must equal rank j's recv count from i; otherwise every rank fails naming the first pair.
  void check_counts(const std::vector<size_t>& send_counts, const std::vector<size_t>& recv_counts,
                    const std::string& what) {
    const int n = group_.size;
    std::vector<uint64_t> mine(2 * n), all(2 * size_t(n) * n);
    for (int j = 0; j < n; ++j) mine[j] = send_counts[j], mine[n + j] = recv_counts[j];
    gloo::AllgatherOptions o(ctx_);
    o.setInput<uint64_t>(mine.data(), mine.size());
    o.setOutput<uint64_t>(all.data(), all.size());
    o.setTag(kCountsTag);
    o.setTimeout(options_.timeout);
    gloo::allgather(o);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        const uint64_t sent = all[size_t(i) * 2 * n + j];
        const uint64_t expected = all[size_t(j) * 2 * n + n + i];
        if (sent != expected)
          throw ConfigError(
              fmt::format("{}: rank {} sends {} elements to rank {}, which expects {}", what, i,
                          sent, j, expected),
              "every rank's send count to a peer must equal that peer's recv count from it");
      }
  }

 private:
  void check(const OpMeta& mine, const std::string& what) {
    std::vector<OpMeta> all(group_.size);
    gloo::AllgatherOptions o(ctx_);
    o.setInput<uint8_t>(reinterpret_cast<uint8_t*>(const_cast<OpMeta*>(&mine)), sizeof(OpMeta));
    o.setOutput<uint8_t>(reinterpret_cast<uint8_t*>(all.data()), sizeof(OpMeta) * all.size());
    o.setTag(kCheckTag);
    o.setTimeout(options_.timeout);
    gloo::allgather(o);
    bool agree = std::all_of(all.begin(), all.end(), [&](const OpMeta& m) { return m == mine; });
    if (agree) return;
    std::string ranks;
    for (int i = 0; i < group_.size; ++i)
      ranks += fmt::format("{}rank {}: {}", i ? "; " : "", i, describe_meta(all[i]));
    throw ConfigError(fmt::format("{}: ranks disagree on the collective: {}", what, ranks),
                      "every rank of a group must issue the same collectives in the same order "
                      "with the same count, dtype, reduce op and root");
  }

  GroupInfo group_;
  CommOptions options_;
  std::shared_ptr<gloo::Context> ctx_;  // null for a group of one
  std::mutex mu_;
  std::string broken_;
  uint64_t seq_ = 0;  // worker thread only
  std::unique_ptr<detail::OpQueue> queue_;
};

// Ring reduce-scatter over unbound buffers: in step s rank r sends its partial sum of chunk
// (r-1-s) to r+1 and adds the partial sum of chunk (r-2-s) received from r-1; after n-1 steps
// chunk r is complete. Two accumulators alternate so a send never races the next reduction.
void GlooCore::reduce_scatter_ring(const float* send, float* recv, size_t chunk, ReduceOp op,
                                   uint64_t seq) {
  const int n = group_.size, r = group_.rank;
  const size_t bytes = chunk * sizeof(float);
  std::vector<float> tmp(chunk), acc_a(chunk), acc_b(chunk);
  auto tmp_buf = ctx_->createUnboundBuffer(tmp.data(), bytes);
  auto send_a = ctx_->createUnboundBuffer(acc_a.data(), bytes);
  auto send_b = ctx_->createUnboundBuffer(acc_b.data(), bytes);
  auto first = ctx_->createUnboundBuffer(const_cast<float*>(send), bytes * n);
  auto fn = reduce_fn(op);
  const int right = (r + 1) % n, left = (r - 1 + n) % n;
  auto mod = [n](int x) { return ((x % n) + n) % n; };
  for (int s = 0; s < n - 1; ++s) {
    const uint64_t slot = kReduceScatterSlotPrefix | ((seq & 0xffffffffull) << 16) | s;
    tmp_buf->recv(left, slot, 0, bytes);
    if (s == 0) {
      first->send(right, slot, mod(r - 1) * bytes, bytes);
    } else {
      (s % 2 ? send_a : send_b)->send(right, slot, 0, bytes);
    }
    const int k = mod(r - 2 - s);
    float* out = s == n - 2 ? recv : (s % 2 ? acc_b.data() : acc_a.data());
    if (!tmp_buf->waitRecv(options_.timeout)) throw RemoteError("reduce_scatter: receive aborted");
    fn(out, send + k * chunk, tmp.data(), chunk);
    auto& sent = s == 0 ? first : (s % 2 ? send_a : send_b);
    if (!sent->waitSend(options_.timeout)) throw RemoteError("reduce_scatter: send aborted");
  }
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(GroupInfo group, CommOptions options, std::shared_ptr<gloo::Context> ctx)
      : Communicator(group, options),
        core_(std::make_shared<GlooCore>(group, options, std::move(ctx))) {}

  const char* backend() const override { return "gloo"; }

  std::unique_ptr<Work> allreduce_async(void* buf, size_t count, DType dtype,
                                        ReduceOp op) override {
    auto what =
        describe(fmt::format("allreduce({} x {}, {})", count, dtype_name(dtype), to_string(op)));
    check_dtype(dtype, what);
    OpMeta meta{static_cast<uint32_t>(OpKind::kAllreduce), static_cast<uint32_t>(dtype), count, -1,
                static_cast<uint32_t>(op)};
    auto* data = static_cast<float*>(buf);
    return submit(meta, what, [this, data, count, op] {
      if (count == 0 || size() == 1) return;
      gloo::AllreduceOptions o(core_->ctx());
      o.setOutput<float>(data, count);
      o.setReduceFunction(reduce_fn(op));
      o.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
      o.setTimeout(options_.timeout);
      gloo::allreduce(o);
      if (op == ReduceOp::kAvg) scale(data, count, 1.0f / static_cast<float>(size()));
    });
  }

  std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv, size_t recv_count,
                                             DType dtype, ReduceOp op) override {
    auto what = describe(fmt::format("reduce_scatter({} x {} per rank, {})", recv_count,
                                     dtype_name(dtype), to_string(op)));
    check_dtype(dtype, what);
    OpMeta meta{static_cast<uint32_t>(OpKind::kReduceScatter), static_cast<uint32_t>(dtype),
                recv_count, -1, static_cast<uint32_t>(op)};
    auto* in = static_cast<const float*>(send);
    auto* out = static_cast<float*>(recv);
    return submit(meta, what, [this, in, out, recv_count, op] {
      if (recv_count == 0) return;
      if (size() == 1) {
        std::memcpy(out, in, recv_count * sizeof(float));
        return;
      }
      core_->reduce_scatter_ring(in, out, recv_count, op, next_rs_seq_++);
      if (op == ReduceOp::kAvg) scale(out, recv_count, 1.0f / static_cast<float>(size()));
    });
  }

  std::unique_ptr<Work> allgather_async(const void* send, void* recv, size_t send_count,
                                        DType dtype) override {
    auto what = describe(fmt::format("allgather({} x {} per rank)", send_count, dtype_name(dtype)));
    check_dtype(dtype, what);
    OpMeta meta{static_cast<uint32_t>(OpKind::kAllgather), static_cast<uint32_t>(dtype),
                send_count};
    auto* in = static_cast<const float*>(send);
    auto* out = static_cast<float*>(recv);
    return submit(meta, what, [this, in, out, send_count] {
      if (send_count == 0) return;
      if (size() == 1) {
        if (out != in) std::memmove(out, in, send_count * sizeof(float));
        return;
      }
      gloo::AllgatherOptions o(core_->ctx());
      o.setInput<float>(const_cast<float*>(in), send_count);
      o.setOutput<float>(out, send_count * size());
      o.setTimeout(options_.timeout);
      gloo::allgather(o);
    });
  }

  std::unique_ptr<Work> broadcast_async(void* buf, size_t count, DType dtype, int root) override {
    auto what =
        describe(fmt::format("broadcast({} x {}, root {})", count, dtype_name(dtype), root));
    check_dtype(dtype, what);
    check_rank(root, "root", what);
    OpMeta meta{static_cast<uint32_t>(OpKind::kBroadcast), static_cast<uint32_t>(dtype), count,
                root};
    auto* data = static_cast<float*>(buf);
    return submit(meta, what, [this, data, count, root] {
      if (count == 0 || size() == 1) return;
      gloo::BroadcastOptions o(core_->ctx());
      o.setOutput<float>(data, count);
      o.setRoot(root);
      o.setTimeout(options_.timeout);
      gloo::broadcast(o);
    });
  }

  std::unique_ptr<Work> barrier_async() override {
    auto what = describe("barrier");
    OpMeta meta{static_cast<uint32_t>(OpKind::kBarrier)};
    return submit(meta, what, [this] {
      if (size() == 1) return;
      gloo::BarrierOptions o(core_->ctx());
      o.setTimeout(options_.timeout);
      gloo::barrier(o);
    });
  }

  std::unique_ptr<Work> alltoallv_async(const void* send, const std::vector<size_t>& send_counts,
                                        void* recv, const std::vector<size_t>& recv_counts,
                                        DType dtype) override {
    auto what = describe(fmt::format("alltoallv({} peers x {})", size(), dtype_name(dtype)));
    if (dtype != DType::kF32 && dtype != DType::kI32)
      throw ConfigError(
          fmt::format("{}: {} is not supported by the gloo backend", what, dtype_name(dtype)),
          "use f32 or i32 buffers");
    if (send_counts.size() != size_t(size()) || recv_counts.size() != size_t(size()))
      throw ConfigError(fmt::format("{}: {} send and {} recv counts for a group of {}", what,
                                    send_counts.size(), recv_counts.size(), size()));
    // The consistency check compares the op and the group size; the counts are checked in the
    // body against every peer's.
    OpMeta meta{static_cast<uint32_t>(OpKind::kAlltoallv), static_cast<uint32_t>(dtype),
                uint64_t(size())};
    return submit(meta, what, [this, send, recv, send_counts, recv_counts, what] {
      if (size() == 1) {
        if (send_counts[0] != recv_counts[0])
          throw ConfigError(fmt::format("{}: sends {} elements to itself but expects {}", what,
                                        send_counts[0], recv_counts[0]));
        if (send_counts[0] > 0 && recv != send)
          std::memmove(recv, send, send_counts[0] * sizeof(float));
        return;
      }
      if (options_.check_consistency) core_->check_counts(send_counts, recv_counts, what);
      size_t in_n = 0, out_n = 0;
      for (size_t c : send_counts) in_n += c;
      for (size_t c : recv_counts) out_n += c;
      // gloo refuses null buffers: point empty sides at a dummy element.
      float dummy_in = 0, dummy_out = 0;
      auto* in = in_n ? static_cast<float*>(const_cast<void*>(send)) : &dummy_in;
      auto* out = out_n ? static_cast<float*>(recv) : &dummy_out;
      std::vector<int64_t> sc(send_counts.begin(), send_counts.end());
      std::vector<int64_t> rc(recv_counts.begin(), recv_counts.end());
      gloo::AlltoallvOptions o(core_->ctx());
      o.setInput<float>(in, sc);
      o.setOutput<float>(out, rc);
      o.setTag(kAlltoallvTag);
      o.setTimeout(options_.timeout);
      gloo::alltoallv(o);
    });
  }

  std::unique_ptr<Work> send_async(const void* buf, size_t count, DType dtype, int dst,
                                   uint32_t tag) override {
    auto what = describe(
        fmt::format("send({} x {} to rank {}, tag {})", count, dtype_name(dtype), dst, tag));
    return p2p(true, const_cast<void*>(buf), count, dtype, dst, tag, what);
  }

  std::unique_ptr<Work> recv_async(void* buf, size_t count, DType dtype, int src,
                                   uint32_t tag) override {
    auto what = describe(
        fmt::format("recv({} x {} from rank {}, tag {})", count, dtype_name(dtype), src, tag));
    return p2p(false, buf, count, dtype, src, tag, what);
  }

 private:
  void check_dtype(DType dtype, const std::string& what) const {
    if (dtype != DType::kF32)
      throw ConfigError(
          fmt::format("{}: {} is not supported by the gloo backend", what, dtype_name(dtype)),
          "use float32 buffers on CPU, or the nccl backend on GPUs");
  }

  void check_rank(int peer, const char* role, const std::string& what) const {
    detail::check_peer(peer, size(), role, what);
  }

  detail::AbortFn abort_fn() const { return detail::abort_of(core_); }

  std::unique_ptr<Work> submit(OpMeta meta, std::string what, std::function<void()> body) {
    return detail::submit_op(core_, meta, std::move(what), std::move(body));
  }

  // Point-to-point runs outside the queue (it is matched by tag, not order): the op is posted
  // now and a waiter thread owned by the Work completes it. The slot carries the tag and the
  // byte count, so a send and a recv of different sizes never match (the recv times out).
  std::unique_ptr<Work> p2p(bool is_send, void* buf, size_t count, DType dtype, int peer,
                            uint32_t tag, const std::string& what) {
    check_dtype(dtype, what);
    check_rank(peer, is_send ? "destination" : "source", what);
    if (peer == rank())
      throw ConfigError(fmt::format("{}: a rank cannot send to or receive from itself", what));
    if (tag > kMaxP2pTag)
      throw ConfigError(fmt::format("{}: tag {} is over the limit {}", what, tag, kMaxP2pTag));
    core_->throw_if_broken(what);
    auto state = std::make_shared<OpState>(what);
    const size_t bytes = count * sizeof(float);
    if (bytes == 0) {
      state->finish(nullptr);
      return std::make_unique<StateWork>(std::move(state), abort_fn());
    }
    const uint64_t slot = kP2pSlotPrefix | (static_cast<uint64_t>(tag) << 32) |
                          (static_cast<uint64_t>(bytes) & 0xffffffffull);
    std::unique_ptr<gloo::transport::UnboundBuffer> ub;
    try {
      ub = core_->ctx()->createUnboundBuffer(buf, bytes);
      if (is_send)
        ub->send(peer, slot, 0, bytes);
      else
        ub->recv(peer, slot, 0, bytes);
    } catch (const gloo::Exception& e) {
      core_->abort(e.what());
      std::rethrow_exception(translate(what, e));
    }
    auto core = core_;
    Millis timeout = options_.timeout;
    std::thread waiter([core, state, is_send, timeout, what, ub = std::move(ub)]() mutable {
      std::exception_ptr error;
      try {
        bool ok = is_send ? ub->waitSend(timeout) : ub->waitRecv(timeout);
        if (!ok) throw RemoteError(what + ": aborted");
      } catch (const Error&) {
        error = std::current_exception();
      } catch (const std::exception& e) {
        error = translate(what, e);
        core->abort(e.what());
      }
      ub.reset();
      state->finish(error);
    });
    return std::make_unique<StateWork>(std::move(state), abort_fn(), std::move(waiter));
  }

  std::shared_ptr<GlooCore> core_;
  uint64_t next_rs_seq_ = 0;  // worker thread only
};

}  // namespace

std::unique_ptr<Communicator> create_gloo_communicator(const GroupInfo& group,
                                                       std::shared_ptr<rendezvous::Store> store,
                                                       const GlooOptions& options) {
  if (group.size < 1 || group.rank < 0 || group.rank >= group.size)
    throw ConfigError(fmt::format("gloo group '{}': rank {} is outside a group of size {}",
                                  group.name, group.rank, group.size));
  if (group.size == 1) return std::make_unique<GlooCommunicator>(group, options.comm, nullptr);
  PTRAIN_CHECK(store != nullptr, "gloo group '{}' needs a store", group.name);
  auto device = shared_device(options);
  auto ctx = std::make_shared<gloo::rendezvous::Context>(group.rank, group.size);
  ctx->setTimeout(options.comm.timeout);
  detail::GlooStoreAdaptor adaptor(std::move(store), options.comm.timeout);
  const auto where =
      fmt::format("connecting gloo group '{}' (rank {} of {})", group.name, group.rank, group.size);
  try {
    ctx->connectFullMesh(adaptor, device);
  } catch (const TimeoutError& e) {
    throw TimeoutError(fmt::format("{}: {}", where, e.what()),
                       "did every rank of the group start and create this group?");
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    if (mentions_timeout(e.what()))
      throw TimeoutError(fmt::format("{}: {}", where, e.what()),
                         "did every rank of the group start and create this group?");
    throw IoError(fmt::format("{}: {}", where, e.what()),
                  "check that the ranks can reach each other's address");
  }
  return std::make_unique<GlooCommunicator>(group, options.comm, std::move(ctx));
}

}  // namespace ptrain::comm
