// A model family: everything ptrain knows about one `model.type`, behind one interface, so that
// adding a model is one folder under lib/models and one register_family() call
// (docs/ARCHITECTURE.md, "Add a model family"). The spec layer sees a family through its
// schema part (spec/model_schema.h: keys, checks, plan figures); the trainer and the parallel
// strategies see the rest: the batch it consumes, its data sets and the model of one rank.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ptrain/data/sampler.h"
#include "ptrain/nn/model.h"
#include "ptrain/spec/job_spec.h"
#include "ptrain/spec/model_schema.h"
#include "ptrain/tensor/tensor.h"

namespace ptrain::models {

// One tensor of a family's batch: `tokens [B,T] i32`, `images [B,C,H,W] f32`, ...
struct TensorSpec {
  std::string name;
  tensor::DType dtype = tensor::DType::kF32;
  std::vector<int64_t> shape;
};

// The host buffers of one microbatch, laid out by a family's batch schema; the data set fills
// them and view() hands them to the model.
class HostBatch {
 public:
  HostBatch() = default;
  HostBatch(const std::vector<TensorSpec>& schema, int B, int T);
  HostBatch(HostBatch&&) = default;
  HostBatch& operator=(HostBatch&&) = default;

  int32_t* i32(const std::string& name);
  float* f32(const std::string& name);
  const nn::Batch& view() const { return batch_; }
  int rows() const { return batch_.B; }

 private:
  void* data(const std::string& name, tensor::DType dtype);
  nn::Batch batch_;
  std::vector<std::vector<uint64_t>> storage_;  // 8-byte aligned, one per tensor
};

// A family's data, cut into the microbatches of the data-parallel ranks. Every rank reads the
// same global batch for a step and takes its share, so any data-parallel split sees the same
// samples (the equivalence tests rely on it).
class DataSet {
 public:
  virtual ~DataSet() = default;
  // Samples in one microbatch of one data rank: the global batch / (dp_size * micro_total).
  virtual int64_t rows(int dp_size, int micro_total) const = 0;
  virtual bool has_eval() const = 0;
  // Fills microbatch `micro` (of `micro_total`) of data rank `dp_rank`'s share of `step`.
  virtual void fill(int64_t step, int dp_rank, int dp_size, int micro, int micro_total,
                    data::Split split, HostBatch& out) const = 0;
  // The loss denominator: the targets in the whole global batch of `step` (tokens for a GPT,
  // samples for a classifier). The loss is the sum over targets divided by this.
  virtual double global_targets(int64_t step, data::Split split) const = 0;
  // Eval batches one evaluation reads: a data set with a test split of known size returns
  // enough to cover it once (its last batch padded with ignored targets, which
  // global_targets leaves out); 0 = the loops' default (train/loop_common.h, kEvalBatches).
  virtual int64_t eval_batches() const { return 0; }
};

// Where one rank's model sits in the mesh.
struct ModelPlace {
  tensor::Device device = tensor::Device::kCpu;
  int stage = 0, stages = 1;          // pipeline stage of this rank
  std::pair<int, int> layers{0, -1};  // pipeline layers [begin, end) of the stage (-1: all)
  int tp_rank = 0, tp_size = 1;       // tensor-parallel shard
  int dp_rank = 0, dp_size = 1;       // data-parallel rank (models with sharded parameters)
};

class Family : public spec::ModelSchema {
 public:
  // The named host tensors of a microbatch of `rows` samples.
  virtual std::vector<TensorSpec> batch_schema(const spec::JobSpec& spec, int64_t rows) const = 0;
  // Tokens per sample along the sequence axis (T); 1 for models without one.
  virtual int seq_len(const spec::ModelSpec&) const { return 1; }
  virtual std::unique_ptr<DataSet> make_data(const spec::JobSpec& spec) const = 0;
  // The model of one rank (its pipeline stage and tensor shard), not yet initialised.
  virtual std::unique_ptr<nn::Model> make_model(const spec::JobSpec& spec,
                                                const ModelPlace& place) const = 0;
  // The names of the sums its models add in nn::Model::eval_sums ({"correct", "count"}); the
  // trainer reduces exactly these over the mesh.
  virtual std::vector<std::string> eval_sum_names() const { return {}; }
  // Metrics from the eval sums of the whole eval split (summed over the data group):
  // {"eval_accuracy", 0.91}. Reported beside eval_loss.
  virtual std::vector<std::pair<std::string, double>> eval_metrics(
      const nn::EvalSums& /*sums*/) const {
    return {};
  }
  // Metrics from the per-sample eval scores of the whole eval split (nn::Model::eval_scores,
  // gathered over the data group): {"eval_auc", 0.78}.
  virtual std::vector<std::pair<std::string, double>> eval_score_metrics(
      const nn::EvalScores& /*scores*/) const {
    return {};
  }
  // What a checkpoint records about the model (its __metadata__ "config"): by default every
  // key of the family as one JSON object, which `ptrain generate` and tools read back.
  virtual std::string checkpoint_config(const spec::ModelSpec& m) const;
};

// A family whose samples are token sequences of `seq_len` and whose targets are their tokens
// (GPT, BERT): the batch is `tokens` and `targets`, both int32 [rows, seq_len].
class TokenSequenceFamily : public Family {
 public:
  std::string sample_word() const override { return "sequences"; }
  std::string target_word() const override { return "tokens"; }
  int64_t targets_per_sample(const spec::ModelSpec& m) const override {
    return m.integer("seq_len");
  }
  std::vector<TensorSpec> batch_schema(const spec::JobSpec& s, int64_t rows) const override {
    const int64_t T = s.model.integer("seq_len");
    return {{"tokens", tensor::DType::kI32, {rows, T}},
            {"targets", tensor::DType::kI32, {rows, T}}};
  }
  int seq_len(const spec::ModelSpec& m) const override { return m.i("seq_len"); }
};

}  // namespace ptrain::models
