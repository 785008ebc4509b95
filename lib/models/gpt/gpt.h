// GPT-2 (learned positions, pre-LayerNorm blocks, tied LM head, final LayerNorm) with explicit
// forward/backward, llm.c style. A config with a layer range and embedding/head flags builds one
// pipeline stage; tp_size/tp_rank build one rank's part of a tensor-parallel (Megatron) split.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ptrain/nn/model.h"

namespace ptrain::nn {

class Bf16Gemms;

struct GptConfig {
  int layers = 4;  // of the whole model (sets the residual-projection init scale)
  int heads = 4;
  int dim = 256;
  int seq_len = 128;  // maximum T (rows of wpe)
  int vocab = 256;
  // Pipeline stage: the blocks [layer_begin, layer_end) (layer_end < 0: all), whether the stage
  // embeds tokens (first stage: wte + wpe) and whether it ends in ln_f + the tied LM head (last
  // stage: its own copy of wte, whose gradient the pipeline sums with the first stage's).
  int layer_begin = 0;
  int layer_end = -1;
  bool has_embedding = true;
  bool has_head = true;
  // Tensor parallelism (Megatron): rank tp_rank of tp_size holds heads/tp_size heads (c_attn
  // column-, c_proj row-parallel), 4*dim/tp_size MLP columns (c_fc column-, c_proj
  // row-parallel) and vocab/tp_size rows of wte (vocab-parallel embedding and cross-entropy).
  // LayerNorms and wpe are replicated. The model needs set_tensor_parallel_comm when > 1.
  int tp_size = 1;
  int tp_rank = 0;
  tensor::Device device = tensor::Device::kCpu;
  // "fp32", or "bf16": GEMMs on bf16 copies of weights and inputs (fp32 accumulation, fp32
  // master weights and everything else); on CUDA, and on a CPU with bf16 instructions.
  std::string precision = "fp32";
};

class GptActivations;

// Throws ConfigError naming the field when the config is inconsistent.
void validate(const GptConfig& config);

// Parameters, in order: wte.weight [V,D], wpe.weight [T,D] (first stage); per block i
// h.{i}.ln_1.weight|bias [D], h.{i}.attn.c_attn.weight [D,3D] / .bias [3D],
// h.{i}.attn.c_proj.weight [D,D] / .bias [D], h.{i}.ln_2.weight|bias [D],
// h.{i}.mlp.c_fc.weight [D,4D] / .bias [4D], h.{i}.mlp.c_proj.weight [4D,D] / .bias [D];
// ln_f.weight|bias [D] (last stage; wte.weight too when the stage has no embedding).
// Under tensor parallelism (t = tp_size) the local shapes are wte [V/t,D], c_attn [D,3D/t]
// (q|k|v of this rank's heads) / [3D/t], attn.c_proj [D/t,D], c_fc [D,4D/t] / [4D/t],
// mlp.c_proj [4D/t,D]; ParamInfo::full_shape and split_* describe the split.
class Gpt : public Model {
 public:
  explicit Gpt(const GptConfig& config);
  ~Gpt() override;

  const GptConfig& config() const { return cfg_; }
  void init(uint64_t seed) override;
  std::unique_ptr<Activations> make_activations(int B, int T) const override;
  double forward(const Batch& batch, Activations& acts) override;
  void backward(Activations& acts, float dloss_scale, const float* doutput = nullptr) override;
  double train_flops(int B, int T) const override;
  std::vector<int64_t> boundary_shape(int B, int T) const override;  // [B,T,dim]
  // Logits [B,T,V] (device; this rank's vocabulary part under tensor parallelism) of the last
  // forward on `acts`, on a stage with the head; for sampling.
  const float* logits(const Activations& acts) const;

 private:
  struct LayerParams;
  struct Scratch;
  struct TpBuffers;
  float* p(int index) { return param_data() + params_[index].offset; }
  float* g(int index) { return grad_data() + params_[index].offset; }
  void ensure_scratch(int N);
  void tp_allreduce(float* data, size_t count);
  void row_parallel_forward(float* out, const float* inp, const float* weight, const float* bias,
                            int N, int IC, int OC);
  void embed_vocab_parallel(GptActivations& a, const int32_t* tokens, int B, int T);
  // The GEMM layers in the configured precision (layers.h signatures).
  void fc_forward(float* out, const float* inp, const float* w, const float* b, int N, int IC,
                  int OC);
  void fc_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                   const float* w, int N, int IC, int OC);
  void head_forward(float* logits, const float* inp, int N, int V);  // V: local vocab
  void head_backward(float* dinp, const float* dlogits, const float* inp, int N, int V);

  GptConfig cfg_;
  int num_local_layers_ = 0;
  int wte_ = -1, wpe_ = -1, lnfw_ = -1, lnfb_ = -1;
  int first_layer_param_ = 0;  // index of h.{layer_begin}.ln_1.weight
  std::unique_ptr<Scratch> scratch_;
  std::unique_ptr<TpBuffers> tp_;    // tensor parallel (tp_size > 1)
  std::unique_ptr<Bf16Gemms> bf16_;  // set when precision is bf16
};

}  // namespace ptrain::nn
