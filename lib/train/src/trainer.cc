// The training loop. One step: every microbatch of this rank's share of the global batch runs
// forward and backward (gradients accumulate), the data-parallel reducer sums gradients over the
// data group while the last backward runs, the global gradient norm is clipped, the optimizer
// updates (its ZeRO-1 shard, then parameters are allgathered), and rank 0 reports.
#include "ptrain/train/trainer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <mutex>
#include <thread>

#include "fault_injection.h"
#include "loop_common.h"
#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/models/registry.h"
#include "ptrain/optim/clip.h"
#include "ptrain/optim/sparse.h"
#include "ptrain/parallel/data_parallel.h"
#include "ptrain/parallel/pipeline.h"
#include "ptrain/parallel/scalar.h"
#include "ptrain/parallel/tensor_parallel.h"
#include "ptrain/parallel/zero1.h"
#include "ptrain/spec/spec.h"
#include "ptrain/train/async.h"
#include "ptrain/train/checkpointing.h"
#include "ptrain/train/metrics.h"
#include "ptrain/train/setup.h"

namespace ptrain::train {
namespace {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  return buf;
}

using comm::DType;
using comm::ReduceOp;

class Trainer {
 public:
  Trainer(const spec::JobSpec& spec, const TrainContext& ctx) : spec_(spec), ctx_(ctx) {}
  TrainResult run();

 private:
  void setup();
  void log(const std::string& line) const {
    std::lock_guard<std::mutex> lock(log_mu_);  // the background save logs too
    if (ctx_.log)
      ctx_.log(line);
    else
      std::printf("%s\n", line.c_str()), std::fflush(stdout);
  }
  // Sum of the per-target losses of this rank's share of the global batch; gradients
  // accumulated.
  double forward_backward(int64_t step);
  void reduce_and_step(double lr, double* grad_norm);
  // The global mean loss from this rank's sum: summed over the stages (only the last has a
  // loss) and the data group, over `targets` targets.
  double reduce_loss(double local_sum, double targets);
  // Pipeline parallelism (pp > 1): this rank runs its stage's schedule (parallel/pipeline.h).
  double pipeline_forward_backward(int64_t step);
  // Sum of squares of this rank's gradients in `shard`, leaving out the last stage's copy of
  // the tied embedding so that it counts once.
  double local_sum_squares(optim::Shard shard) const;
  // A sum over one group of the mesh (the identity without a mesh).
  double sum_over(comm::GroupKind group, double v);
  void finish_trace();
  // Every rank starts from data-parallel rank 0's buffers (BatchNorm statistics).
  void broadcast_buffers();
  // eval_loss, and the family's eval metrics into `metrics`.
  double evaluate(std::vector<std::pair<std::string, double>>& metrics);
  void save(int64_t step_done, double loss);
  std::vector<std::pair<std::string, FullState>> gather_optimizer_state();
  bool is_reporter() const { return ctx_.rank == 0; }

  const spec::JobSpec& spec_;
  const TrainContext& ctx_;
  comm::MeshShape shape_;
  comm::MeshCoords coords_;
  tensor::Device device_ = tensor::Device::kCpu;
  const tensor::Ops* ops_ = nullptr;

  std::unique_ptr<RankBatches> batches_;
  std::unique_ptr<nn::Model> model_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  // Sharded parameters (embedding tables with their owners): updated sparsely, only the rows
  // a step looked up; table t is params()[sharded_[t]].
  std::unique_ptr<optim::RowSparseOptimizer> sparse_;
  std::vector<size_t> sharded_;
  std::unique_ptr<optim::LrSchedule> schedule_;
  std::unique_ptr<parallel::DataParallelReducer> reducer_;
  std::unique_ptr<parallel::Zero1> zero_;  // parallel.zero: 1 with dp > 1
  std::unique_ptr<parallel::ScalarReducer> scalars_;
  std::unique_ptr<nn::Activations> acts_;
  std::unique_ptr<parallel::PipelineExecutor> pipeline_;
  std::unique_ptr<parallel::TensorParallelComm> tp_comm_;  // tp > 1
  std::unique_ptr<parallel::TensorParallelComm> dp_comm_;  // dp > 1: the model's data group
  parallel::TensorParallelComm::Counters tp_step_;         // of the last training step
  parallel::TensorParallelComm::Counters dp_step_;         // of the last training step
  parallel::PipelineStats pipe_stats_;                     // of the last training step
  std::unique_ptr<parallel::TraceRecorder> trace_;  // `ptrain run --trace` (PTRAIN_TRACE in env)

  int micro_total_ = 1;  // grad_accum * microbatches
  std::string ckpt_dir_;
  FaultInjection faults_;  // test-only: PTRAIN_TEST_FAIL_AT_STEP (fault_injection.h)
  std::unique_ptr<data::CheckpointLock> ckpt_lock_;  // rank 0: this job owns checkpoint.dir
  double peak_gflops_ = 0;
  mutable std::mutex log_mu_;
  BackgroundSaver saver_;  // checkpoint.async (declared last: joined before the lock goes)
};

void Trainer::setup() {
  shape_ = {spec_.parallel.data, spec_.parallel.tensor, spec_.parallel.pipeline};
  if (ctx_.mesh) {
    PTRAIN_CHECK(ctx_.mesh->shape().world() == shape_.world(), "mesh {} vs spec {}",
                 ctx_.mesh->shape().world(), shape_.world());
    coords_ = ctx_.mesh->coords();
  } else if (shape_.world() != 1) {
    throw ConfigError(fmt::format("this job needs {} processes (data {} x tensor {} x pipeline "
                                  "{}) but runs in a single process",
                                  shape_.world(), shape_.dp, shape_.tp, shape_.pp),
                      "start it with `ptrain run`");
  }

  tensor::set_cpu_threads(resolve_threads(spec_));
  device_ = resolve_device(spec_.nodes.device);
  ops_ = &tensor::ops(device_);

  scalars_ = std::make_unique<parallel::ScalarReducer>(device_);
  batches_ = std::make_unique<RankBatches>(spec_, coords_.dp, shape_.dp);
  model_ = make_model(spec_, device_, coords_.pp, coords_.tp, coords_.dp);
  if (shape_.tp > 1) {
    tp_comm_ = std::make_unique<parallel::TensorParallelComm>(ctx_.mesh->tp());
    model_->set_tensor_parallel_comm(tp_comm_.get());
  }
  if (shape_.dp > 1) {
    dp_comm_ = std::make_unique<parallel::TensorParallelComm>(ctx_.mesh->dp());
    model_->set_data_parallel_comm(dp_comm_.get());
  }

  micro_total_ = batches_->micro_total();
  const int rows = batches_->rows(), seq = batches_->seq();
  acts_ = model_->make_activations(rows, seq);

  auto layout = make_layout(*model_);
  optim::Shard shard = optim::Shard::whole(layout);
  if (spec_.parallel.zero == 1 && shape_.dp > 1) {
    zero_ = std::make_unique<parallel::Zero1>(*model_, ctx_.mesh->dp());
    shard = zero_->shard();
  }
  optimizer_ = make_optimizer(spec_, *ops_, std::move(layout), shard);
  for (size_t i = 0; i < model_->params().size(); ++i)
    if (model_->params()[i].sync == nn::ParamInfo::Sync::kSharded) sharded_.push_back(i);
  if (!sharded_.empty()) {
    optim::RowSparseOptions so;
    so.type = spec_.train.optimizer.embeddings.type;
    so.eps = float(spec_.train.optimizer.embeddings.eps);
    sparse_ = std::make_unique<optim::RowSparseOptimizer>(so);
    for (size_t i : sharded_) {
      const auto& p = model_->params()[i];
      sparse_->add_table(p.shape[0], int64_t(p.full_numel() / size_t(p.full_shape[0])));
    }
  }
  schedule_ = std::make_unique<optim::LrSchedule>(make_schedule(spec_));
  if (shape_.dp > 1 && !zero_) {
    parallel::ReducerOptions ro;
    ro.bucket_mb = spec_.parallel.bucket_mb;
    reducer_ = std::make_unique<parallel::DataParallelReducer>(*model_, ctx_.mesh->dp(), ro);
  }

  if (shape_.pp > 1) {
    parallel::PipelineOptions po;
    po.schedule = parallel::parse_schedule_kind(spec_.parallel.schedule);
    po.microbatches = spec_.parallel.microbatches;
    po.rows = rows;
    po.seq = seq;
    po.activation_elems = size_t(tensor::shape_numel(model_->boundary_shape(rows, seq)));
    po.timeout = ctx_.mesh->pp().options().timeout;
    pipeline_ = std::make_unique<parallel::PipelineExecutor>(*model_, ctx_.mesh->pp(), po);
  }
  if (spec_.env.count("PTRAIN_TRACE") && !ctx_.run_dir.empty()) {
    trace_ = std::make_unique<parallel::TraceRecorder>();
    if (pipeline_) pipeline_->set_trace(trace_.get());
  }

  ckpt_dir_ = spec_.checkpoint.dir;
  if (ckpt_dir_.empty() && !ctx_.run_dir.empty()) ckpt_dir_ = ctx_.run_dir + "/checkpoints";
  if (is_reporter() && device_ == tensor::Device::kCpu && spec_.train.steps > 0)
    peak_gflops_ = measure_sgemm_gflops(512, 3);
}

double Trainer::forward_backward(int64_t step) {
  model_->zero_grad();
  if (pipeline_) return pipeline_forward_backward(step);
  double loss_sum = 0;
  const float dloss = float(1.0 / batches_->global_targets(step));
  for (int m = 0; m < micro_total_; ++m) {
    const nn::Batch& batch = batches_->fill(step, m);
    if (reducer_ && m == micro_total_ - 1) reducer_->arm();
    loss_sum += model_->forward(batch, *acts_);
    model_->backward(*acts_, dloss);
  }
  return loss_sum;
}

double Trainer::pipeline_forward_backward(int64_t step) {
  // grad_accum rounds of the schedule over `microbatches` microbatches each.
  const int m = spec_.parallel.microbatches, rounds = spec_.train.grad_accum;
  const float dloss = float(1.0 / batches_->global_targets(step));
  double loss_sum = 0;
  for (int r = 0; r < rounds; ++r) {
    auto batch_of = [&](int micro) { return batches_->fill(step, r * m + micro); };
    std::function<void()> arm;
    if (reducer_ && r == rounds - 1) arm = [this] { reducer_->arm(); };
    loss_sum += pipeline_->train_step(batch_of, dloss, arm);
  }
  pipe_stats_ = pipeline_->last_stats();
  return loss_sum;
}

double Trainer::local_sum_squares(optim::Shard shard) const {
  // Under tensor parallelism replicated parameters count on tensor rank 0 only.
  double s = shape_.tp > 1
                 ? parallel::tensor_parallel_sum_squares(*ops_, *model_, model_->grad_data(),
                                                         shard.begin, shard.end, coords_.tp)
                 : optim::grad_sum_squares(*ops_, model_->grad_data(), shard);
  auto tied = parallel::tied_copy_range(*model_);
  size_t lo = std::max(tied.begin, shard.begin), hi = std::min(tied.end, shard.end);
  if (lo < hi) s -= optim::grad_sum_squares(*ops_, model_->grad_data(), optim::Shard{lo, hi});
  return s;
}

double Trainer::sum_over(comm::GroupKind group, double v) {
  const int size = group == comm::GroupKind::kTp   ? shape_.tp
                   : group == comm::GroupKind::kDp ? shape_.dp
                   : group == comm::GroupKind::kPp ? shape_.pp
                                                   : shape_.world();
  if (!ctx_.mesh || size == 1) return v;  // no communicator is made for a group of one
  return scalars_->reduce_scalar(ctx_.mesh->group(group), v, ReduceOp::kSum);
}

void Trainer::broadcast_buffers() {
  if (model_->buffers().empty() || !ctx_.mesh || shape_.dp == 1) return;
  ctx_.mesh->dp().broadcast(model_->buffer_data(), model_->num_buffer_elems(), DType::kF32, 0);
}

void Trainer::finish_trace() {
  // Each rank writes its piece; after a barrier rank 0 joins the pieces it can see.
  auto c = coords_;
  parallel::write_trace_piece(
      ctx_.run_dir, ctx_.rank, trace_->spans(),
      fmt::format("rank {} (stage {}, dp {}, tp {})", ctx_.rank, c.pp, c.dp, c.tp));
  if (ctx_.mesh) ctx_.mesh->world().barrier();
  if (ctx_.rank == 0) {
    int n = parallel::merge_trace_pieces(ctx_.run_dir, shape_.world());
    log(fmt::format("trace: {}/trace.json ({} of {} ranks)", ctx_.run_dir, n, shape_.world()));
  }
}

void Trainer::reduce_and_step(double lr, double* grad_norm) {
  // Sum the gradients over the data group (buckets, or a reduce-scatter into this rank's ZeRO-1
  // shard) and the tied embedding's over its two stages; then clip by the global norm, whose
  // squares are summed over the tensor, data (ZeRO-1 shards) and pipeline groups.
  if (reducer_) reducer_->finish();
  if (pipeline_)
    parallel::sum_tied_grads(*model_, ctx_.mesh->pp(), ctx_.mesh->pp().options().timeout);
  if (zero_) zero_->reduce_scatter_grads();
  // Sharded parameters' squares live with their owners: added to the data group's sum once.
  const optim::Shard shard = optimizer_->shard();
  const optim::Shard owned{model_->dense_numel(), model_->num_params()};
  double sumsq = sum_over(comm::GroupKind::kTp, local_sum_squares(shard));
  const double owned_sq = sparse_ ? optim::grad_sum_squares(*ops_, model_->grad_data(), owned) : 0;
  if (zero_)
    sumsq = sum_over(comm::GroupKind::kDp, sumsq + owned_sq);
  else if (sparse_)
    sumsq += sum_over(comm::GroupKind::kDp, owned_sq);
  *grad_norm = std::sqrt(sum_over(comm::GroupKind::kPp, sumsq));
  if (spec_.train.optimizer.grad_clip > 0) {
    optim::clip_grads(*ops_, model_->grad_data(), shard, *grad_norm,
                      spec_.train.optimizer.grad_clip);
    if (sparse_)
      optim::clip_grads(*ops_, model_->grad_data(), owned, *grad_norm,
                        spec_.train.optimizer.grad_clip);
  }
  optimizer_->step(model_->param_data(), model_->grad_data(), float(lr));
  if (zero_) zero_->allgather_params();
  if (sparse_) {
    // The embeddings' lr follows the job's schedule: lr_emb * lr / optimizer.lr.
    const auto& o = spec_.train.optimizer;
    const double emb_lr = (o.embeddings.lr > 0 ? o.embeddings.lr : o.lr) * lr / o.lr;
    for (size_t t = 0; t < sharded_.size(); ++t) {
      const auto& p = model_->params()[sharded_[t]];
      sparse_->step(t, model_->param_data() + p.offset, model_->grad_data() + p.offset,
                    model_->touched_rows(sharded_[t]), float(emb_lr));
    }
  }
}

double Trainer::reduce_loss(double local_sum, double targets) {
  local_sum = sum_over(comm::GroupKind::kPp, local_sum);  // the last stage has the loss
  return sum_over(comm::GroupKind::kDp, local_sum) / targets;
}

double Trainer::evaluate(std::vector<std::pair<std::string, double>>& metrics) {
  // Every data rank evaluates with rank 0's buffers (BatchNorm running statistics, which
  // per-rank batch statistics let drift apart), the ones a checkpoint saves.
  broadcast_buffers();
  nn::EvalSums sums;
  nn::EvalScores scores;
  double sum = eval_loss_sum(*model_, *acts_, *batches_, pipeline_.get(), sums, &scores);
  double loss = reduce_loss(sum, eval_targets(*batches_));
  // The sums live on the last stage: summed over the data group and the stages (the others add
  // zeros) under the names the family declares, so every rank runs the same collectives.
  const models::Family& family = models::family_of(spec_);
  nn::EvalSums global;
  for (const auto& name : family.eval_sum_names()) {
    double v = sums.count(name) ? sums.at(name) : 0.0;
    global[name] = sum_over(comm::GroupKind::kPp, sum_over(comm::GroupKind::kDp, v));
  }
  metrics = family.eval_metrics(global);
  if (!pipeline_) {
    // Per-sample scores: every data rank evaluated as many samples; joined in rank order.
    const size_t n = scores.scores.size();
    PTRAIN_CHECK(scores.labels.size() == n, "{} eval scores but {} labels", n,
                 scores.labels.size());
    if (shape_.dp > 1 && n > 0) {
      nn::EvalScores all;
      all.scores.resize(n * size_t(shape_.dp));
      all.labels.resize(n * size_t(shape_.dp));
      ctx_.mesh->dp().allgather(scores.scores.data(), all.scores.data(), n, DType::kF32);
      ctx_.mesh->dp().allgather(scores.labels.data(), all.labels.data(), n, DType::kF32);
      scores = std::move(all);
    }
    if (n > 0)
      for (auto& m : family.eval_score_metrics(scores)) metrics.push_back(std::move(m));
  }
  return loss;
}

std::vector<std::pair<std::string, FullState>> Trainer::gather_optimizer_state() {
  std::vector<std::pair<std::string, FullState>> out;
  for (auto& s : optimizer_->state()) {
    // ZeRO-1: join the data-parallel shards into a full flat buffer first.
    const float* flat = zero_ ? zero_->allgather_state(s.data) : s.data;
    out.emplace_back(s.name, gather_full(*model_, flat, ctx_.mesh, {}, sharded_.empty()));
  }
  if (sparse_ && sparse_->has_state()) {
    // Row-wise accumulators of the sharded tables, joined like the tables: "<param>.sum".
    FullState sums;
    for (size_t t = 0; t < sharded_.size(); ++t) {
      const auto& p = model_->params()[sharded_[t]];
      auto full = gather_rows(ctx_.mesh, p.row_splits, 1, sparse_->accumulator(t));
      if (!full.empty() || p.full_shape[0] == 0) sums.push_back({p.name, {p.full_shape[0]}, full});
    }
    if (ctx_.rank == 0) out.emplace_back("sum", std::move(sums));
  }
  return out;
}

void Trainer::save(int64_t step_done, double loss) {
  if (ckpt_dir_.empty()) return;
  // Collective: every rank takes part in gathering shards; global rank 0 writes.
  const auto blocked_from = Clock::now();
  auto model_state = gather_model_state(*model_, ctx_.mesh);
  auto optim_state = gather_optimizer_state();
  if (ctx_.rank != 0) return;
  std::map<std::string, std::string> meta;
  meta["seed"] = std::to_string(spec_.train.seed);
  meta["data_position"] = std::to_string(step_done);
  meta["loss"] = fmt::format("{:.9g}", loss);
  meta["mesh"] = fmt::format("{}x{}x{}", shape_.dp, shape_.tp, shape_.pp);
  meta["model"] = spec_.model.type;
  meta["config"] = models::family_of(spec_).checkpoint_config(spec_.model);
  // The tokenizer that turns the model's ids into text (`ptrain generate` decodes with it).
  if (!spec_.data.tokenizer.empty())
    meta["tokenizer"] = spec_.data.tokenizer;
  else if (spec_.data.type == "text")
    meta["tokenizer"] = "bytes";
  for (const auto& [part, print] : spec::fingerprints(spec_)) meta["fingerprint." + part] = print;
  const auto t0 = Clock::now();
  // The state is in host memory now (gathered); the write needs nothing of the live model.
  auto write = [this, step_done, t0, model_state = std::move(model_state),
                optim_state = std::move(optim_state), name = optimizer_->name(),
                steps = optimizer_->steps(), meta = std::move(meta)]() {
    // Installed here, after the previous save finished: its hook is process-wide.
    auto fault = faults_.during_save(step_done, ckpt_dir_);
    auto manifest = save_training_state(ckpt_dir_, spec_.checkpoint.keep, step_done, model_state,
                                        optim_state, name, steps, meta);
    log(fmt::format("checkpoint: saved step {} to {} ({:.2f} s)", step_done, manifest.model_path(),
                    std::chrono::duration<double>(Clock::now() - t0).count()));
    if (ctx_.on_checkpoint) ctx_.on_checkpoint(step_done);
  };
  if (!spec_.checkpoint.async) {
    write();
    return;
  }
  saver_.submit(std::move(write));
  log(
      fmt::format("checkpoint: step {} copied to host memory; the step was blocked {:.2f} s, "
                  "writing in the background",
                  step_done, std::chrono::duration<double>(Clock::now() - blocked_from).count()));
}

TrainResult Trainer::run() {
  const double started = mono_seconds();
  const double joined = ctx_.joined_at > 0 ? ctx_.joined_at : started;
  setup();
  const double set_up = mono_seconds();
  TrainResult result;
  int64_t step = 0;
  if (is_reporter() && !ckpt_dir_.empty()) {
    // One job per checkpoint folder; then what interrupted saves left there goes.
    ckpt_lock_ = std::make_unique<data::CheckpointLock>(
        ckpt_dir_, fmt::format("pid {} on {}, run {}", ::getpid(), host_name(),
                               ctx_.run_dir.empty() ? "-" : ctx_.run_dir));
    if (ckpt_lock_->took_over())
      log(
          fmt::format("warning: taking over the checkpoint lock of a job that ended without "
                      "releasing it ({})",
                      ckpt_lock_->previous()));
    for (const auto& name : data::sweep_incomplete(ckpt_dir_))
      log(fmt::format("checkpoint: removed {}/{}, left by an interrupted save", ckpt_dir_, name));
  }
  if (!ckpt_dir_.empty() || spec_.checkpoint.resume != "auto") {
    // Every rank looks only once rank 0 holds the folder and has swept it: a peer that refuses
    // the checkpoint first must not stop rank 0 before the sweep.
    if (ctx_.mesh && shape_.world() > 1) ctx_.mesh->world().barrier();
    auto point = find_resume_point(spec_.checkpoint.resume, ckpt_dir_);
    if (point) check_fingerprints(spec_, *point);
    if (point) {
      auto saved = load_training_state(*point, *model_, *optimizer_, sparse_.get());
      step = saved.step;
      log(fmt::format("resumed from {} at step {}", point->model_path(), step));
    }
  }
  broadcast_buffers();
  result.first_step = step;
  faults_ = FaultInjection::from_env(ctx_.rank, ctx_.restart);
  const Millis test_delay = test_step_delay(ctx_.rank);  // test-only: PTRAIN_TEST_SLOW_RANK
  const int64_t total = spec_.train.steps;
  const int log_every = std::max(1, spec_.train.log_every);
  const int every = spec_.checkpoint.every;
  double tokens_run = 0, time_run = 0;
  double flops_per_step = model_->train_flops(batches_->rows(), batches_->seq()) * micro_total_;
  int64_t last_saved = step;
  double last_loss = 0;
  if (is_reporter())
    log(fmt::format("start-up: join -> first step {:.2f} s (model, optimizer and data {:.2f} s)",
                    mono_seconds() - joined, set_up - started));

  while (step < total) {
    if (ctx_.stop_requested && ctx_.stop_requested()) {
      log(fmt::format("stopping at step {}: the job was aborted", step));
      break;
    }
    if (ctx_.on_step) ctx_.on_step(step);
    faults_.before_step(step);
    if (test_delay.count() > 0) std::this_thread::sleep_for(test_delay);
    if (tp_comm_) tp_comm_->reset_counters();
    if (dp_comm_) dp_comm_->reset_counters();
    double t0 = mono_seconds();
    double lr = schedule_->at(step);
    double local = forward_backward(step);
    double t_fb = mono_seconds();
    double grad_norm = 0;
    reduce_and_step(lr, &grad_norm);
    if (trace_) {
      if (!pipeline_) trace_->add("forward+backward", "compute", t0, t_fb);
      trace_->add("reduce+optimizer", "step", t_fb, mono_seconds());
    }
    const double targets = batches_->global_targets(step);
    double loss = reduce_loss(local, targets);
    double dt = mono_seconds() - t0;
    if (tp_comm_) tp_step_ = tp_comm_->counters();
    if (dp_comm_) dp_step_ = dp_comm_->counters();
    if (!std::isfinite(loss) || !std::isfinite(grad_norm))
      throw Error(fmt::format("step {}: the loss is {} (grad norm {}); stopping without saving",
                              step + 1, loss, grad_norm),
                  "lower train.optimizer.lr or set train.optimizer.grad_clip");
    ++step;
    last_loss = loss;
    tokens_run += targets;
    time_run += dt;

    StepMetrics sm;
    sm.step = step;
    sm.loss = loss;
    sm.lr = lr;
    sm.grad_norm = grad_norm;
    sm.step_ms = dt * 1e3;
    sm.tokens_per_s = targets / dt;
    if (spec_.train.eval_every > 0 && step % spec_.train.eval_every == 0 && batches_->has_eval())
      sm.eval_loss = evaluate(sm.eval_metrics);
    result.history.push_back(sm);

    if (is_reporter() && (step % log_every == 0 || step == total)) {
      double optimizer_bytes = 0;  // this rank's optimizer state (its ZeRO-1 shard)
      for (const auto& st : optimizer_->state()) optimizer_bytes += double(st.size) * sizeof(float);
      if (sparse_) optimizer_bytes += double(sparse_->state_bytes());
      MetricsLine line = step_metrics(sm, total, sm.tokens_per_s, flops_per_step / dt / 1e9,
                                      peak_gflops_, optimizer_bytes / (1 << 20));
      if (reducer_) {
        line.add("comm_wait_ms", reducer_->last_wait_s() * 1e3);
        line.add("comm_span_ms", reducer_->last_span_s() * 1e3);
        double span = reducer_->last_span_s();
        line.add("comm_hidden",
                 span > 0 ? std::max(0.0, 1.0 - reducer_->last_wait_s() / span) : 1.0);
      }
      if (tp_comm_)
        line.add("tp_comm_mb", double(tp_step_.bytes) / 1e6)
            .add("tp_comm_ms", tp_step_.seconds * 1e3)
            .add_int("tp_allreduces", int64_t(tp_step_.calls));
      // Statistics the model sums over the data group inside forward/backward (synchronised
      // BatchNorm): their cost beside the gradient allreduce.
      if (dp_comm_ && dp_step_.calls > 0)
        line.add("dp_stat_mb", double(dp_step_.bytes) / 1e6)
            .add("dp_stat_ms", dp_step_.seconds * 1e3)
            .add_int("dp_stat_allreduces", int64_t(dp_step_.calls));
      if (pipeline_)
        line.add("bubble", pipe_stats_.bubble()).add_int("peak_stash", pipe_stats_.peak_stash);
      // All-to-alls the model ran over the data group (sharded embedding tables).
      if (dp_comm_ && dp_step_.a2a_calls > 0)
        line.add("a2a_mb", double(dp_step_.a2a_bytes) / 1e6)
            .add("a2a_ms", dp_step_.a2a_seconds * 1e3);
      if (ctx_.report) ctx_.report(line.json());
      log(fmt::format("{} | {:.0f} tok/s{}", progress_prefix(sm, total), sm.tokens_per_s,
                      eval_suffix(sm)));
    }
    if (every > 0 && step % every == 0 && step < total) {
      save(step, loss);
      last_saved = step;
    }
  }
  if (step > last_saved && step == total) save(step, last_loss);
  saver_.wait();  // the last checkpoint is complete before the run reports success
  if (trace_) finish_trace();
  result.steps_done = step;
  result.final_loss = last_loss;
  result.tokens_per_s = time_run > 0 ? tokens_run / time_run : 0;
  return result;
}

}  // namespace

TrainResult run_training(const spec::JobSpec& spec, const TrainContext& ctx) {
  if (spec.parallel.data_mode == "async") return run_async_training(spec, ctx);
  Trainer trainer(spec, ctx);
  return trainer.run();
}

}  // namespace ptrain::train
