// BERT for masked-language modelling (Hugging Face BertForMaskedLM: names, layouts, maths) with
// explicit forward/backward on the CPU: embeddings LayerNorm(word + position + token_type[0]),
// post-LayerNorm encoder blocks with bidirectional attention and exact GELU, LayerNorm eps
// 1e-12, and the head LN(GELU(dense(x))) . word_embeddings^T + bias. A config with a layer range
// and embedding/head flags builds one pipeline stage; tp_size/tp_rank one rank's Megatron part.
#pragma once

#include <memory>
#include <vector>

#include "ptrain/nn/model.h"

namespace ptrain::nn {

struct BertConfig {
  int layers = 2;  // of the whole model
  int heads = 2;
  int dim = 64;
  int seq_len = 64;   // maximum T
  int positions = 0;  // rows of the position table (>= seq_len; 0 = seq_len), e.g. HF's 512
  int vocab = 257;
  // Pipeline stage: blocks [layer_begin, layer_end) (-1: all); the first stage embeds, the last
  // holds the head and its own copy of word_embeddings (the tied decoder).
  int layer_begin = 0;
  int layer_end = -1;
  bool has_embedding = true;
  bool has_head = true;
  // Megatron tensor parallelism: query/key/value and intermediate column-parallel (by heads,
  // by columns), attention output and output row-parallel, the word embeddings and
  // cls.predictions.bias vocabulary-parallel (ceil(vocab / t) rows per rank, the last rank's
  // tail padding that checkpoints leave out). Needs set_tensor_parallel_comm when > 1.
  int tp_size = 1;
  int tp_rank = 0;
};

// Throws ConfigError naming the key when the config is inconsistent.
void validate(const BertConfig& config);

// Parameters, in order (HF names; nn.Linear layout [out, in]):
//   first stage: bert.embeddings.word_embeddings.weight [V,D], .position_embeddings.weight
//   [P,D], .token_type_embeddings.weight [2,D], bert.embeddings.LayerNorm.weight|bias [D];
//   per block i, prefix bert.encoder.layer.{i}.: attention.self.{query,key,value}.weight [D,D]
//   / .bias [D], attention.output.dense.weight [D,D] / .bias, attention.output.LayerNorm.*,
//   intermediate.dense.weight [4D,D] / .bias [4D], output.dense.weight [D,4D] / .bias [D],
//   output.LayerNorm.*;
//   last stage: cls.predictions.transform.dense.weight [D,D] / .bias,
//   cls.predictions.transform.LayerNorm.*, cls.predictions.bias [V] (and word_embeddings, the
//   tied copy, when the first stage is another).
// Batch: tokens [B,T] i32 (the masked input) on the first stage, targets [B,T] i32 (the
// original id at masked positions, -1 elsewhere) on the last. forward returns the summed loss
// over the masked positions.
class Bert : public Model {
 public:
  explicit Bert(const BertConfig& config);
  ~Bert() override;

  const BertConfig& config() const { return cfg_; }
  void init(uint64_t seed) override;
  std::unique_ptr<Activations> make_activations(int B, int T) const override;
  double forward(const Batch& batch, Activations& acts) override;
  void backward(Activations& acts, float dloss_scale, const float* doutput = nullptr) override;
  double train_flops(int B, int T) const override;
  std::vector<int64_t> boundary_shape(int B, int T) const override;  // [B,T,dim]
  // eval: "mlm_correct" (masked positions whose target has the largest logit), "mlm_count".
  void eval_sums(const Activations& acts, EvalSums& sums) const override;

 private:
  struct Scratch;
  struct Dims;
  float* p(int index) { return param_data() + params_[size_t(index)].offset; }
  float* g(int index) { return grad_data() + params_[size_t(index)].offset; }
  void tp_allreduce(float* data, size_t count);
  // out [N,OC] = inp [N,IC] . w^T summed over the tensor group, + bias (row-parallel).
  void row_parallel(float* out, const float* inp, const float* w, const float* bias, int N, int IC,
                    int OC);
  Scratch& scratch(int N);

  BertConfig cfg_;
  int num_local_layers_ = 0;
  int word_ = -1, pos_ = -1, type_ = -1, emb_lnw_ = -1, emb_lnb_ = -1;
  int first_layer_param_ = 0;
  int head_dense_w_ = -1, head_dense_b_ = -1, head_lnw_ = -1, head_lnb_ = -1, head_bias_ = -1;
  std::unique_ptr<Scratch> scratch_;
};

}  // namespace ptrain::nn
