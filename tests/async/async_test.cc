// Asynchronous data parallelism with workers and parameter servers as threads of this process
// (a MemoryStore for discovery, gRPC on loopback between them): one worker equals the sync run,
// the staleness bound holds with a slowed worker, and a dead server or worker stops the job.
#include "ptrain/train/async.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <cmath>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "ptrain/core/error.h"
#include "ptrain/parallel/param_server.h"
#include "ptrain/rendezvous/memory_store.h"
#include "ptrain/spec/spec.h"
#include "support/image_data.h"
#include "support/ptrain_process.h"
#include "support/rank_threads.h"

namespace ptrain {
namespace {

struct AsyncRun {
  std::vector<train::TrainResult> workers;
  std::vector<std::vector<std::string>> reports;
  std::vector<int> server_codes;
  std::vector<std::string> errors;  // per worker, "" when it succeeded
};

struct Faults {
  int kill_server = -1;  // this server stops once worker 0 starts step `at_step`
  int64_t at_step = 0;
  int short_worker = -1;  // this worker runs only `short_steps` steps, then stops pushing
  int64_t short_steps = 0;
};

AsyncRun run_async(const spec::JobSpec& spec, const Faults& faults = {}) {
  const int dp = spec.parallel.data, ns = spec.parallel.servers;
  auto store = std::make_shared<rendezvous::MemoryStore>();
  const std::string token = "test-token";
  AsyncRun run;
  run.workers.resize(dp);
  run.reports.resize(dp);
  run.errors.resize(dp);
  run.server_codes.assign(ns, -1);
  std::atomic<bool> kill{false}, workers_done{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < ns; ++i)
    threads.emplace_back([&, i] {
      train::ServerContext sc;
      sc.index = i;
      sc.store = store;
      sc.token = token;
      sc.log = [](const std::string&) {};
      sc.stop_requested = [&, i] {
        return workers_done.load() || (i == faults.kill_server && kill.load());
      };
      run.server_codes[i] = train::run_param_server(spec, sc);
    });
  std::vector<std::thread> workers;
  for (int w = 0; w < dp; ++w)
    workers.emplace_back([&, w] {
      spec::JobSpec mine = spec;
      if (w == faults.short_worker) mine.train.steps = faults.short_steps;
      train::TrainContext ctx;
      ctx.rank = w;
      ctx.store = store;
      ctx.token = token;
      ctx.log = [](const std::string&) {};
      ctx.report = [&run, w](const std::string& j) { run.reports[w].push_back(j); };
      ctx.on_step = [&](int64_t step) {
        if (w == 0 && faults.kill_server >= 0 && step >= faults.at_step) kill = true;
      };
      try {
        run.workers[w] = train::run_training(mine, ctx);
      } catch (const Error& e) {
        run.errors[w] = e.what();
      }
    });
  for (auto& t : workers) t.join();
  workers_done = true;  // servers whose workers failed stop too
  for (auto& t : threads) t.join();
  return run;
}

double field(const std::string& json, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\": ?([-0-9.eE+]+)");
  if (!std::regex_search(json, m, re)) return NAN;
  return std::stod(m[1]);
}

spec::JobSpec async_gpt(int dp, int servers, int staleness, int steps) {
  auto s = testing::tiny_gpt_spec(steps);
  s.parallel.data = dp;
  s.parallel.data_mode = "async";
  s.parallel.servers = servers;
  s.parallel.staleness = staleness;
  s.fault_tolerance.hang_timeout_s = 20;
  return s;
}

spec::JobSpec mlp_spec(int steps) {
  spec::JobSpec s;
  s.name = "mlp";
  s.nodes.device = "cpu";
  s.nodes.threads_per_proc = 1;
  s.model.type = "mlp";
  s.model.set("input", 16).set("hidden", std::vector<int>{32}).set("classes", 4);
  s.data.type = "csv";
  s.data.path = std::string(PTRAIN_SOURCE_DIR) + "/configs/data/blobs.csv";
  s.data.batch_size = 32;
  s.train.steps = steps;
  s.train.seed = 3;
  s.train.log_every = 1;
  s.train.optimizer.type = "adamw";
  s.train.optimizer.lr = 3e-3;
  s.checkpoint.resume = "never";
  return s;
}

void expect_same_curve(const std::vector<train::StepMetrics>& a,
                       const std::vector<train::StepMetrics>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(a[i].loss, b[i].loss, 1e-5 * std::abs(b[i].loss)) << "step " << i + 1;
}

TEST(AsyncDataParallel, OneWorkerGptEqualsSync) {
  auto sync = testing::run_ranks(testing::tiny_gpt_spec(12));
  auto run = run_async(async_gpt(1, 1, 0, 12));
  ASSERT_EQ(run.errors[0], "");
  expect_same_curve(run.workers[0].history, sync[0].result.history);
}

TEST(AsyncDataParallel, OneWorkerMlpEqualsSync) {
  auto base = mlp_spec(15);
  auto sync = testing::run_ranks(base);
  auto spec = base;
  spec.parallel.data_mode = "async";
  auto run = run_async(spec);
  ASSERT_EQ(run.errors[0], "");
  expect_same_curve(run.workers[0].history, sync[0].result.history);
}

TEST(SyncDataParallel, MlpTwoRanksMatchOneProcess) {
  auto base = mlp_spec(15);
  auto one = testing::run_ranks(base);
  auto spec = base;
  spec.parallel.data = 2;
  auto two = testing::run_ranks(spec);
  expect_same_curve(two[0].result.history, one[0].result.history);
}

TEST(SyncDataParallel, ReportsOptimizerMemoryPerRankHalvedByZeroOne) {
  auto spec = testing::tiny_gpt_spec(2);
  spec.parallel.data = 2;
  auto plain = testing::run_ranks(spec);
  spec.parallel.zero = 1;
  auto zero = testing::run_ranks(spec);
  double a = field(plain[0].reports.back(), "optimizer_mb");
  double b = field(zero[0].reports.back(), "optimizer_mb");
  ASSERT_GT(a, 0);
  EXPECT_NEAR(b, a / 2, a * 0.01);
}

TEST(AsyncDataParallel, StalenessBoundHoldsWithASlowWorkerAndLossFalls) {
  ::setenv("PTRAIN_TEST_SLOW_RANK", "1:40", 1);
  auto run = run_async(async_gpt(2, 2, 2, 30));
  ::unsetenv("PTRAIN_TEST_SLOW_RANK");
  ASSERT_EQ(run.errors[0], "");
  ASSERT_EQ(run.errors[1], "");
  ASSERT_EQ(run.reports[0].size(), 30u);
  double seen_max = 0;
  for (const auto& r : run.reports[0]) {
    double m = field(r, "staleness_max");
    ASSERT_FALSE(std::isnan(m)) << r;
    EXPECT_LE(m, 2.0) << r;
    seen_max = std::max(seen_max, m);
  }
  EXPECT_GE(seen_max, 1.0) << "the fast worker never ran ahead of the slow one";
  const auto& h = run.workers[0].history;
  double first = (h[0].loss + h[1].loss + h[2].loss) / 3,
         last = (h[27].loss + h[28].loss + h[29].loss) / 3;
  EXPECT_LT(last, first - 0.1);
  EXPECT_GT(field(run.reports[0].back(), "server_updates_per_s"), 0);
  EXPECT_EQ(run.server_codes, (std::vector<int>{0, 0}));
}

TEST(AsyncDataParallel, ZeroStalenessKeepsWorkersInLockstep) {
  ::setenv("PTRAIN_TEST_SLOW_RANK", "1:20", 1);
  auto run = run_async(async_gpt(2, 1, 0, 10));
  ::unsetenv("PTRAIN_TEST_SLOW_RANK");
  ASSERT_EQ(run.errors[0], "");
  for (const auto& r : run.reports[0]) EXPECT_EQ(field(r, "staleness_max"), 0.0) << r;
}

TEST(AsyncDataParallel, MlpWithTwoWorkersLearns) {
  auto spec = mlp_spec(40);
  spec.parallel.data = 2;
  spec.parallel.data_mode = "async";
  spec.parallel.servers = 2;
  spec.parallel.staleness = 1;
  auto run = run_async(spec);
  ASSERT_EQ(run.errors[0], "");
  ASSERT_EQ(run.errors[1], "");
  const auto& h = run.workers[1].history;
  EXPECT_LT(h.back().loss, h.front().loss * 0.7);
}

// A small ResNet on 8x8 IDX images with local BatchNorm (its running statistics are buffers).
spec::JobSpec resnet_spec(const std::string& dir, int workers, int steps) {
  auto tr = testing::write_idx(dir, "train", 128, 8, 8, 4, 1);
  auto te = testing::write_idx(dir, "test", 32, 8, 8, 4, 2);
  auto s = spec::load_string(
      fmt::format("nodes: {{device: cpu, threads_per_proc: 1, procs_per_node: {}}}\n"
                  "model: {{type: resnet, stem: cifar, widths: [4, 8], blocks: [1, 1]}}\n"
                  "data: {{type: idx, path: {}, labels: {}, eval_path: {}, eval_labels: {},\n"
                  "        batch_size: 16}}\n"
                  "train: {{steps: {}, eval_every: 5, optimizer: {{type: sgd, lr: 0.05}}}}\n"
                  "checkpoint: {{resume: never}}\n",
                  workers, tr.images, tr.labels, te.images, te.labels, steps),
      dir + "/job.yaml");
  s.parallel.data_mode = "async";
  s.parallel.staleness = 0;
  s.fault_tolerance.hang_timeout_s = 20;
  return s;
}

// Buffers travel with the parameters: one async worker equals the sync run, evaluation (which
// reads the BatchNorm running statistics it pulls back from the server) included.
TEST(AsyncDataParallel, OneWorkerResNetEqualsSyncIncludingRunningStatistics) {
  testing::TempDir dir;
  auto spec = resnet_spec(dir.path(), 1, 10);
  auto sync_spec = spec;
  sync_spec.parallel.data_mode = "sync";
  auto sync = testing::run_ranks(sync_spec);
  auto run = run_async(spec);
  ASSERT_EQ(run.errors[0], "");
  expect_same_curve(run.workers[0].history, sync[0].result.history);
  for (size_t i : {4u, 9u}) {
    const auto& a = run.workers[0].history[i];
    const auto& b = sync[0].result.history[i];
    ASSERT_GE(b.eval_loss, 0);
    EXPECT_NEAR(a.eval_loss, b.eval_loss, 1e-5 * b.eval_loss) << "step " << i + 1;
    ASSERT_EQ(a.eval_metrics.size(), 1u);
    EXPECT_EQ(a.eval_metrics[0], b.eval_metrics[0]);
  }
}

TEST(AsyncDataParallel, ResNetWithTwoWorkersLearns) {
  testing::TempDir dir;
  auto spec = resnet_spec(dir.path(), 2, 20);
  spec.parallel.data = 2;
  spec.parallel.staleness = 1;
  auto run = run_async(spec);
  ASSERT_EQ(run.errors[0], "");
  ASSERT_EQ(run.errors[1], "");
  const auto& h = run.workers[0].history;
  EXPECT_LT(h.back().loss, h.front().loss);
  EXPECT_FALSE(h.back().eval_metrics.empty());
}

// The server keeps the buffers: every push adds its delta, every pull returns the sum.
TEST(ParamServer, AddsEveryWorkersBufferDelta) {
  optim::ParamLayout layout;
  layout.add("w", 0, 4, false);
  auto sgd = std::make_unique<optim::Sgd>(tensor::cpu_ops(), layout, optim::Shard::whole(layout));
  parallel::ParamServerOptions po;
  po.workers = 2;
  parallel::ParamServer server(po, std::move(sgd), std::vector<float>(4, 1.0f), {1.0f, 2.0f});
  server.start();
  parallel::ParamClient client(0, server.address(), "");
  std::vector<float> grads(4, 1.0f), params(4), buffers(2);
  const float delta[2] = {0.5f, -1.0f};
  client.push(0, 0, 0.5f, grads.data(), 4, false, delta, 2);
  client.push(1, 0, 0.5f, grads.data(), 4, false, delta, 2);
  client.pull(0, 1, params.data(), 4, Millis(2000), buffers.data(), 2);
  EXPECT_EQ(buffers, (std::vector<float>{2.0f, 0.0f}));
  EXPECT_EQ(params, (std::vector<float>(4, 0.0f)));  // two SGD steps of 0.5
  const float wrong[3] = {0, 0, 0};
  EXPECT_THROW(client.push(0, 1, 0.5f, grads.data(), 4, false, wrong, 3), RemoteError);
}

TEST(AsyncDataParallel, DeadServerStopsWorkersWithAnErrorNamingIt) {
  Faults f;
  f.kill_server = 1;
  f.at_step = 3;
  // Worker 1 takes 20 ms a step (and worker 0, within staleness 1, keeps pace), so the 40 steps
  // cannot end inside the 100 ms in which the server notices it is to stop.
  ::setenv("PTRAIN_TEST_SLOW_RANK", "1:20", 1);
  auto run = run_async(async_gpt(2, 2, 1, 40), f);
  ::unsetenv("PTRAIN_TEST_SLOW_RANK");
  EXPECT_EQ(run.server_codes[1], 1);
  for (int w = 0; w < 2; ++w)
    EXPECT_NE(run.errors[w].find("parameter server 1"), std::string::npos)
        << "worker " << w << ": " << run.errors[w];
}

TEST(AsyncDataParallel, WorkerThatStopsPushingStopsTheOthersNamingIt) {
  Faults f;
  f.short_worker = 1;
  f.short_steps = 3;
  auto spec = async_gpt(2, 1, 1, 10);
  spec.fault_tolerance.hang_timeout_s = 1;
  auto run = run_async(spec, f);
  EXPECT_NE(run.errors[0].find("worker 1, is at step 3"), std::string::npos) << run.errors[0];
}

}  // namespace
}  // namespace ptrain
