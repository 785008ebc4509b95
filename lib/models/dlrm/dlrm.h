// DLRM (facebookresearch/dlrm): a bottom MLP over the dense features, one embedding lookup per
// categorical feature, the `dot` interaction, a top MLP to one logit, BCE with logits. Names and
// layouts as DLRM's PyTorch code: emb_l.{k}.weight [rows,D], bot_l.{2i}.weight [out,in],
// bot_l.{2i}.bias, top_l.{2i}.*. Host (CPU) only. Tables are replicated (dense parameters,
// allreduced) or sharded over the data group (sharded_tables.h: lookups and gradients routed
// with all-to-all; only the owners hold and update their rows).
#pragma once

#include <memory>
#include <vector>

#include "dlrm/sharded_tables.h"
#include "ptrain/nn/model.h"

namespace ptrain::nn {

struct DlrmConfig {
  int dense = 13;                   // dense features per sample
  std::vector<int64_t> tables;      // rows of each categorical feature's table
  int dim = 16;                     // embedding_dim
  std::vector<int> bottom{64, 16};  // widths after the dense input; the last is dim
  std::vector<int> top{64, 1};      // widths after the interaction; the last is 1
  dlrm::Placement placement = dlrm::Placement::kReplicated;
  int dp_rank = 0, dp_size = 1;  // this rank in the data group (sharded placements)
};

class DlrmActivations;

// Throws ConfigError naming the key for a config DLRM cannot build.
void validate(const DlrmConfig& config);

class Dlrm : public Model {
 public:
  explicit Dlrm(const DlrmConfig& config);

  const DlrmConfig& config() const { return cfg_; }
  // Embeddings N(0, 1/rows)-free: uniform(-sqrt(1/rows), sqrt(1/rows)) as DLRM's code;
  // Linear weights normal(0, sqrt(2/(in+out))), biases normal(0, sqrt(1/out)), as DLRM.
  void init(uint64_t seed) override;
  std::unique_ptr<Activations> make_activations(int B, int T) const override;
  // Batch: dense [B,dense] f32, sparse [B,K] i32, targets [B] f32 (0 or 1).
  double forward(const Batch& batch, Activations& acts) override;
  void backward(Activations& acts, float dloss_scale, const float* doutput = nullptr) override;
  double train_flops(int B, int T) const override;
  // eval: every sample's logit and label (the exact AUC over the eval split).
  void eval_scores(const Activations& acts, EvalScores& out) const override;

  // Index into params() of bottom layer i's weight (bias = +1), table k, top layer i's weight.
  size_t bottom_param(size_t i) const { return bottom_first_ + 2 * i; }
  size_t table_param(size_t k) const { return table_first_ + k; }
  size_t top_param(size_t i) const { return top_first_ + 2 * i; }
  bool sharded() const { return cfg_.placement != dlrm::Placement::kReplicated; }
  // Row splits of each table over the data group (sharded placements).
  const std::vector<std::vector<int64_t>>& splits() const { return splits_; }

 private:
  DlrmConfig cfg_;
  std::vector<int> bot_dims_, top_dims_;  // including the input width
  std::vector<std::vector<int64_t>> splits_;
  // Sharded tables: v [B,F,D]'s embedding vectors from their owners; the gradients back.
  void sharded_lookup(DlrmActivations& a);
  void sharded_backward(DlrmActivations& a, const float* dv);
  size_t bottom_first_ = 0, table_first_ = 0, top_first_ = 0;
};

}  // namespace ptrain::nn
