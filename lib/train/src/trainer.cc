// The training loop. One step: every microbatch of this rank's share of the global batch runs
// forward and backward (gradients accumulate), the data-parallel reducer sums gradients over the
// data group while the last backward runs, the global gradient norm is clipped, the optimizer
// updates (its ZeRO-1 shard, then parameters are allgathered), and rank 0 reports.
#include "ptrain/train/trainer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>

#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/optim/clip.h"
#include "ptrain/parallel/data_parallel.h"
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

  int micro_total_ = 1;       // grad_accum * microbatches
  int64_t rows_ = 0;          // sequences (rows) per microbatch on this rank
  double global_tokens_ = 0;  // target tokens (rows) in the global batch
  std::vector<int32_t> tokens_, targets_;
  std::vector<float> features_;
  std::string ckpt_dir_;
  double peak_gflops_ = 0;

  // ZeRO-1 staging: padded [dp * chunk] buffers.
  size_t zchunk_ = 0;
  tensor::Tensor zsend_, zrecv_, zgather_;
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
  if (shape_.pp > 1)
    throw ConfigError("parallel.pipeline > 1 is not available in this build yet",
                      "set parallel.pipeline: 1");

  tensor::set_cpu_threads(resolve_threads(spec_));
  device_ = resolve_device(spec_.nodes.device);
  ops_ = &tensor::ops(device_);

  data_ = make_data(spec_);
  model_ = make_model(spec_, device_, coords_.pp, coords_.tp);

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

void Trainer::zero1_step(double lr, double* grad_norm) {
  auto& dp = ctx_.mesh->dp();
  const size_t n = model_->num_params();
  const auto& shard = optimizer_->shard();
  // Reduce-scatter the summed gradients into padded chunks: this rank receives its shard.
  ops_->copy(zsend_.data<float>(), model_->grad_data(), n * sizeof(float));
  dp.reduce_scatter(zsend_.data<float>(), zrecv_.data<float>(), zchunk_, DType::kF32,
                    ReduceOp::kSum);
  ops_->copy(model_->grad_data() + shard.begin, zrecv_.data<float>(), shard.size() * sizeof(float));
  // The global norm: each rank's shard sum of squares, summed over the group.
  float sumsq = float(optim::grad_sum_squares(*ops_, model_->grad_data(), shard));
  dp.allreduce(&sumsq, 1, DType::kF32, ReduceOp::kSum);
  *grad_norm = std::sqrt(double(sumsq));
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
    optim::Shard all{0, model_->num_params()};
    *grad_norm = std::sqrt(optim::grad_sum_squares(*ops_, model_->grad_data(), all));
    if (spec_.train.optimizer.grad_clip > 0)
      optim::clip_grads(*ops_, model_->grad_data(), all, *grad_norm,
                        spec_.train.optimizer.grad_clip);
    optimizer_->step(model_->param_data(), model_->grad_data(), float(lr));
    return;
  }
  zero1_step(lr, grad_norm);
}

double Trainer::reduce_loss(double local_sum) {
  if (!ctx_.mesh || shape_.dp == 1) return local_sum / global_tokens_;
  float v = float(local_sum);
  ctx_.mesh->dp().allreduce(&v, 1, DType::kF32, ReduceOp::kSum);
  return double(v) / global_tokens_;
}

double Trainer::evaluate() {
  // A fixed number of eval batches, read in order; forward only.
  const int64_t batches = 4;
  double sum = 0;
  for (int64_t e = 0; e < batches; ++e)
    for (int m = 0; m < micro_total_; ++m) {
      fill_batch(e, m, true);
      sum += model_->forward(batch(), *acts_);
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
    double t0 = mono_seconds();
    double lr = schedule_->at(step);
    double local = forward_backward(step);
    double grad_norm = 0;
    reduce_and_step(step, lr, &grad_norm);
    double loss = reduce_loss(local);
    double dt = mono_seconds() - t0;
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
      line.add_int("step", step).add_int("total_steps", total).add("loss", loss).add("lr", lr);
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
