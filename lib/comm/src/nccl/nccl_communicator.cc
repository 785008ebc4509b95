// The NCCL backend: one ncclComm and one CUDA stream per group; Work = a CUDA event recorded
// after the op, polled together with ncclCommGetAsyncError; a wait that times out aborts the
// communicator (ncclCommAbort) so no rank hangs on a dead or diverged peer.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include <cstring>
#include <mutex>
#include <thread>

#include "ptrain/comm/nccl.h"
#include "ptrain/core/error.h"

namespace ptrain::comm {
namespace {

bool no_gpu(cudaError_t err) {
  return err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice ||
         err == cudaErrorInvalidDevice;
}

void check_cuda(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  auto msg = fmt::format("[{}:{}] {} failed: {} ({})", file, line, call, cudaGetErrorString(err),
                         cudaGetErrorName(err));
  if (no_gpu(err))
    throw ConfigError(msg, "no usable GPU for the nccl backend; use comm: gloo on this machine");
  throw IoError(msg);
}

void check_nccl(ncclResult_t res, const char* call, const char* file, int line,
                const std::string& what) {
  if (res == ncclSuccess || res == ncclInProgress) return;
  auto msg =
      fmt::format("[{}:{}] {}: {} failed: {}", file, line, what, call, ncclGetErrorString(res));
  if (res == ncclInvalidArgument || res == ncclInvalidUsage) throw ConfigError(msg);
  if (res == ncclRemoteError) throw RemoteError(msg, "a peer failed; see its log");
  throw IoError(msg);
}

#define CUDA_CHECK(call) check_cuda((call), #call, __FILE__, __LINE__)
#define NCCL_CHECK(call, what) check_nccl((call), #call, __FILE__, __LINE__, (what))

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kU8:
      return ncclUint8;
  }
  PTRAIN_CHECK(false, "unknown dtype {}", static_cast<int>(dtype));
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMax:
      return ncclMax;
  }
  return ncclSum;
}

constexpr auto kPollInterval = std::chrono::microseconds(50);

// The communicator's state, shared with its Work handles.
class NcclCore {
 public:
  NcclCore(GroupInfo group, CommOptions options, int device)
      : group_(std::move(group)), options_(options), device_(device) {}
  ~NcclCore() {
    if (!comm_) return;
    if (broken_.empty()) {
      // Destroy cleanly when the stream drains in time; abort otherwise (a peer may be gone).
      Deadline deadline(options_.timeout);
      while (cudaStreamQuery(stream_) == cudaErrorNotReady && !deadline.expired())
        std::this_thread::sleep_for(kPollInterval);
      if (cudaStreamQuery(stream_) == cudaSuccess)
        ncclCommDestroy(comm_);
      else
        ncclCommAbort(comm_);
    } else if (!aborted_) {
      ncclCommAbort(comm_);
    }
    if (scratch_) cudaFree(scratch_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  void init(const ncclUniqueId& id, const std::string& what) {
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_CHECK(cudaMalloc(&scratch_, sizeof(float)));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // init and ops return at once; we poll with our own deadline
    NCCL_CHECK(ncclCommInitRankConfig(&comm_, group_.size, const_cast<ncclUniqueId&>(id),
                                      group_.rank, &config),
               what);
    settle(what, Deadline(options_.timeout));
  }

  // Waits until the last NCCL call has left the in-progress state (non-blocking comms).
  void settle(const std::string& what, Deadline deadline) {
    for (;;) {
      ncclResult_t state = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm_, &state), what);
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) fail(what, state);
      if (deadline.expired()) timeout(what);
      std::this_thread::sleep_for(kPollInterval);
    }
  }

  [[noreturn]] void fail(const std::string& what, ncclResult_t state) {
    auto reason =
        fmt::format("{} failed: {} ({})", what, ncclGetErrorString(state), ncclGetLastError(comm_));
    abort(reason);
    throw RemoteError(reason, "a peer failed or left; see its log");
  }

  [[noreturn]] void timeout(const std::string& what) {
    auto reason = fmt::format("{} timed out after {} ms", what, options_.timeout.count());
    abort(reason);
    throw TimeoutError(reason,
                       "a peer may have died, stalled, or issued a different operation; "
                       "the communicator is aborted");
  }

  void abort(const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_.empty()) broken_ = reason;
    if (!aborted_ && comm_) {
      ncclCommAbort(comm_);
      aborted_ = true;
    }
  }

  void throw_if_broken(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!broken_.empty())
      throw RemoteError(fmt::format("{}: the communicator is unusable after an earlier failure: {}",
                                    what, broken_),
                        "recreate the group (a restart does this)");
  }

  // Polls the event and the communicator's async error until done, failure or the deadline.
  bool poll(cudaEvent_t event, const std::string& what) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (aborted_) throw RemoteError(what + ": the communicator was aborted: " + broken_);
    }
    ncclResult_t state = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(comm_, &state), what);
    if (state != ncclSuccess && state != ncclInProgress) fail(what, state);
    cudaError_t q = cudaEventQuery(event);
    if (q == cudaSuccess) return true;
    if (q != cudaErrorNotReady) CUDA_CHECK(q);
    return false;
  }

  ncclComm_t comm() const { return comm_; }
  cudaStream_t stream() const { return stream_; }
  float* scratch() const { return scratch_; }
  int device() const { return device_; }
  const CommOptions& options() const { return options_; }

 private:
  GroupInfo group_;
  CommOptions options_;
  int device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  float* scratch_ = nullptr;  // [1], the barrier's allreduce
  std::mutex mu_;
  std::string broken_;
  bool aborted_ = false;
};

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<NcclCore> core, std::string what)
      : core_(std::move(core)), what_(std::move(what)) {
    CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(event_, core_->stream()));
  }
  ~NcclWork() override { cudaEventDestroy(event_); }

  bool test() override {
    if (done_) return true;
    try {
      done_ = core_->poll(event_, what_);
    } catch (...) {
      done_ = true;  // failed: wait() reports it
    }
    return done_;
  }

  void wait(Millis timeout) override {
    Deadline deadline(timeout);
    for (;;) {
      if (core_->poll(event_, what_)) return;
      if (deadline.expired()) core_->timeout(what_);
      std::this_thread::sleep_for(kPollInterval);
    }
  }

 private:
  std::shared_ptr<NcclCore> core_;
  std::string what_;
  cudaEvent_t event_ = nullptr;
  bool done_ = false;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(GroupInfo group, CommOptions options, std::shared_ptr<NcclCore> core)
      : Communicator(std::move(group), options), core_(std::move(core)) {}

  const char* backend() const override { return "nccl"; }

  std::unique_ptr<Work> allreduce_async(void* buf, size_t count, DType dtype,
                                        ReduceOp op) override {
    auto what =
        describe(fmt::format("allreduce({} x {}, {})", count, dtype_name(dtype), to_string(op)));
    return launch(what, [&] {
      return ncclAllReduce(buf, buf, count, nccl_type(dtype), nccl_op(op), core_->comm(),
                           core_->stream());
    });
  }

  std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv, size_t recv_count,
                                             DType dtype, ReduceOp op) override {
    auto what = describe(fmt::format("reduce_scatter({} x {} per rank, {})", recv_count,
                                     dtype_name(dtype), to_string(op)));
    return launch(what, [&] {
      return ncclReduceScatter(send, recv, recv_count, nccl_type(dtype), nccl_op(op), core_->comm(),
                               core_->stream());
    });
  }

  std::unique_ptr<Work> allgather_async(const void* send, void* recv, size_t send_count,
                                        DType dtype) override {
    auto what = describe(fmt::format("allgather({} x {} per rank)", send_count, dtype_name(dtype)));
    return launch(what, [&] {
      return ncclAllGather(send, recv, send_count, nccl_type(dtype), core_->comm(),
                           core_->stream());
    });
  }

  std::unique_ptr<Work> broadcast_async(void* buf, size_t count, DType dtype, int root) override {
    auto what =
        describe(fmt::format("broadcast({} x {}, root {})", count, dtype_name(dtype), root));
    check_peer(root, what);
    return launch(what, [&] {
      return ncclBroadcast(buf, buf, count, nccl_type(dtype), root, core_->comm(), core_->stream());
    });
  }

  std::unique_ptr<Work> send_async(const void* buf, size_t count, DType dtype, int dst,
                                   uint32_t tag) override {
    auto what = describe(
        fmt::format("send({} x {} to rank {}, tag {})", count, dtype_name(dtype), dst, tag));
    check_peer(dst, what);
    return launch(what, [&] {
      return ncclSend(buf, count, nccl_type(dtype), dst, core_->comm(), core_->stream());
    });
  }

  std::unique_ptr<Work> recv_async(void* buf, size_t count, DType dtype, int src,
                                   uint32_t tag) override {
    auto what = describe(
        fmt::format("recv({} x {} from rank {}, tag {})", count, dtype_name(dtype), src, tag));
    check_peer(src, what);
    return launch(what, [&] {
      return ncclRecv(buf, count, nccl_type(dtype), src, core_->comm(), core_->stream());
    });
  }

  // Grouped ncclSend/ncclRecv, one pair per peer with a non-zero count (the copy to itself is a
  // send/recv pair too, which NCCL allows). Counts are not cross-checked here: NCCL matches by
  // size and a mismatch ends at the timeout.
  std::unique_ptr<Work> alltoallv_async(const void* send, const std::vector<size_t>& send_counts,
                                        void* recv, const std::vector<size_t>& recv_counts,
                                        DType dtype) override {
    auto what = describe(fmt::format("alltoallv({} peers x {})", size(), dtype_name(dtype)));
    if (send_counts.size() != size_t(size()) || recv_counts.size() != size_t(size()))
      throw ConfigError(fmt::format("{}: {} send and {} recv counts for a group of {}", what,
                                    send_counts.size(), recv_counts.size(), size()));
    const size_t elem = dtype_size(dtype);
    return launch(what, [&]() -> ncclResult_t {
      ncclResult_t r = ncclGroupStart();
      if (r != ncclSuccess) return r;
      size_t so = 0, ro = 0;
      for (int p = 0; p < size(); ++p) {
        if (send_counts[p] > 0) {
          r = ncclSend(static_cast<const char*>(send) + so * elem, send_counts[p], nccl_type(dtype),
                       p, core_->comm(), core_->stream());
          if (r != ncclSuccess) break;
        }
        if (recv_counts[p] > 0) {
          r = ncclRecv(static_cast<char*>(recv) + ro * elem, recv_counts[p], nccl_type(dtype), p,
                       core_->comm(), core_->stream());
          if (r != ncclSuccess) break;
        }
        so += send_counts[p];
        ro += recv_counts[p];
      }
      ncclResult_t end = ncclGroupEnd();
      return r != ncclSuccess ? r : end;
    });
  }

  std::unique_ptr<Work> barrier_async() override {
    auto what = describe("barrier");
    return launch(what, [&] {
      return ncclAllReduce(core_->scratch(), core_->scratch(), 1, ncclFloat32, ncclSum,
                           core_->comm(), core_->stream());
    });
  }

 private:
  void check_peer(int peer, const std::string& what) const {
    if (peer < 0 || peer >= size())
      throw ConfigError(
          fmt::format("{}: rank {} is outside the group (size {})", what, peer, size()));
  }

  template <typename Call>
  std::unique_ptr<Work> launch(const std::string& what, Call&& call) {
    core_->throw_if_broken(what);
    CUDA_CHECK(cudaSetDevice(core_->device()));
    NCCL_CHECK(call(), what);
    core_->settle(what, Deadline(options_.timeout));
    return std::make_unique<NcclWork>(core_, what);
  }

  std::shared_ptr<NcclCore> core_;
};

}  // namespace

bool nccl_built() {
  return true;
}

std::unique_ptr<Communicator> create_nccl_communicator(const GroupInfo& group,
                                                       std::shared_ptr<rendezvous::Store> store,
                                                       const NcclOptions& options) {
  if (group.size < 1 || group.rank < 0 || group.rank >= group.size)
    throw ConfigError(fmt::format("nccl group '{}': rank {} is outside a group of size {}",
                                  group.name, group.rank, group.size));
  PTRAIN_CHECK(store != nullptr, "nccl group '{}' needs a store", group.name);
  int device = options.device;
  if (device < 0) CUDA_CHECK(cudaGetDevice(&device));
  const auto what = fmt::format("creating nccl group '{}' (rank {} of {}, cuda:{})", group.name,
                                group.rank, group.size, device);
  ncclUniqueId id;
  if (group.rank == 0) {
    NCCL_CHECK(ncclGetUniqueId(&id), what);
    store->set("nccl_id", std::string(reinterpret_cast<const char*>(&id), sizeof(id)));
  } else {
    std::string bytes;
    try {
      bytes = store->get("nccl_id", options.comm.timeout);
    } catch (const TimeoutError& e) {
      throw TimeoutError(fmt::format("{}: {}", what, e.what()),
                         "did rank 0 of the group start and create this group?");
    }
    PTRAIN_CHECK(bytes.size() == sizeof(id), "nccl_id of {} bytes", bytes.size());
    std::memcpy(&id, bytes.data(), sizeof(id));
  }
  auto core = std::make_shared<NcclCore>(group, options.comm, device);
  core->init(id, what);
  return std::make_unique<NcclCommunicator>(group, options.comm, core);
}

}  // namespace ptrain::comm
