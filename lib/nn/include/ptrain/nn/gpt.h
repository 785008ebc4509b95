// GPT-2 (learned positions, pre-LayerNorm blocks, tied LM head, final LayerNorm) with explicit
// forward/backward, llm.c style. A config with a layer range and embedding/head flags builds one
// pipeline stage; tensor-parallel fields are reserved for the sharded version.
#pragma once

#include <memory>

#include "ptrain/nn/model.h"

namespace ptrain::nn {

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
  // Tensor parallelism (Megatron): only tp_size == 1 is implemented so far.
  int tp_size = 1;
  int tp_rank = 0;
  tensor::Device device = tensor::Device::kCpu;
};

// Throws ConfigError naming the field when the config is inconsistent.
void validate(const GptConfig& config);

// Parameters, in order: wte.weight [V,D], wpe.weight [T,D] (first stage); per block i
// h.{i}.ln_1.weight|bias [D], h.{i}.attn.c_attn.weight [D,3D] / .bias [3D],
// h.{i}.attn.c_proj.weight [D,D] / .bias [D], h.{i}.ln_2.weight|bias [D],
// h.{i}.mlp.c_fc.weight [D,4D] / .bias [4D], h.{i}.mlp.c_proj.weight [4D,D] / .bias [D];
// ln_f.weight|bias [D] (last stage; wte.weight too when the stage has no embedding).
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

 private:
  struct LayerParams;
  struct Scratch;
  float* p(int index) { return param_data() + params_[index].offset; }
  float* g(int index) { return grad_data() + params_[index].offset; }
  void ensure_scratch(int N);

  GptConfig cfg_;
  int num_local_layers_ = 0;
  int wte_ = -1, wpe_ = -1, lnfw_ = -1, lnfb_ = -1;
  int first_layer_param_ = 0;  // index of h.{layer_begin}.ln_1.weight
  std::unique_ptr<Scratch> scratch_;
};

}  // namespace ptrain::nn
