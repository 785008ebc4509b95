// What the synchronous and the asynchronous training loops share: this rank's batches (the
// family's data set cut into its share of every global batch), evaluation, and the metrics
// every loop reports.
#pragma once

#include <memory>

#include "ptrain/models/family.h"
#include "ptrain/nn/model.h"
#include "ptrain/spec/job_spec.h"
#include "ptrain/train/metrics.h"
#include "ptrain/train/trainer.h"

namespace ptrain::parallel {
class PipelineExecutor;
}

namespace ptrain::train {

// Data rank `dp_rank` of `dp_size`'s microbatches: grad_accum x microbatches per step.
class RankBatches {
 public:
  RankBatches(const spec::JobSpec& spec, int dp_rank, int dp_size);

  // Fills microbatch `micro` of this rank's share of `step` and returns it.
  const nn::Batch& fill(int64_t step, int micro, data::Split split = data::Split::kTrain);
  // The loss denominator of `step`: targets in the global batch (models::DataSet).
  double global_targets(int64_t step, data::Split split = data::Split::kTrain) const {
    return set_->global_targets(step, split);
  }
  bool has_eval() const { return set_->has_eval(); }
  // Batches one evaluation reads (the data set's, else kEvalBatches).
  int64_t eval_batches() const;
  int micro_total() const { return micro_total_; }
  int rows() const { return int(rows_); }  // samples per microbatch
  int seq() const { return seq_; }         // T (1 without a sequence axis)

 private:
  std::unique_ptr<models::DataSet> set_;
  models::HostBatch batch_;
  int dp_rank_ = 0, dp_size_ = 1;
  int micro_total_ = 1;
  int64_t rows_ = 0;
  int seq_ = 1;
};

// Eval batches per evaluation, read in order from the eval split, unless the data set says
// how many cover its eval split (models::DataSet::eval_batches).
inline constexpr int64_t kEvalBatches = 4;

// The sum of this rank's per-target eval losses over eval_batches() batches (forward only, the
// model in evaluation mode), through the pipeline when there is one, with the model's eval
// sums added to `sums`; and the targets of the global eval batches it averages over.
// Without a pipeline, the model's per-sample scores are appended to `scores` when given.
double eval_loss_sum(nn::Model& model, nn::Activations& acts, RankBatches& batches,
                     parallel::PipelineExecutor* pipeline, nn::EvalSums& sums,
                     nn::EvalScores* scores = nullptr);
double eval_targets(const RankBatches& batches);

// The fields every loop reports first: step, loss, lr, grad norm, throughput, FLOP rate,
// memory and optimizer state (figures of this rank).
MetricsLine step_metrics(const StepMetrics& sm, int64_t total_steps, double tokens_per_s,
                         double gflops, double peak_gflops, double optimizer_mb);

// "step 3/20 | loss 2.5 | lr 3e-4 | norm 0.9 | 12.0 ms" — the start of every progress line.
std::string progress_prefix(const StepMetrics& sm, int64_t total_steps);
// " | eval 2.41 | eval_accuracy 0.9120" when the step was evaluated, else "".
std::string eval_suffix(const StepMetrics& sm);

}  // namespace ptrain::train
