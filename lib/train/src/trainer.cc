// The training loop. One step: every microbatch of this rank's share of the global batch runs
// forward and backward (gradients accumulate), the data-parallel reducer sums gradients over the
// data group while the last backward runs, the global gradient norm is clipped, the optimizer
// updates (its ZeRO-1 shard, then parameters are allgathered), and rank 0 reports.
#include "ptrain/train/trainer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>

#include "fault_injection.h"
#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/optim/clip.h"
#include "ptrain/parallel/data_parallel.h"
#include "ptrain/parallel/pipeline.h"
#include "ptrain/parallel/tensor_parallel.h"
#include "ptrain/train/async.h"
#include "ptrain/train/checkpointing.h"
#include "ptrain/train/metrics.h"
#include "ptrain/train/setup.h"

namespace ptrain::train {
namespace {

using comm::DType;
using comm::ReduceOp;

class Trainer {
 public:
  Trainer(const spec::JobSpec& spec, const TrainContext& ctx) : spec_(spec), ctx_(ctx) {}
  TrainResult run();

 private:
  void setup();
  void log(const std::string& line) const {
    if (ctx_.log)
      ctx_.log(line);
    else
      std::printf("%s\n", line.c_str()), std::fflush(stdout);
  }
  // Fills microbatch `micro` of this rank's share of step `step` into the host buffers.
  void fill_batch(int64_t step, int micro, bool eval);
  nn::Batch batch() const;
  // Sum of the token losses of this rank's share of the global batch; gradients accumulated.
  double forward_backward(int64_t step);
  void reduce_and_step(int64_t step, double lr, double* grad_norm);
  void zero1_step(double lr, double* grad_norm);
  double reduce_loss(double local_sum);
  // Pipeline parallelism (pp > 1): this rank runs its stage's schedule (parallel/pipeline.h).
  double pipeline_forward_backward(int64_t step);
  // Sum of squares of this rank's gradients in `shard`, leaving out the last stage's copy of
  // the tied embedding so that it counts once; and a sum over the pipeline group.
  double local_sum_squares(optim::Shard shard) const;
  double sum_over_stages(double v);
  void finish_trace();
  // Sum of one float over the data group; through a device scalar when the model is on a GPU
  // (NCCL and host staging take device buffers only).
  float allreduce_scalar(float v);
  // Tensor parallelism: a sum of squares over the tensor group (identity when tp == 1).
  double sum_over_tensor_group(double v);
  double evaluate();
  void save(int64_t step_done, double loss);
  std::vector<std::pair<std::string, FullState>> gather_optimizer_state();
  bool is_reporter() const { return ctx_.rank == 0; }

  const spec::JobSpec& spec_;
  const TrainContext& ctx_;
  comm::MeshShape shape_;
  comm::MeshCoords coords_;
  tensor::Device device_ = tensor::Device::kCpu;
  const tensor::Ops* ops_ = nullptr;

  DataSource data_;
  std::unique_ptr<nn::Model> model_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::unique_ptr<optim::LrSchedule> schedule_;
  std::unique_ptr<parallel::DataParallelReducer> reducer_;
  std::unique_ptr<nn::Activations> acts_;
  std::unique_ptr<parallel::PipelineExecutor> pipeline_;
  std::unique_ptr<parallel::TensorParallelComm> tp_comm_;  // tp > 1
  parallel::TensorParallelComm::Counters tp_step_;         // of the last training step
  parallel::PipelineStats pipe_stats_;                     // of the last training step
  std::unique_ptr<parallel::TraceRecorder> trace_;  // `ptrain run --trace` (PTRAIN_TRACE in env)
  tensor::Tensor stage_scalar_;                     // [1] on the device, for sum_over_stages

  int micro_total_ = 1;       // grad_accum * microbatches
  int64_t rows_ = 0;          // sequences (rows) per microbatch on this rank
  double global_tokens_ = 0;  // target tokens (rows) in the global batch
  std::vector<int32_t> tokens_, targets_;
  std::vector<float> features_;
  std::string ckpt_dir_;
  FaultInjection faults_;  // test-only: PTRAIN_TEST_FAIL_AT_STEP (fault_injection.h)
  double peak_gflops_ = 0;

  // ZeRO-1 staging: padded [dp * chunk] buffers.
  size_t zchunk_ = 0;
  tensor::Tensor zsend_, zrecv_, zgather_;
  tensor::Tensor scalar_;  // [1] on the device, for allreduce_scalar
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

  data_ = make_data(spec_);
  model_ = make_model(spec_, device_, coords_.pp, coords_.tp);
  if (shape_.tp > 1) {
    tp_comm_ = std::make_unique<parallel::TensorParallelComm>(ctx_.mesh->tp());
    model_->set_tensor_parallel_comm(tp_comm_.get());
  }

  micro_total_ = spec_.train.grad_accum * spec_.parallel.microbatches;
  rows_ = data_.tokens ? data_.tokens->rows(shape_.dp, micro_total_)
                       : data_.rows->rows(shape_.dp, micro_total_);
  global_tokens_ = double(spec_.data.batch_size) * data_.seq_len;
  if (data_.tokens) {
    tokens_.resize(size_t(rows_) * data_.seq_len);
    targets_.resize(tokens_.size());
  } else {
    features_.resize(size_t(rows_) * spec_.model.input);
    targets_.resize(size_t(rows_));
  }
  acts_ = model_->make_activations(int(rows_), data_.seq_len);

  auto layout = make_layout(*model_);
  optim::Shard shard = optim::Shard::whole(layout);
  bool zero = spec_.parallel.zero == 1 && shape_.dp > 1;
  if (zero) {
    shard = optim::Shard::of_rank(layout.total(), coords_.dp, shape_.dp);
    zchunk_ = (model_->num_params() + shape_.dp - 1) / shape_.dp;
    zsend_ = tensor::Tensor::zeros({int64_t(zchunk_ * shape_.dp)}, tensor::DType::kF32, device_);
    zrecv_ = tensor::Tensor::zeros({int64_t(zchunk_)}, tensor::DType::kF32, device_);
    zgather_ = tensor::Tensor::zeros({int64_t(zchunk_ * shape_.dp)}, tensor::DType::kF32, device_);
  }
  optimizer_ = make_optimizer(spec_, *ops_, std::move(layout), shard);
  schedule_ = std::make_unique<optim::LrSchedule>(make_schedule(spec_));
  if (shape_.dp > 1 && !zero) {
    parallel::ReducerOptions ro;
    ro.bucket_mb = spec_.parallel.bucket_mb;
    reducer_ = std::make_unique<parallel::DataParallelReducer>(*model_, ctx_.mesh->dp(), ro);
  }

  if (shape_.pp > 1) {
    parallel::PipelineOptions po;
    po.schedule = parallel::parse_schedule_kind(spec_.parallel.schedule);
    po.microbatches = spec_.parallel.microbatches;
    po.rows = int(rows_);
    po.seq = data_.seq_len;
    po.activation_elems = size_t(rows_) * size_t(data_.seq_len) * size_t(spec_.model.dim);
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

void Trainer::fill_batch(int64_t step, int micro, bool eval) {
  if (data_.tokens) {
    const auto& sampler = eval ? *data_.eval_tokens : *data_.tokens;
    sampler.fill(step, coords_.dp, shape_.dp, micro, micro_total_, tokens_.data(), targets_.data());
  } else {
    const auto& sampler = eval ? *data_.eval_rows : *data_.rows;
    sampler.fill(step, coords_.dp, shape_.dp, micro, micro_total_, features_.data(),
                 targets_.data());
  }
}

nn::Batch Trainer::batch() const {
  nn::Batch b;
  b.B = int(rows_);
  b.T = data_.seq_len;
  if (data_.tokens)
    b.tokens = tokens_.data();
  else
    b.features = features_.data();
  b.targets = targets_.data();
  return b;
}

double Trainer::forward_backward(int64_t step) {
  model_->zero_grad();
  if (pipeline_) return pipeline_forward_backward(step);
  double loss_sum = 0;
  const float dloss = float(1.0 / global_tokens_);
  for (int m = 0; m < micro_total_; ++m) {
    fill_batch(step, m, false);
    if (reducer_ && m == micro_total_ - 1) reducer_->arm();
    loss_sum += model_->forward(batch(), *acts_);
    model_->backward(*acts_, dloss);
  }
  return loss_sum;
}

double Trainer::pipeline_forward_backward(int64_t step) {
  // grad_accum rounds of the schedule over `microbatches` microbatches each.
  const int m = spec_.parallel.microbatches, rounds = spec_.train.grad_accum;
  const float dloss = float(1.0 / global_tokens_);
  double loss_sum = 0;
  for (int r = 0; r < rounds; ++r) {
    auto batch_of = [&](int micro) {
      fill_batch(step, r * m + micro, false);
      return batch();
    };
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
  auto tied = parallel::tied_copy_range(*model_, coords_.pp, shape_.pp);
  size_t lo = std::max(tied.begin, shard.begin), hi = std::min(tied.end, shard.end);
  if (lo < hi) s -= optim::grad_sum_squares(*ops_, model_->grad_data(), optim::Shard{lo, hi});
  return s;
}

double Trainer::sum_over_stages(double v) {
  if (!pipeline_) return v;
  float f = float(v);
  if (device_ == tensor::Device::kCpu) {
    ctx_.mesh->pp().allreduce(&f, 1, DType::kF32, ReduceOp::kSum);
    return f;
  }
  if (!stage_scalar_.defined())
    stage_scalar_ = tensor::Tensor::zeros({1}, tensor::DType::kF32, device_);
  stage_scalar_.copy_from_host(&f, sizeof f);
  ctx_.mesh->pp().allreduce(stage_scalar_.data<float>(), 1, DType::kF32, ReduceOp::kSum);
  stage_scalar_.copy_to_host(&f, sizeof f);
  return f;
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

void Trainer::zero1_step(double lr, double* grad_norm) {
  auto& dp = ctx_.mesh->dp();
  const size_t n = model_->num_params();
  const auto& shard = optimizer_->shard();
  if (pipeline_) parallel::sum_tied_grads(*model_, ctx_.mesh->pp(), dp.options().timeout);
  // Reduce-scatter the summed gradients into padded chunks: this rank receives its shard.
  ops_->copy(zsend_.data<float>(), model_->grad_data(), n * sizeof(float));
  dp.reduce_scatter(zsend_.data<float>(), zrecv_.data<float>(), zchunk_, DType::kF32,
                    ReduceOp::kSum);
  ops_->copy(model_->grad_data() + shard.begin, zrecv_.data<float>(), shard.size() * sizeof(float));
  // The global norm: each rank's shard sum of squares, summed over the group.
  float sumsq = allreduce_scalar(float(sum_over_tensor_group(local_sum_squares(shard))));
  *grad_norm = std::sqrt(sum_over_stages(sumsq));
  if (spec_.train.optimizer.grad_clip > 0)
    optim::clip_grads(*ops_, model_->grad_data(), shard, *grad_norm,
                      spec_.train.optimizer.grad_clip);
  optimizer_->step(model_->param_data(), model_->grad_data(), float(lr));
  // Allgather the updated parameter shards.
  ops_->copy(zrecv_.data<float>(), model_->param_data() + shard.begin,
             shard.size() * sizeof(float));
  dp.allgather(zrecv_.data<float>(), zgather_.data<float>(), zchunk_, DType::kF32);
  ops_->copy(model_->param_data(), zgather_.data<float>(), n * sizeof(float));
}

void Trainer::reduce_and_step(int64_t /*step*/, double lr, double* grad_norm) {
  if (!zsend_.defined()) {
    if (reducer_) reducer_->finish();
    if (pipeline_)
      parallel::sum_tied_grads(*model_, ctx_.mesh->pp(), ctx_.mesh->pp().options().timeout);
    optim::Shard all{0, model_->num_params()};
    *grad_norm = std::sqrt(sum_over_stages(sum_over_tensor_group(local_sum_squares(all))));
    if (spec_.train.optimizer.grad_clip > 0)
      optim::clip_grads(*ops_, model_->grad_data(), all, *grad_norm,
                        spec_.train.optimizer.grad_clip);
    optimizer_->step(model_->param_data(), model_->grad_data(), float(lr));
    return;
  }
  zero1_step(lr, grad_norm);
}

double Trainer::reduce_loss(double local_sum) {
  local_sum = sum_over_stages(local_sum);  // the loss exists on the last stage only
  if (!ctx_.mesh || shape_.dp == 1) return local_sum / global_tokens_;
  return double(allreduce_scalar(float(local_sum))) / global_tokens_;
}

double Trainer::sum_over_tensor_group(double v) {
  if (!tp_comm_) return v;
  float f = float(v);
  if (!scalar_.defined()) scalar_ = tensor::Tensor::zeros({1}, tensor::DType::kF32, device_);
  scalar_.copy_from_host(&f, sizeof f);
  ctx_.mesh->tp().allreduce(scalar_.data<float>(), 1, DType::kF32, ReduceOp::kSum);
  scalar_.copy_to_host(&f, sizeof f);
  return f;
}

float Trainer::allreduce_scalar(float v) {
  if (device_ == tensor::Device::kCpu) {
    ctx_.mesh->dp().allreduce(&v, 1, DType::kF32, ReduceOp::kSum);
    return v;
  }
  if (!scalar_.defined()) scalar_ = tensor::Tensor::zeros({1}, tensor::DType::kF32, device_);
  scalar_.copy_from_host(&v, sizeof(v));
  ctx_.mesh->dp().allreduce(scalar_.data<float>(), 1, DType::kF32, ReduceOp::kSum);
  scalar_.copy_to_host(&v, sizeof(v));
  return v;
}

double Trainer::evaluate() {
  // A fixed number of eval batches, read in order; forward only.
  const int64_t batches = 4;
  double sum = 0;
  for (int64_t e = 0; e < batches; ++e) {
    if (pipeline_) {
      sum += pipeline_->forward_only(
          [&](int m) {
            fill_batch(e, m, true);
            return batch();
          },
          micro_total_);
      continue;
    }
    for (int m = 0; m < micro_total_; ++m) {
      fill_batch(e, m, true);
      sum += model_->forward(batch(), *acts_);
    }
  }
  return reduce_loss(sum) / double(batches);
}

std::vector<std::pair<std::string, FullState>> Trainer::gather_optimizer_state() {
  std::vector<std::pair<std::string, FullState>> out;
  const size_t n = model_->num_params();
  const auto& shard = optimizer_->shard();
  for (auto& s : optimizer_->state()) {
    const float* flat = s.data;
    if (zsend_.defined()) {
      // ZeRO-1: join the data-parallel shards into a full flat buffer first.
      ops_->copy(zrecv_.data<float>(), s.data, shard.size() * sizeof(float));
      ctx_.mesh->dp().allgather(zrecv_.data<float>(), zgather_.data<float>(), zchunk_, DType::kF32);
      flat = zgather_.data<float>();
    }
    (void)n;
    out.emplace_back(s.name, gather_full(*model_, flat, ctx_.mesh));
  }
  return out;
}

void Trainer::save(int64_t step_done, double loss) {
  if (ckpt_dir_.empty()) return;
  // Collective: every rank takes part in gathering shards; global rank 0 writes.
  auto model_state = gather_full(*model_, model_->param_data(), ctx_.mesh);
  auto optim_state = gather_optimizer_state();
  if (ctx_.rank != 0) return;
  std::map<std::string, std::string> meta;
  meta["seed"] = std::to_string(spec_.train.seed);
  meta["data_position"] = std::to_string(step_done);
  meta["loss"] = fmt::format("{:.9g}", loss);
  meta["mesh"] = fmt::format("{}x{}x{}", shape_.dp, shape_.tp, shape_.pp);
  meta["model"] = spec_.model.type;
  if (spec_.model.type == "gpt")
    meta["config"] =
        fmt::format(R"({{"layers": {}, "heads": {}, "dim": {}, "seq_len": {}, "vocab": {}}})",
                    spec_.model.layers, spec_.model.heads, spec_.model.dim, spec_.model.seq_len,
                    spec_.model.vocab);
  auto fault = faults_.during_save(step_done, ckpt_dir_);
  auto manifest = save_training_state(ckpt_dir_, spec_.checkpoint.keep, step_done, model_state,
                                      optim_state, *optimizer_, meta);
  log(fmt::format("checkpoint: saved step {} to {}", step_done, manifest.model_path()));
}

TrainResult Trainer::run() {
  setup();
  TrainResult result;
  int64_t step = 0;
  if (!ckpt_dir_.empty() || spec_.checkpoint.resume != "auto") {
    auto point = find_resume_point(spec_.checkpoint.resume, ckpt_dir_);
    if (point) {
      auto saved = load_training_state(*point, *model_, *optimizer_);
      step = saved.step;
      log(fmt::format("resumed from {} at step {}", point->model_path(), step));
    }
  }
  result.first_step = step;
  faults_ = FaultInjection::from_env(ctx_.rank, ctx_.restart);
  const int64_t total = spec_.train.steps;
  const int log_every = std::max(1, spec_.train.log_every);
  const int every = spec_.checkpoint.every;
  double tokens_run = 0, time_run = 0;
  double flops_per_step = model_->train_flops(int(rows_), data_.seq_len) * micro_total_;
  int64_t last_saved = step;
  double last_loss = 0;

  while (step < total) {
    if (ctx_.stop_requested && ctx_.stop_requested()) {
      log(fmt::format("stopping at step {}: the job was aborted", step));
      break;
    }
    if (ctx_.on_step) ctx_.on_step(step);
    faults_.before_step(step);
    if (tp_comm_) tp_comm_->reset_counters();
    double t0 = mono_seconds();
    double lr = schedule_->at(step);
    double local = forward_backward(step);
    double t_fb = mono_seconds();
    double grad_norm = 0;
    reduce_and_step(step, lr, &grad_norm);
    if (trace_) {
      if (!pipeline_) trace_->add("forward+backward", "compute", t0, t_fb);
      trace_->add("reduce+optimizer", "step", t_fb, mono_seconds());
    }
    double loss = reduce_loss(local);
    double dt = mono_seconds() - t0;
    if (tp_comm_) tp_step_ = tp_comm_->counters();
    if (!std::isfinite(loss) || !std::isfinite(grad_norm))
      throw Error(fmt::format("step {}: the loss is {} (grad norm {}); stopping without saving",
                              step + 1, loss, grad_norm),
                  "lower train.optimizer.lr or set train.optimizer.grad_clip");
    ++step;
    last_loss = loss;
    tokens_run += global_tokens_;
    time_run += dt;

    StepMetrics sm;
    sm.step = step;
    sm.loss = loss;
    sm.lr = lr;
    sm.grad_norm = grad_norm;
    sm.step_ms = dt * 1e3;
    sm.tokens_per_s = global_tokens_ / dt;
    if (spec_.train.eval_every > 0 && step % spec_.train.eval_every == 0 &&
        (data_.eval_tokens || data_.eval_rows))
      sm.eval_loss = evaluate();
    result.history.push_back(sm);

    if (is_reporter() && (step % log_every == 0 || step == total)) {
      MetricsLine line;
      line.add_int("step", step).add_int("total_steps", total).add_exact("loss", loss);
      line.add("lr", lr);
      line.add("grad_norm", grad_norm)
          .add("tokens_per_s", sm.tokens_per_s)
          .add("step_ms", sm.step_ms);
      double gflops = flops_per_step / dt / 1e9;
      line.add("gflops", gflops);
      if (peak_gflops_ > 0) line.add("mfu", gflops / peak_gflops_);
      line.add("mem_mb", resident_mb());
      double optimizer_bytes = 0;  // this rank's optimizer state (its ZeRO-1 shard)
      for (const auto& st : optimizer_->state()) optimizer_bytes += double(st.size) * sizeof(float);
      line.add("optimizer_mb", optimizer_bytes / (1 << 20));
      if (sm.eval_loss >= 0) line.add("eval_loss", sm.eval_loss);
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
      if (pipeline_)
        line.add("bubble", pipe_stats_.bubble()).add_int("peak_stash", pipe_stats_.peak_stash);
      if (ctx_.report) ctx_.report(line.json());
      log(fmt::format(
          "step {}/{} | loss {:.4f} | lr {:.3e} | norm {:.3f} | {:.1f} ms | {:.0f} tok/s{}", step,
          total, loss, lr, grad_norm, sm.step_ms, sm.tokens_per_s,
          sm.eval_loss >= 0 ? fmt::format(" | eval {:.4f}", sm.eval_loss) : ""));
    }
    if (every > 0 && step % every == 0 && step < total) {
      save(step, loss);
      last_saved = step;
    }
  }
  if (step > last_saved && step == total) save(step, last_loss);
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
