// data_mode: async. Each worker (data-parallel rank d) runs its own loop over its share of every
// global batch: pull the parameters from every server shard (waiting, stale-synchronously, until
// the slowest worker has pushed step c - s), forward and backward, clip its local gradient norm,
// push the gradients (scaled by 1/global tokens, as in sync mode) to the server shards, which
// each apply one optimizer update per push. No collective between workers.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>

#include "async_checkpoint.h"
#include "fault_injection.h"
#include "loop_common.h"
#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/models/registry.h"
#include "ptrain/optim/clip.h"
#include "ptrain/parallel/param_server.h"
#include "ptrain/spec/spec.h"
#include "ptrain/train/async.h"
#include "ptrain/train/checkpointing.h"
#include "ptrain/train/metrics.h"
#include "ptrain/train/setup.h"

namespace ptrain::train {
namespace {

Millis seconds(double s) {
  return Millis(static_cast<int64_t>(s * 1000));
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  return buf;
}

// A store value as text; TimeoutError naming `what` when it does not appear in time.
std::string store_text(rendezvous::Store& store, const std::string& key, Millis timeout,
                       const std::string& what) {
  try {
    auto bytes = store.get(key, timeout);
    return std::string(bytes.begin(), bytes.end());
  } catch (const TimeoutError&) {
    throw TimeoutError(fmt::format("{} did not arrive within {} ms", what, timeout.count()),
                       "see server-0.log in the run folder");
  }
}

void print_line(const TrainContext& ctx, const std::string& line) {
  if (ctx.log)
    ctx.log(line);
  else
    std::printf("%s\n", line.c_str()), std::fflush(stdout);
}

}  // namespace

TrainResult run_async_training(const spec::JobSpec& spec, const TrainContext& ctx) {
  const auto& par = spec.parallel;
  if (par.tensor != 1 || par.pipeline != 1)
    throw ConfigError("parallel.data_mode: async runs data parallelism only",
                      "set parallel.tensor: 1 and parallel.pipeline: 1, or use data_mode: sync");
  if (!ctx.store)
    throw ConfigError(
        "parallel.data_mode: async needs parameter servers, which `ptrain run` "
        "starts next to the workers",
        "start this job with `ptrain run`");
  const int dp = par.data;
  const int worker = ctx.mesh ? ctx.mesh->coords().dp : ctx.rank;
  PTRAIN_CHECK(worker >= 0 && worker < dp, "worker {} of {}", worker, dp);

  tensor::set_cpu_threads(resolve_threads(spec));
  tensor::Device device = resolve_device(spec.nodes.device);
  const tensor::Ops& ops = tensor::ops(device);
  RankBatches batches(spec, worker, dp);
  auto model = make_model(spec, device, 0, 0);
  const int micro_total = batches.micro_total();
  auto acts = model->make_activations(batches.rows(), batches.seq());

  const size_t n = model->num_params();
  PTRAIN_CHECK(make_layout(*model).total() == n, "layout {} vs params {}",
               make_layout(*model).total(), n);
  // The server shards: addresses from the store, contiguous ranges of the flat parameters.
  std::vector<std::unique_ptr<parallel::ParamClient>> servers;
  std::vector<optim::Shard> shards;
  const Millis rdzv = seconds(spec.rendezvous.timeout_s);
  // Where training continues: server 0's decision (the step of the checkpoint it resumed).
  const AsyncResume resume = decode_resume(store_text(
      *ctx.store, async_resume_key(ctx.restart), rdzv, "parameter server 0's resume decision"));
  for (int i = 0; i < par.servers; ++i) {
    std::string address;
    try {
      auto bytes = ctx.store->get(parallel::param_server_key(i, ctx.restart), rdzv);
      address.assign(bytes.begin(), bytes.end());
    } catch (const TimeoutError&) {
      throw TimeoutError(fmt::format("parameter server {} did not start within "
                                     "rendezvous.timeout_s={}",
                                     i, spec.rendezvous.timeout_s),
                         fmt::format("see server-{}.log in the run folder", i));
    }
    servers.push_back(std::make_unique<parallel::ParamClient>(i, address, ctx.token));
    shards.push_back(optim::Shard::of_rank(n, i, par.servers));
  }
  const Millis wait = seconds(spec.fault_tolerance.hang_timeout_s);
  // GPU workers stage parameters and gradients through host buffers (the RPCs carry host bytes).
  const bool staged = device != tensor::Device::kCpu;
  std::vector<float> host_params(staged ? n : 0), host_grads(staged ? n : 0);
  float* pull_dst = staged ? host_params.data() : model->param_data();
  // The model's buffers (BatchNorm statistics) travel with the parameters through server 0:
  // pulled with them, and this step's change pushed with the gradients.
  const size_t nbuf = model->num_buffer_elems();
  std::vector<float> pulled_buffers(nbuf), buffer_delta(nbuf);
  if (worker == 0 && !resume.manifest.empty())
    print_line(ctx, fmt::format("resumed from {} at step {}", resume.manifest, resume.step));
  const FaultInjection faults = FaultInjection::from_env(ctx.rank, ctx.restart);
  const Millis slow = test_step_delay(worker);
  auto schedule = make_schedule(spec);
  const int64_t total = spec.train.steps;
  const int log_every = std::max(1, spec.train.log_every);
  const int s = par.staleness;
  const bool reporter = worker == 0;
  const double peak = reporter && device == tensor::Device::kCpu ? measure_sgemm_gflops(512, 3) : 0;
  const double flops_per_step = model->train_flops(batches.rows(), batches.seq()) * micro_total;
  const double optimizer_mb = 0;  // the optimizer state lives on the servers

  TrainResult result;
  double time_run = 0, tokens_run = 0;
  double stale_sum = 0, rate = 0;
  int64_t stale_max = 0, stale_count = 0;
  double wait_s = 0;
  result.first_step = resume.step;
  result.steps_done = resume.step;
  if (resume.step >= total) {
    // Nothing left to run (a finished run resumed): leave the servers all the same.
    for (size_t i = 0; i < servers.size(); ++i) {
      const auto& sh = shards[i];
      servers[i]->pull(worker, 0, pull_dst + sh.begin, sh.size(), wait,
                       i == 0 ? pulled_buffers.data() : nullptr, i == 0 ? nbuf : 0, true);
    }
  }
  for (int64_t step = resume.step; step < total; ++step) {
    if (ctx.stop_requested && ctx.stop_requested()) {
      print_line(ctx, fmt::format("stopping at step {}: the job was aborted", step));
      break;
    }
    if (ctx.on_step) ctx.on_step(step);
    faults.before_step(step);
    double t0 = mono_seconds();
    // Pull: every shard, once the slowest worker has pushed step - s.
    int64_t seen = INT64_MAX;
    for (size_t i = 0; i < servers.size(); ++i) {
      const auto& sh = shards[i];
      auto pr =
          servers[i]->pull(worker, std::max<int64_t>(0, step - s), pull_dst + sh.begin, sh.size(),
                           wait, i == 0 ? pulled_buffers.data() : nullptr, i == 0 ? nbuf : 0);
      seen = std::min(seen, pr.min_clock);
    }
    if (staged) ops.copy_from_host(model->param_data(), host_params.data(), n * sizeof(float));
    if (nbuf > 0)
      ops.copy_from_host(model->buffer_data(), pulled_buffers.data(), nbuf * sizeof(float));
    double t1 = mono_seconds();
    wait_s += t1 - t0;
    // Staleness: steps of the slowest worker missing from the parameters this step reads.
    int64_t staleness = std::max<int64_t>(0, step - seen);
    stale_sum += double(staleness);
    stale_max = std::max(stale_max, staleness);
    ++stale_count;

    model->zero_grad();
    double loss_sum = 0;
    const double global_targets = batches.global_targets(step);
    const double local_targets = global_targets / dp;  // every worker's share is equal
    const float dloss = float(1.0 / global_targets);
    for (int m = 0; m < micro_total; ++m) {
      loss_sum += model->forward(batches.fill(step, m), *acts);
      model->backward(*acts, dloss);
    }
    if (slow.count() > 0) std::this_thread::sleep_for(slow);  // the artificial slowdown
    optim::Shard all{0, n};
    double grad_norm = std::sqrt(optim::grad_sum_squares(ops, model->grad_data(), all));
    if (spec.train.optimizer.grad_clip > 0)
      optim::clip_grads(ops, model->grad_data(), all, grad_norm, spec.train.optimizer.grad_clip);
    double lr = schedule.at(step);
    const float* push_src = model->grad_data();
    if (staged) {
      ops.copy_to_host(host_grads.data(), model->grad_data(), n * sizeof(float));
      push_src = host_grads.data();
    }
    if (nbuf > 0) {
      ops.copy_to_host(buffer_delta.data(), model->buffer_data(), nbuf * sizeof(float));
      for (size_t j = 0; j < nbuf; ++j) buffer_delta[j] -= pulled_buffers[j];
    }
    const bool eval_now =
        spec.train.eval_every > 0 && (step + 1) % spec.train.eval_every == 0 && batches.has_eval();
    // The worker's last call leaves the servers: its last push, or the pull it evaluates after.
    const bool last = step + 1 == total;
    for (size_t i = 0; i < servers.size(); ++i) {
      const auto& sh = shards[i];
      rate = servers[i]->push(worker, step, float(lr), push_src + sh.begin, sh.size(),
                              last && !eval_now, i == 0 ? buffer_delta.data() : nullptr,
                              i == 0 ? nbuf : 0);
    }
    double dt = mono_seconds() - t0;
    double loss = loss_sum / local_targets;  // mean over this worker's share
    if (!std::isfinite(loss) || !std::isfinite(grad_norm))
      throw Error(fmt::format("step {}: the loss is {} (grad norm {}) on worker {}", step + 1, loss,
                              grad_norm, worker),
                  "lower train.optimizer.lr or set train.optimizer.grad_clip");
    time_run += dt;
    tokens_run += local_targets;

    StepMetrics sm;
    sm.step = step + 1;
    sm.loss = loss;
    sm.lr = lr;
    sm.grad_norm = grad_norm;
    sm.step_ms = dt * 1e3;
    sm.tokens_per_s = local_targets / dt;
    if (eval_now) {
      // Evaluate the parameters (and buffers) this step's push produced, as the sync loop does
      // after its update: pull them again, within the same staleness bound.
      for (size_t i = 0; i < servers.size(); ++i) {
        const auto& sh = shards[i];
        servers[i]->pull(worker, std::max<int64_t>(0, step + 1 - s), pull_dst + sh.begin, sh.size(),
                         wait, i == 0 ? pulled_buffers.data() : nullptr, i == 0 ? nbuf : 0, last);
      }
      if (staged) ops.copy_from_host(model->param_data(), host_params.data(), n * sizeof(float));
      if (nbuf > 0)
        ops.copy_from_host(model->buffer_data(), pulled_buffers.data(), nbuf * sizeof(float));
      nn::EvalSums sums;  // this worker's share, like its eval loss
      sm.eval_loss =
          eval_loss_sum(*model, *acts, batches, nullptr, sums) / (eval_targets(batches) / dp);
      sm.eval_metrics = models::family_of(spec).eval_metrics(sums);
    }
    result.history.push_back(sm);

    if (reporter && ((step + 1) % log_every == 0 || step + 1 == total)) {
      // tokens_per_s: this worker's rate times the workers (every worker runs the same share).
      MetricsLine line = step_metrics(sm, total, sm.tokens_per_s * dp, flops_per_step / dt / 1e9,
                                      peak, optimizer_mb);
      line.add("staleness_mean", stale_count ? stale_sum / double(stale_count) : 0.0)
          .add_int("staleness_max", stale_max)
          .add("pull_wait_ms", stale_count ? wait_s * 1e3 / double(stale_count) : 0.0)
          .add("server_updates_per_s", rate);
      if (ctx.report) ctx.report(line.json());
      print_line(ctx,
                 fmt::format("{} | staleness {:.2f} (max {}) | {:.0f} updates/s",
                             progress_prefix(sm, total),
                             stale_count ? stale_sum / double(stale_count) : 0.0, stale_max, rate));
      stale_sum = 0;
      stale_max = 0;
      stale_count = 0;
      wait_s = 0;
    }
    result.steps_done = sm.step;
    result.final_loss = loss;
  }
  result.tokens_per_s = time_run > 0 ? tokens_run / time_run : 0;
  return result;
}

int run_param_server(const spec::JobSpec& spec, const ServerContext& ctx) {
  const auto& par = spec.parallel;
  PTRAIN_CHECK(ctx.index >= 0 && ctx.index < par.servers, "server {} of {}", ctx.index,
               par.servers);
  PTRAIN_CHECK(ctx.store != nullptr, "a parameter server needs the job's store");
  tensor::set_cpu_threads(1);
  const tensor::Ops& ops = tensor::ops(tensor::Device::kCpu);
  auto log = [&](const std::string& line) {
    if (ctx.log)
      ctx.log(line);
    else
      std::printf("%s\n", line.c_str()), std::fflush(stdout);
  };
  const int workers = par.data;
  const Millis rdzv = seconds(spec.rendezvous.timeout_s);
  const std::string dir = checkpoint_dir_of(spec, ctx.run_dir);
  const FaultInjection faults = FaultInjection::from_env(spec.world_size() + ctx.index, ctx.round);
  // The same initial parameters as every worker's model (same spec, same seed).
  auto model = make_model(spec, tensor::Device::kCpu, 0, 0);
  auto layout = make_layout(*model);
  const size_t total = layout.total();
  auto shard = optim::Shard::of_rank(layout.total(), ctx.index, par.servers);
  auto optimizer = make_optimizer(spec, ops, std::move(layout), shard);

  // Server 0 decides where training continues (checkpoint.resume); the other servers and the
  // workers read its decision from the store, so that all of them start from the same one.
  std::unique_ptr<data::CheckpointLock> lock;
  AsyncResume resume;
  std::optional<data::CheckpointManifest> point;
  if (ctx.index == 0) {
    if (!dir.empty()) {
      lock = std::make_unique<data::CheckpointLock>(
          dir, fmt::format("parameter server 0, pid {} on {}, run {}", ::getpid(), host_name(),
                           ctx.run_dir.empty() ? "-" : ctx.run_dir));
      if (lock->took_over())
        log(
            fmt::format("warning: taking over the checkpoint lock of a job that ended without "
                        "releasing it ({})",
                        lock->previous()));
      for (const auto& name : data::sweep_incomplete(dir))
        log(fmt::format("checkpoint: removed {}/{}, left by an interrupted save", dir, name));
    }
    if (!dir.empty() || spec.checkpoint.resume != "auto")
      point = find_resume_point(spec.checkpoint.resume, dir);
    if (point) check_fingerprints(spec, *point);
  } else {
    resume = decode_resume(store_text(*ctx.store, async_resume_key(ctx.round), rdzv,
                                      "parameter server 0's resume decision"));
    if (!resume.manifest.empty()) point = data::validate_checkpoint(resume.manifest);
  }
  if (point) {
    auto saved = load_training_state(*point, *model, *optimizer);
    resume = {saved.step, point->manifest_path()};
    log(fmt::format("parameter server {}: resumed from {} at step {}", ctx.index,
                    point->model_path(), saved.step));
  }
  if (ctx.index == 0) ctx.store->set(async_resume_key(ctx.round), encode_resume(resume));
  std::vector<float> init(model->param_data() + shard.begin, model->param_data() + shard.end);
  std::vector<float> buffers;  // server 0 keeps the model's buffers
  if (ctx.index == 0 && model->num_buffer_elems() > 0)
    buffers.assign(model->buffer_data(), model->buffer_data() + model->num_buffer_elems());

  // Checkpoints: server 0 writes; the others send it their snapshots.
  const bool checkpoints = !dir.empty();
  const int64_t every = spec.checkpoint.every;
  std::unique_ptr<AsyncCheckpointWriter> writer;
  if (checkpoints && ctx.index == 0) {
    AsyncCheckpointWriter::Options wo;
    wo.dir = dir;
    wo.keep = spec.checkpoint.keep;
    wo.servers = par.servers;
    wo.workers = workers;
    wo.last_step = resume.step;
    wo.optimizer = optimizer->name();
    wo.faults = &faults;
    wo.log = log;
    auto& meta = wo.metadata;
    meta["seed"] = std::to_string(spec.train.seed);
    meta["mesh"] = fmt::format("{}x1x1", workers);
    meta["data_mode"] = "async";
    meta["servers"] = std::to_string(par.servers);
    meta["model"] = spec.model.type;
    meta["config"] = models::family_of(spec).checkpoint_config(spec.model);
    for (const auto& [part, print] : spec::fingerprints(spec)) meta["fingerprint." + part] = print;
    writer = std::make_unique<AsyncCheckpointWriter>(std::move(wo), std::move(model));
  }
  model.reset();
  std::mutex failure_mu;
  std::string failure;  // a snapshot that could not be handed on
  std::mutex send_mu;   // pushes of several RPC threads may each take a snapshot
  std::unique_ptr<parallel::ParamClient> to_server0;
  auto hand_on = [&](parallel::ShardSnapshot snap) {
    try {
      if (writer) {
        writer->add(std::move(snap));
        return;
      }
      std::lock_guard g(send_mu);
      if (!to_server0) {
        auto address = store_text(*ctx.store, parallel::param_server_key(0, ctx.round), rdzv,
                                  "parameter server 0's address");
        to_server0 = std::make_unique<parallel::ParamClient>(0, address, ctx.token);
      }
      to_server0->send_snapshot(snap);
    } catch (const std::exception& e) {
      std::lock_guard g(failure_mu);
      if (failure.empty())
        failure = fmt::format("the checkpoint snapshot of {} updates: {}", snap.version, e.what());
    }
  };
  auto check_failure = [&] {
    std::lock_guard g(failure_mu);
    if (!failure.empty())
      throw RemoteError(fmt::format("parameter server {}: {}", ctx.index, failure),
                        "see server-0.log in the run folder");
    if (writer && !writer->error().empty())
      throw IoError(fmt::format("parameter server 0: {}", writer->error()),
                    "check the checkpoint folder and its disk");
  };

  parallel::ParamServerOptions po;
  po.index = ctx.index;
  po.workers = workers;
  po.bind = ctx.bind;
  po.port = ctx.port;
  po.token = ctx.token;
  po.max_wait = seconds(spec.fault_tolerance.hang_timeout_s);
  po.start_version = resume.step * workers;
  po.start_clock = resume.step;
  if (checkpoints && every > 0) {
    po.snapshot_every = every;
    po.on_snapshot = hand_on;
  }
  if (writer) po.on_piece = [&](parallel::ShardSnapshot piece) { writer->add(std::move(piece)); };
  parallel::ParamServer server(po, std::move(optimizer), std::move(init), std::move(buffers));
  server.start();
  std::string address = server.address();
  ctx.store->set(parallel::param_server_key(ctx.index, ctx.round),
                 rendezvous::Bytes(address.begin(), address.end()));
  log(fmt::format("parameter server {}: elements [{}, {}) of {}, serving {} worker(s) on {}",
                  ctx.index, shard.begin, shard.end, total, workers, address));
  double t0 = mono_seconds();
  while (!server.wait_done(Millis(100))) {
    if (ctx.stop_requested && ctx.stop_requested()) {
      log(fmt::format("parameter server {}: stopping, the job was aborted", ctx.index));
      return 1;
    }
    check_failure();
  }
  check_failure();
  log(fmt::format("parameter server {}: done, {} updates in {:.1f} s ({:.1f} updates/s)", ctx.index,
                  server.version() - po.start_version, mono_seconds() - t0,
                  server.updates_per_s()));
  if (checkpoints) {
    // The final state, unless the last push took that snapshot already.
    auto snap = server.snapshot();
    const int64_t version = snap.version;
    if (version > po.start_version && !(every > 0 && version % every == 0))
      hand_on(std::move(snap));
    check_failure();
    if (writer) {
      if (!writer->wait_written(version, po.max_wait, ctx.stop_requested)) {
        log(fmt::format("parameter server {}: stopping, the job was aborted", ctx.index));
        return 1;
      }
      check_failure();
      auto secs = writer->save_seconds();
      if (!secs.empty()) {
        std::sort(secs.begin(), secs.end());
        log(fmt::format("checkpoint: {} save(s), median {:.3f} s, max {:.3f} s", secs.size(),
                        secs[secs.size() / 2], secs.back()));
      }
    }
  }
  return 0;
}

}  // namespace ptrain::train
