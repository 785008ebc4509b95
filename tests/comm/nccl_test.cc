// The NCCL backend on one GPU (a group of one rank exercises the whole path: the id through the
// Store, the non-blocking init, the stream, events and error polling). Skips without a GPU.
#include "ptrain/comm/nccl.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>

#include "ptrain/core/error.h"
#include "ptrain/rendezvous/memory_store.h"

namespace ptrain::comm {
namespace {

#define SKIP_WITHOUT_GPU()                                                                \
  do {                                                                                    \
    int n = 0;                                                                            \
    cudaError_t err = cudaGetDeviceCount(&n);                                             \
    if (err != cudaSuccess || n == 0)                                                     \
      GTEST_SKIP() << "no usable GPU: " << (err ? cudaGetErrorString(err) : "0 devices"); \
  } while (0)

struct DeviceBuffer {
  explicit DeviceBuffer(size_t bytes) { EXPECT_EQ(cudaMalloc(&ptr, bytes), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(ptr); }
  void* ptr = nullptr;
};

std::unique_ptr<Communicator> make_single(const std::string& name = "world") {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  return create_nccl_communicator({name, 0, 1}, store, {{Millis(30000)}, 0});
}

TEST(Nccl, AllreduceOfOneRankKeepsTheValues) {
  SKIP_WITHOUT_GPU();
  auto comm = make_single();
  std::vector<float> host(1001);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i % 13);
  DeviceBuffer buf(host.size() * 4);
  cudaMemcpy(buf.ptr, host.data(), host.size() * 4, cudaMemcpyHostToDevice);
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax})
    comm->allreduce(buf.ptr, host.size(), DType::kF32, op);
  std::vector<float> out(host.size());
  cudaMemcpy(out.data(), buf.ptr, out.size() * 4, cudaMemcpyDeviceToHost);
  EXPECT_EQ(out, host);
}

TEST(Nccl, Bf16AllreduceIsSupported) {
  SKIP_WITHOUT_GPU();
  auto comm = make_single();
  std::vector<uint16_t> host(64, 0x3f80);  // 1.0 in bf16
  DeviceBuffer buf(host.size() * 2);
  cudaMemcpy(buf.ptr, host.data(), host.size() * 2, cudaMemcpyHostToDevice);
  auto work = comm->allreduce_async(buf.ptr, host.size(), DType::kBF16);
  work->wait(Millis(30000));
  EXPECT_TRUE(work->test());
  std::vector<uint16_t> out(host.size());
  cudaMemcpy(out.data(), buf.ptr, out.size() * 2, cudaMemcpyDeviceToHost);
  EXPECT_EQ(out, host);
}

TEST(Nccl, GatherScatterBroadcastAndBarrierOnOneRank) {
  SKIP_WITHOUT_GPU();
  auto comm = make_single();
  std::vector<float> host = {1, 2, 3, 4, 5};
  DeviceBuffer a(20), b(20);
  cudaMemcpy(a.ptr, host.data(), 20, cudaMemcpyHostToDevice);
  comm->allgather(a.ptr, b.ptr, 5, DType::kF32);
  comm->reduce_scatter(b.ptr, a.ptr, 5, DType::kF32);
  comm->broadcast(a.ptr, 5, DType::kF32, 0);
  comm->barrier();
  std::vector<float> out(5);
  cudaMemcpy(out.data(), a.ptr, 20, cudaMemcpyDeviceToHost);
  EXPECT_EQ(out, host);
  EXPECT_THROW(comm->broadcast(a.ptr, 5, DType::kF32, 3), ConfigError);
}

TEST(Nccl, MissingRankZeroTimesOutNamingTheGroup) {
  SKIP_WITHOUT_GPU();
  auto store = std::make_shared<rendezvous::MemoryStore>();
  try {
    create_nccl_communicator({"tp[0,1]", 1, 2}, store, {{Millis(200)}, 0});
    FAIL() << "joined a group whose rank 0 never came";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("tp[0,1]"), std::string::npos) << e.what();
  }
}

TEST(Nccl, WithoutAGpuCreatingAGroupIsAConfigError) {
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) GTEST_SKIP() << "a GPU is present";
  auto store = std::make_shared<rendezvous::MemoryStore>();
  EXPECT_THROW(create_nccl_communicator({"world", 0, 1}, store, {}), ConfigError);
}

}  // namespace
}  // namespace ptrain::comm
