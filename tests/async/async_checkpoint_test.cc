// Checkpoints of data_mode: async with workers and parameter servers as threads of this process:
// the servers' shards join into the same single file a sync job writes, which a sync job loads
// and continues exactly, a sync checkpoint resumes an async job with another server count, and a
// checkpoint of another model is refused.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "ptrain/core/error.h"
#include "ptrain/data/checkpoint.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/optim/optimizer.h"
#include "ptrain/parallel/param_server.h"
#include "ptrain/rendezvous/memory_store.h"
#include "ptrain/train/async.h"
#include "ptrain/train/checkpointing.h"
#include "ptrain/train/setup.h"
#include "support/rank_threads.h"

namespace ptrain {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ptrain-async-ckpt-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct AsyncRun {
  std::vector<train::TrainResult> workers;
  std::vector<std::string> worker_errors;  // "" when it succeeded
  std::vector<int> server_codes;
  std::vector<std::string> server_errors;
  std::vector<std::string> server_lines;
};

AsyncRun run_async(const spec::JobSpec& spec) {
  const int dp = spec.parallel.data, ns = spec.parallel.servers;
  auto store = std::make_shared<rendezvous::MemoryStore>();
  AsyncRun run;
  run.workers.resize(dp);
  run.worker_errors.resize(dp);
  run.server_codes.assign(ns, -1);
  run.server_errors.resize(ns);
  std::mutex lines_mu;
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < ns; ++i)
    threads.emplace_back([&, i] {
      train::ServerContext sc;
      sc.index = i;
      sc.store = store;
      sc.token = "t";
      sc.log = [&](const std::string& l) {
        std::lock_guard g(lines_mu);
        run.server_lines.push_back(l);
      };
      sc.stop_requested = [&] { return failed.load(); };
      try {
        run.server_codes[i] = train::run_param_server(spec, sc);
      } catch (const Error& e) {
        run.server_errors[i] = e.what();
        failed = true;
      }
    });
  for (int w = 0; w < dp; ++w)
    threads.emplace_back([&, w] {
      train::TrainContext ctx;
      ctx.rank = w;
      ctx.store = store;
      ctx.token = "t";
      ctx.log = [](const std::string&) {};
      ctx.stop_requested = [&] { return failed.load(); };
      try {
        run.workers[w] = train::run_training(spec, ctx);
      } catch (const Error& e) {
        run.worker_errors[w] = e.what();
        failed = true;
      }
    });
  for (auto& t : threads) t.join();
  return run;
}

void expect_ok(const AsyncRun& run) {
  for (const auto& e : run.server_errors) EXPECT_EQ(e, "");
  for (const auto& e : run.worker_errors) EXPECT_EQ(e, "");
  for (int c : run.server_codes) EXPECT_EQ(c, 0);
}

spec::JobSpec async_of(spec::JobSpec s, int workers, int servers) {
  s.parallel.data = workers;
  s.parallel.data_mode = "async";
  s.parallel.servers = servers;
  s.parallel.staleness = 0;
  s.fault_tolerance.hang_timeout_s = 20;
  s.rendezvous.timeout_s = 20;
  return s;
}

// Steps [from, to) of a run that started at step `from` have the losses of `want` (a run from
// step 0) at those steps.
void expect_curve(const std::vector<train::StepMetrics>& got,
                  const std::vector<train::StepMetrics>& want, int64_t from, int64_t to) {
  ASSERT_EQ(int64_t(got.size()), to - from);
  ASSERT_GE(int64_t(want.size()), to);
  for (int64_t s = from; s < to; ++s) {
    const auto& g = got[size_t(s - from)];
    ASSERT_EQ(g.step, s + 1);
    EXPECT_NEAR(g.loss, want[size_t(s)].loss, 1e-5 * std::abs(want[size_t(s)].loss))
        << "step " << s + 1;
  }
}

std::vector<float> tensor_of(const data::SafetensorsFile& f, const std::string& name) {
  const auto* info = f.find(name);
  EXPECT_NE(info, nullptr) << name;
  if (!info) return {};
  int64_t n = 1;
  for (auto d : info->shape) n *= d;
  std::vector<float> out(static_cast<size_t>(n));
  f.read_f32(name, out.data());
  return out;
}

TEST(ParamServer, SnapshotsEveryNthUpdateAndGoesOnFromAResumedVersionAndClock) {
  // Shard [2, 6) of 6 elements, SGD with momentum (one state buffer), resumed at step 5 of 2
  // workers: version 10, both clocks 5.
  optim::ParamLayout layout;
  layout.add("w", 0, 6, false);
  optim::SgdOptions so;
  so.momentum = 0.5f;
  auto sgd = std::make_unique<optim::Sgd>(tensor::cpu_ops(), layout, optim::Shard{2, 6}, so);
  std::vector<parallel::ShardSnapshot> seen;
  std::vector<parallel::ShardSnapshot> pieces;
  parallel::ParamServerOptions po;
  po.index = 1;
  po.workers = 2;
  po.start_version = 10;
  po.start_clock = 5;
  po.snapshot_every = 4;
  po.on_snapshot = [&](parallel::ShardSnapshot s) { seen.push_back(std::move(s)); };
  po.on_piece = [&](parallel::ShardSnapshot s) { pieces.push_back(std::move(s)); };
  parallel::ParamServer server(po, std::move(sgd), std::vector<float>(4, 1.0f));
  server.start();
  parallel::ParamClient client(1, server.address(), "");
  std::vector<float> grads(4, 1.0f), params(4);
  // A pull for step 5 - 0 needs no push: the clocks start at 5.
  auto pr = client.pull(0, 5, params.data(), 4, Millis(2000));
  EXPECT_EQ(pr.version, 10);
  EXPECT_EQ(pr.min_clock, 5);
  client.push(0, 5, 0.5f, grads.data(), 4, false);  // version 11
  client.push(1, 5, 0.5f, grads.data(), 4, false);  // 12: a snapshot
  EXPECT_EQ(server.version(), 12);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].version, 12);
  EXPECT_EQ(seen[0].index, 1);
  EXPECT_EQ(seen[0].begin, 2u);
  // Momentum SGD from 1: buffer 1 then 1.5; parameters 1 - 0.5 = 0.5, then 0.5 - 0.75 = -0.25.
  EXPECT_EQ(seen[0].params, (std::vector<float>(4, -0.25f)));
  ASSERT_EQ(seen[0].state.size(), 1u);
  EXPECT_EQ(seen[0].state[0].second, (std::vector<float>(4, 1.5f)));
  EXPECT_EQ(seen[0].optimizer_steps, 2);
  // What another server sends: one piece per buffer, each with the piece count.
  client.send_snapshot(seen[0]);
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[0].params, seen[0].params);
  EXPECT_EQ(pieces[1].state, seen[0].state);
  for (const auto& p : pieces) {
    EXPECT_EQ(p.pieces, 2);
    EXPECT_EQ(p.version, 12);
    EXPECT_EQ(p.begin, 2u);
  }
  // Without the last pushes the server is not done.
  EXPECT_FALSE(server.wait_done(Millis(10)));
}

TEST(AsyncCheckpoint, ServersWriteOneSyncLayoutFileThatASyncJobContinuesExactly) {
  // One worker: async equals sync step for step, so the checkpoints must equal, bit for bit.
  TempDir tmp;
  const auto base = testing::tiny_gpt_spec(10);
  auto sync_full = testing::run_ranks(base)[0].result;  // the reference curve, 10 steps

  auto sync6 = base;
  sync6.train.steps = 6;
  sync6.checkpoint.dir = tmp.path() + "/sync";
  testing::run_ranks(sync6);

  auto async6 = async_of(base, 1, 2);
  async6.train.steps = 6;
  async6.checkpoint.every = 3;  // server updates; one worker: every 3 steps
  async6.checkpoint.dir = tmp.path() + "/async";
  auto run = run_async(async6);
  expect_ok(run);
  expect_curve(run.workers[0].history, sync_full.history, 0, 6);
  EXPECT_EQ(data::list_checkpoints(async6.checkpoint.dir), (std::vector<int64_t>{6, 3}));

  // The same tensor names, optimizer state and values as the sync job's checkpoint of step 6.
  auto a = data::validate_checkpoint(async6.checkpoint.dir + "/step-6.json");
  auto s = data::validate_checkpoint(sync6.checkpoint.dir + "/step-6.json");
  EXPECT_EQ(a.metadata.at("optimizer"), "adamw");
  EXPECT_EQ(a.metadata.at("optimizer_steps"), "6");
  EXPECT_EQ(a.metadata.at("data_mode"), "async");
  EXPECT_EQ(a.metadata.at("fingerprint.model"), s.metadata.at("fingerprint.model"));
  for (auto [ap, sp] :
       {std::pair{a.model_path(), s.model_path()}, std::pair{a.optim_path(), s.optim_path()}}) {
    auto af = data::SafetensorsFile::open(ap), sf = data::SafetensorsFile::open(sp);
    ASSERT_EQ(af.tensors().size(), sf.tensors().size()) << ap;
    for (const auto& t : sf.tensors()) {
      auto x = tensor_of(af, t.name), y = tensor_of(sf, t.name);
      ASSERT_EQ(x.size(), y.size()) << t.name;
      for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], y[i]) << t.name << "[" << i << "]";
    }
  }

  // A sync job resumes it and runs steps 7..10 as the uninterrupted sync job did.
  auto resumed = base;
  resumed.checkpoint.resume = async6.checkpoint.dir + "/step-6.json";
  resumed.checkpoint.dir = tmp.path() + "/sync-after-async";
  auto r = testing::run_ranks(resumed)[0].result;
  EXPECT_EQ(r.first_step, 6);
  expect_curve(r.history, sync_full.history, 6, 10);
}

TEST(AsyncCheckpoint, ASyncJobLoadsTheAsyncCheckpointsParametersExactly) {
  TempDir tmp;
  auto spec = async_of(testing::tiny_gpt_spec(8), 2, 3);
  spec.parallel.staleness = 2;
  spec.checkpoint.every = 6;  // 2 workers: steps 3, 6 and the end, 8
  spec.checkpoint.dir = tmp.path() + "/async";
  spec.checkpoint.keep = 0;
  auto run = run_async(spec);
  expect_ok(run);
  EXPECT_EQ(data::list_checkpoints(spec.checkpoint.dir), (std::vector<int64_t>{8, 6, 3}));
  auto point = data::validate_checkpoint(spec.checkpoint.dir + "/step-8.json");
  EXPECT_EQ(point.metadata.at("server_updates"), "16");
  EXPECT_EQ(point.metadata.at("optimizer_steps"), "16");

  // What a sync job's loader makes of it: every parameter, buffer and optimizer state.
  auto sync = testing::tiny_gpt_spec(8);
  auto model = train::make_model(sync, tensor::Device::kCpu, 0, 0);
  const auto& ops = tensor::ops(tensor::Device::kCpu);
  auto optimizer = train::make_optimizer(sync, ops, train::make_layout(*model),
                                         optim::Shard::whole(train::make_layout(*model)));
  auto saved = train::load_training_state(point, *model, *optimizer);
  EXPECT_EQ(saved.step, 8);
  EXPECT_EQ(optimizer->steps(), 16);
  auto mf = data::SafetensorsFile::open(point.model_path());
  auto of = data::SafetensorsFile::open(point.optim_path());
  size_t checked = 0;
  for (const auto& p : model->params()) {
    auto want = tensor_of(mf, p.name);
    ASSERT_EQ(want.size(), p.numel);
    for (size_t i = 0; i < p.numel; ++i)
      ASSERT_EQ(model->param_data()[p.offset + i], want[i]) << p.name << "[" << i << "]";
    for (const auto& st : optimizer->state()) {
      auto ws = tensor_of(of, p.name + "." + st.name);
      ASSERT_EQ(ws.size(), p.numel);
      for (size_t i = 0; i < p.numel; ++i) ASSERT_EQ(st.data[p.offset + i], ws[i]) << p.name;
    }
    checked += p.numel;
  }
  EXPECT_EQ(checked, model->num_params());
  // Trained, not the initial weights.
  auto fresh = train::make_model(sync, tensor::Device::kCpu, 0, 0);
  double moved = 0;
  for (size_t i = 0; i < model->num_params(); ++i)
    moved += std::abs(model->param_data()[i] - fresh->param_data()[i]);
  EXPECT_GT(moved, 1e-3);
}

TEST(AsyncCheckpoint, ASyncCheckpointResumesAnAsyncJobWithAnotherServerCount) {
  TempDir tmp;
  const auto base = testing::tiny_gpt_spec(10);
  auto sync_full = testing::run_ranks(base)[0].result;
  auto sync6 = base;
  sync6.train.steps = 6;
  sync6.checkpoint.dir = tmp.path() + "/sync";
  testing::run_ranks(sync6);

  // One worker, three servers: steps 7..10 follow the uninterrupted sync curve.
  auto async = async_of(base, 1, 3);
  async.checkpoint.dir = sync6.checkpoint.dir;
  async.checkpoint.resume = "auto";
  auto run = run_async(async);
  expect_ok(run);
  EXPECT_EQ(run.workers[0].first_step, 6);
  expect_curve(run.workers[0].history, sync_full.history, 6, 10);
  // It went on writing into the folder: its final checkpoint is step 10.
  EXPECT_EQ(data::list_checkpoints(async.checkpoint.dir).front(), 10);

  // Two workers, two servers from the async step-10 checkpoint: the loss goes on from there.
  auto more = async_of(base, 2, 2);
  more.train.steps = 14;
  more.parallel.staleness = 1;
  more.checkpoint.dir = sync6.checkpoint.dir;
  more.checkpoint.resume = "auto";
  auto run2 = run_async(more);
  expect_ok(run2);
  for (const auto& w : run2.workers) {
    EXPECT_EQ(w.first_step, 10);
    ASSERT_EQ(w.history.size(), 4u);
    EXPECT_EQ(w.history.front().step, 11);
    // Close to where the curve was, well below the initial loss.
    EXPECT_LT(w.history.front().loss, sync_full.history[0].loss - 0.1);
    EXPECT_NEAR(w.history.front().loss, sync_full.history[9].loss, 0.3);
  }
  EXPECT_EQ(data::list_checkpoints(more.checkpoint.dir).front(), 14);
}

TEST(AsyncCheckpoint, ACheckpointOfAnotherModelIsRefusedNamingTheSection) {
  TempDir tmp;
  auto other = testing::tiny_gpt_spec(2);
  other.model.set("dim", 64);
  other.checkpoint.dir = tmp.path();
  testing::run_ranks(other);

  auto spec = async_of(testing::tiny_gpt_spec(4), 2, 2);
  spec.checkpoint.dir = tmp.path();
  spec.checkpoint.resume = "auto";
  spec.rendezvous.timeout_s = 3;
  auto run = run_async(spec);
  EXPECT_NE(run.server_errors[0].find("was written by a job with another model section"),
            std::string::npos)
      << run.server_errors[0];
  // Nothing was written over it.
  EXPECT_EQ(data::list_checkpoints(tmp.path()), (std::vector<int64_t>{2}));
}

}  // namespace
}  // namespace ptrain
