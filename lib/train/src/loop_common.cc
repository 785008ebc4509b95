#include "loop_common.h"

#include <fmt/format.h>

#include "ptrain/models/registry.h"
#include "ptrain/parallel/pipeline.h"

namespace ptrain::train {

RankBatches::RankBatches(const spec::JobSpec& spec, int dp_rank, int dp_size)
    : dp_rank_(dp_rank), dp_size_(dp_size) {
  const models::Family& family = models::family_of(spec);
  set_ = family.make_data(spec);
  micro_total_ = spec.train.grad_accum * spec.parallel.microbatches;
  rows_ = set_->rows(dp_size, micro_total_);
  seq_ = family.seq_len(spec.model);
  batch_ = models::HostBatch(family.batch_schema(spec, rows_), int(rows_), seq_);
}

const nn::Batch& RankBatches::fill(int64_t step, int micro, data::Split split) {
  set_->fill(step, dp_rank_, dp_size_, micro, micro_total_, split, batch_);
  return batch_.view();
}

int64_t RankBatches::eval_batches() const {
  const int64_t n = set_->eval_batches();
  return n > 0 ? n : kEvalBatches;
}

double eval_loss_sum(nn::Model& model, nn::Activations& acts, RankBatches& batches,
                     parallel::PipelineExecutor* pipeline, nn::EvalSums& sums,
                     nn::EvalScores* scores) {
  model.set_training(false);
  double sum = 0;
  for (int64_t e = 0; e < batches.eval_batches(); ++e) {
    if (pipeline) {
      sum += pipeline->forward_only([&](int m) { return batches.fill(e, m, data::Split::kEval); },
                                    batches.micro_total(), &sums);
      continue;
    }
    for (int m = 0; m < batches.micro_total(); ++m) {
      sum += model.forward(batches.fill(e, m, data::Split::kEval), acts);
      model.eval_sums(acts, sums);
      if (scores) model.eval_scores(acts, *scores);
    }
  }
  model.set_training(true);
  return sum;
}

double eval_targets(const RankBatches& batches) {
  double n = 0;
  for (int64_t e = 0; e < batches.eval_batches(); ++e)
    n += batches.global_targets(e, data::Split::kEval);
  return n;
}

MetricsLine step_metrics(const StepMetrics& sm, int64_t total_steps, double tokens_per_s,
                         double gflops, double peak_gflops, double optimizer_mb) {
  MetricsLine line;
  line.add_int("step", sm.step).add_int("total_steps", total_steps).add_exact("loss", sm.loss);
  line.add("lr", sm.lr);
  line.add("grad_norm", sm.grad_norm).add("tokens_per_s", tokens_per_s).add("step_ms", sm.step_ms);
  line.add("gflops", gflops);
  if (peak_gflops > 0) line.add("mfu", gflops / peak_gflops);
  line.add("mem_mb", resident_mb()).add("optimizer_mb", optimizer_mb);
  if (sm.eval_loss >= 0) line.add("eval_loss", sm.eval_loss);
  for (const auto& [name, value] : sm.eval_metrics) line.add(name, value);
  return line;
}

std::string progress_prefix(const StepMetrics& sm, int64_t total_steps) {
  return fmt::format("step {}/{} | loss {:.4f} | lr {:.3e} | norm {:.3f} | {:.1f} ms", sm.step,
                     total_steps, sm.loss, sm.lr, sm.grad_norm, sm.step_ms);
}

std::string eval_suffix(const StepMetrics& sm) {
  if (sm.eval_loss < 0) return "";
  std::string out = fmt::format(" | eval {:.4f}", sm.eval_loss);
  for (const auto& [name, value] : sm.eval_metrics) out += fmt::format(" | {} {:.4f}", name, value);
  return out;
}

}  // namespace ptrain::train
