// The trainer on CUDA: its loss curve equals the CPU run's (fp32, to float tolerance); bf16
// tracks fp32; ranks sharing one GPU train through Gloo with host staging (plain and ZeRO-1)
// and match one rank. Skips without a device (bf16 on the CPU: tests/train/cpu_bf16_test.cc).
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "ptrain/comm/host_staging.h"
#include "ptrain/core/error.h"
#include "ptrain/tensor/ops.h"
#include "support/rank_threads.h"

namespace ptrain::train {
namespace {

using testing::tiny_gpt_spec;

std::vector<double> losses(const TrainResult& r) {
  std::vector<double> out;
  for (const auto& m : r.history) out.push_back(m.loss);
  return out;
}

// dp ranks as threads on the one GPU, Gloo with host staging (what the worker builds when
// several ranks share a GPU). Returns rank 0's result.
TrainResult run_shared_gpu(const spec::JobSpec& spec) {
  const int world = spec.parallel.data;
  auto store = std::make_shared<rendezvous::MemoryStore>();
  std::vector<TrainResult> results(world);
  std::vector<std::exception_ptr> errors(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        comm::BackendOptions bo;
        bo.comm.timeout = Millis(60000);
        auto inner = comm::make_comm_factory(comm::Backend::kGloo, store, bo);
        comm::CommFactory staged = [inner](const comm::GroupSpec& g) {
          return comm::wrap_host_staging(inner(g), tensor::ops(tensor::Device::kCuda));
        };
        comm::ProcessMesh mesh(r, world, {world, 1, 1}, staged);
        TrainContext ctx;
        ctx.rank = r;
        ctx.mesh = &mesh;
        ctx.log = [](const std::string&) {};
        results[r] = run_training(spec, ctx);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return results[0];
}

void expect_close(const std::vector<double>& a, const std::vector<double>& b, double rel) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(a[i], b[i], rel * std::abs(b[i])) << "step " << i + 1;
}

#define REQUIRE_CUDA() \
  if (!tensor::cuda_ops()) GTEST_SKIP() << "no CUDA device"

TEST(GpuTrain, CudaLossCurveEqualsCpuCurve) {
  REQUIRE_CUDA();
  auto spec = tiny_gpt_spec(10);
  auto cpu = testing::run_ranks(spec)[0].result;
  spec.nodes.device = "cuda";
  auto gpu = testing::run_ranks(spec)[0].result;
  expect_close(losses(gpu), losses(cpu), 1e-4);
}

TEST(GpuTrain, Bf16TracksFp32AndLearns) {
  REQUIRE_CUDA();
  auto spec = tiny_gpt_spec(30);
  spec.nodes.device = "cuda";
  auto fp32 = losses(testing::run_ranks(spec)[0].result);
  spec.train.precision = "bf16";
  auto bf16 = losses(testing::run_ranks(spec)[0].result);
  expect_close(bf16, fp32, 3e-2);
  EXPECT_LT(bf16.back(), bf16.front() - 0.2);
}

TEST(GpuTrain, TwoRanksSharingTheGpuMatchOneRank) {
  REQUIRE_CUDA();
  auto spec = tiny_gpt_spec(8);
  spec.nodes.device = "cuda";
  auto one = losses(testing::run_ranks(spec)[0].result);
  spec.parallel.data = 2;
  expect_close(losses(run_shared_gpu(spec)), one, 1e-4);
  spec.parallel.zero = 1;
  expect_close(losses(run_shared_gpu(spec)), one, 1e-4);
}

}  // namespace
}  // namespace ptrain::train
