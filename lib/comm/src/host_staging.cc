// Host staging over any host communicator: copy in at issue, run, copy out at wait.
#include "ptrain/comm/host_staging.h"

#include <cstring>
#include <vector>

#include "ptrain/core/error.h"

namespace ptrain::comm {
namespace {

// Host bytes for one op, 64-byte aligned for the reduce kernels.
class HostBuffer {
 public:
  explicit HostBuffer(size_t bytes) : data_((bytes + 63) / 64) {}
  void* data() { return data_.data(); }

 private:
  struct alignas(64) Line {
    unsigned char b[64];
  };
  std::vector<Line> data_;
};

// The inner op's Work plus the copy back to the device once it has finished.
class StagedWork : public Work {
 public:
  StagedWork(std::unique_ptr<Work> inner, std::unique_ptr<HostBuffer> in,
             std::unique_ptr<HostBuffer> out, void* device_dst, size_t bytes,
             const tensor::Ops& ops)
      : inner_(std::move(inner)),
        in_(std::move(in)),
        out_(std::move(out)),
        device_dst_(device_dst),
        bytes_(bytes),
        ops_(ops) {}

  ~StagedWork() override {
    // The inner op may still write into our host buffers: let it finish first.
    if (!copied_ && inner_) {
      try {
        inner_->wait(kDefaultCommTimeout);
      } catch (...) {
      }
    }
  }

  bool test() override { return inner_->test(); }

  void wait(Millis timeout) override {
    inner_->wait(timeout);
    if (!copied_ && device_dst_ && bytes_ > 0) {
      HostBuffer* src = out_ ? out_.get() : in_.get();
      ops_.copy_from_host(device_dst_, src->data(), bytes_);
    }
    copied_ = true;
  }

 private:
  std::unique_ptr<Work> inner_;
  std::unique_ptr<HostBuffer> in_, out_;
  void* device_dst_;
  size_t bytes_;
  const tensor::Ops& ops_;
  bool copied_ = false;
};

class HostStagingCommunicator : public Communicator {
 public:
  HostStagingCommunicator(std::unique_ptr<Communicator> inner, const tensor::Ops& ops)
      : Communicator(GroupInfo{inner->name(), inner->rank(), inner->size()}, inner->options()),
        inner_(std::move(inner)),
        ops_(ops) {
    backend_ = std::string(inner_->backend()) + "+host-staging";
  }

  const char* backend() const override { return backend_.c_str(); }

  std::unique_ptr<Work> allreduce_async(void* buf, size_t count, DType dtype,
                                        ReduceOp op) override {
    size_t bytes = count * dtype_size(dtype);
    auto host = stage_in(buf, bytes);
    auto work = inner_->allreduce_async(host->data(), count, dtype, op);
    return finish(std::move(work), std::move(host), nullptr, buf, bytes);
  }

  std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv, size_t recv_count,
                                             DType dtype, ReduceOp op) override {
    size_t out_bytes = recv_count * dtype_size(dtype);
    auto in = stage_in(send, out_bytes * size_t(size()));
    auto out = std::make_unique<HostBuffer>(out_bytes);
    auto work = inner_->reduce_scatter_async(in->data(), out->data(), recv_count, dtype, op);
    return finish(std::move(work), std::move(in), std::move(out), recv, out_bytes);
  }

  std::unique_ptr<Work> allgather_async(const void* send, void* recv, size_t send_count,
                                        DType dtype) override {
    size_t in_bytes = send_count * dtype_size(dtype);
    auto in = stage_in(send, in_bytes);
    auto out = std::make_unique<HostBuffer>(in_bytes * size_t(size()));
    auto work = inner_->allgather_async(in->data(), out->data(), send_count, dtype);
    return finish(std::move(work), std::move(in), std::move(out), recv, in_bytes * size_t(size()));
  }

  std::unique_ptr<Work> broadcast_async(void* buf, size_t count, DType dtype, int root) override {
    size_t bytes = count * dtype_size(dtype);
    auto host = stage_in(buf, bytes);
    auto work = inner_->broadcast_async(host->data(), count, dtype, root);
    return finish(std::move(work), std::move(host), nullptr, buf, bytes);
  }

  std::unique_ptr<Work> send_async(const void* buf, size_t count, DType dtype, int dst,
                                   uint32_t tag) override {
    size_t bytes = count * dtype_size(dtype);
    auto host = stage_in(buf, bytes);
    auto work = inner_->send_async(host->data(), count, dtype, dst, tag);
    return finish(std::move(work), std::move(host), nullptr, nullptr, 0);
  }

  std::unique_ptr<Work> recv_async(void* buf, size_t count, DType dtype, int src,
                                   uint32_t tag) override {
    size_t bytes = count * dtype_size(dtype);
    auto host = std::make_unique<HostBuffer>(bytes);
    auto work = inner_->recv_async(host->data(), count, dtype, src, tag);
    return finish(std::move(work), std::move(host), nullptr, buf, bytes);
  }

  std::unique_ptr<Work> barrier_async() override { return inner_->barrier_async(); }

  std::unique_ptr<Work> alltoallv_async(const void* send, const std::vector<size_t>& send_counts,
                                        void* recv, const std::vector<size_t>& recv_counts,
                                        DType dtype) override {
    size_t in_n = 0, out_n = 0;
    for (size_t c : send_counts) in_n += c;
    for (size_t c : recv_counts) out_n += c;
    const size_t in_bytes = in_n * dtype_size(dtype), out_bytes = out_n * dtype_size(dtype);
    auto in = stage_in(send, in_bytes);
    auto out = std::make_unique<HostBuffer>(out_bytes);
    auto work = inner_->alltoallv_async(in->data(), send_counts, out->data(), recv_counts, dtype);
    return finish(std::move(work), std::move(in), std::move(out), recv, out_bytes);
  }

 private:
  std::unique_ptr<HostBuffer> stage_in(const void* device_src, size_t bytes) {
    auto host = std::make_unique<HostBuffer>(bytes);
    if (bytes > 0) ops_.copy_to_host(host->data(), device_src, bytes);
    return host;
  }
  std::unique_ptr<Work> finish(std::unique_ptr<Work> work, std::unique_ptr<HostBuffer> in,
                               std::unique_ptr<HostBuffer> out, void* device_dst, size_t bytes) {
    return std::make_unique<StagedWork>(std::move(work), std::move(in), std::move(out), device_dst,
                                        bytes, ops_);
  }

  std::unique_ptr<Communicator> inner_;
  const tensor::Ops& ops_;
  std::string backend_;
};

}  // namespace

std::unique_ptr<Communicator> wrap_host_staging(std::unique_ptr<Communicator> inner,
                                                const tensor::Ops& device_ops) {
  PTRAIN_CHECK(inner != nullptr, "wrap_host_staging needs a communicator");
  return std::make_unique<HostStagingCommunicator>(std::move(inner), device_ops);
}

}  // namespace ptrain::comm
