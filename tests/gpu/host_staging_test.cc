// Host staging around Gloo, ranks as threads. The CPU op table stands in for the device: the
// wrapper must copy in at issue and out only at wait, and leave the device buffer untouched
// until then. On a machine with a GPU the same checks run on real device memory.
#include "ptrain/comm/host_staging.h"

#include <gtest/gtest.h>

#include <vector>

#include "comm/harness.h"
#include "ptrain/tensor/tensor.h"

namespace ptrain::comm {
namespace {

using testing::expect_all_ok;
using testing::make_gloo;
using testing::run_ranks;

constexpr Millis kFast{std::chrono::seconds(20)};

float value(int rank, size_t i) {
  return static_cast<float>((rank + 1) * 3 + int(i % 13));
}

// A device buffer of the table's device holding `host`.
struct DeviceBuf {
  DeviceBuf(const tensor::Ops& o, const std::vector<float>& host)
      : t(tensor::Tensor::zeros({int64_t(host.size())}, tensor::DType::kF32, o.device)) {
    if (!host.empty()) t.copy_from_host(host.data(), host.size() * sizeof(float));
  }
  std::vector<float> read() const {
    std::vector<float> out(size_t(t.numel()));
    if (!out.empty()) t.copy_to_host(out.data(), out.size() * sizeof(float));
    return out;
  }
  float* ptr() const { return t.numel() ? t.data<float>() : nullptr; }
  tensor::Tensor t;
};

void check_collectives(const tensor::Ops& dev, int n) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = wrap_host_staging(make_gloo(store, "world", r, n, {kFast}), dev);
    EXPECT_NE(std::string(comm->backend()).find("host-staging"), std::string::npos);
    for (size_t count : {size_t(1), size_t(1001)}) {
      std::vector<float> h(count);
      for (size_t i = 0; i < count; ++i) h[i] = value(r, i);
      DeviceBuf buf(dev, h);
      comm->allreduce(buf.ptr(), count, DType::kF32, ReduceOp::kSum);
      auto got = buf.read();
      for (size_t i = 0; i < count; ++i) {
        float want = 0;
        for (int q = 0; q < n; ++q) want += value(q, i);
        ASSERT_EQ(got[i], want) << "allreduce i " << i;
      }
      // reduce_scatter: chunk r of the sum.
      std::vector<float> hs(count * n);
      for (size_t i = 0; i < hs.size(); ++i) hs[i] = value(r, i);
      DeviceBuf send(dev, hs), recv(dev, std::vector<float>(count, -1.f));
      comm->reduce_scatter(send.ptr(), recv.ptr(), count, DType::kF32, ReduceOp::kSum);
      auto rs = recv.read();
      for (size_t i = 0; i < count; ++i) {
        float want = 0;
        for (int q = 0; q < n; ++q) want += value(q, r * count + i);
        ASSERT_EQ(rs[i], want) << "reduce_scatter i " << i;
      }
      // allgather: rank q's block holds q's values.
      DeviceBuf mine(dev, h), all(dev, std::vector<float>(count * n, -1.f));
      comm->allgather(mine.ptr(), all.ptr(), count, DType::kF32);
      auto ag = all.read();
      for (int q = 0; q < n; ++q)
        for (size_t i = 0; i < count; ++i) ASSERT_EQ(ag[q * count + i], value(q, i));
    }
  }));
}

TEST(HostStaging, CollectivesOnStagedBuffersMatchTheSums) {
  for (int n : {1, 2, 3}) check_collectives(tensor::cpu_ops(), n);
}

TEST(HostStaging, AsyncResultReachesTheBufferOnlyAtWait) {
  const tensor::Ops& dev = tensor::cpu_ops();
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(2, [&](int r) {
    auto comm = wrap_host_staging(make_gloo(store, "world", r, 2, {kFast}), dev);
    DeviceBuf buf(dev, std::vector<float>(64, float(r + 1)));
    auto work = comm->allreduce_async(buf.ptr(), 64, DType::kF32, ReduceOp::kSum);
    // Before wait the staged copy is reduced, not the caller's buffer.
    while (!work->test()) {
    }
    EXPECT_EQ(buf.read()[0], float(r + 1));
    work->wait(kFast);
    EXPECT_EQ(buf.read()[0], 3.0f);
  }));
}

TEST(HostStaging, BroadcastAndPointToPointGoThroughStaging) {
  const tensor::Ops& dev = tensor::cpu_ops();
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(2, [&](int r) {
    auto comm = wrap_host_staging(make_gloo(store, "world", r, 2, {kFast}), dev);
    DeviceBuf b(dev, std::vector<float>(10, r == 1 ? 7.f : 0.f));
    comm->broadcast(b.ptr(), 10, DType::kF32, 1);
    EXPECT_EQ(b.read()[9], 7.f);
    DeviceBuf msg(dev, std::vector<float>(5, r == 0 ? 4.f : 0.f));
    if (r == 0)
      comm->send(msg.ptr(), 5, DType::kF32, 1, 3);
    else
      comm->recv(msg.ptr(), 5, DType::kF32, 0, 3);
    EXPECT_EQ(msg.read()[4], 4.f);
  }));
}

TEST(HostStaging, CollectivesOnCudaDeviceMemory) {
  const tensor::Ops* cuda = tensor::cuda_ops();
  if (!cuda) GTEST_SKIP() << "no CUDA device";
  check_collectives(*cuda, 2);
}

}  // namespace
}  // namespace ptrain::comm
