// MLP classifier: Linear/ReLU stack (PyTorch nn.Linear layout) with softmax cross-entropy.
#pragma once

#include <memory>
#include <vector>

#include "ptrain/nn/model.h"

namespace ptrain::nn {

struct MlpConfig {
  int input_dim = 0;
  std::vector<int> hidden;  // widths of the hidden layers
  int classes = 0;
  // Tensor parallelism: layers alternate column-parallel (output features split, as
  // layers.{i}.weight rows and bias) and row-parallel (input features split, the partial outputs
  // summed over the group, bias added once), starting with a column split; a final layer that
  // would be column-parallel stays whole (every rank computes the same logits). Hidden widths
  // must be divisible by tp_size. The model needs set_tensor_parallel_comm when > 1.
  int tp_size = 1;
  int tp_rank = 0;
  tensor::Device device = tensor::Device::kCpu;
};

void validate(const MlpConfig& config);

// Parameters: layers.{i}.weight [out,in], layers.{i}.bias [out]; ReLU after all but the last.
// Init as PyTorch's nn.Linear: weight and bias uniform(-1/sqrt(in), 1/sqrt(in)).
class Mlp : public Model {
 public:
  explicit Mlp(const MlpConfig& config);

  const MlpConfig& config() const { return cfg_; }
  void init(uint64_t seed) override;
  std::unique_ptr<Activations> make_activations(int B, int T) const override;
  // Batch: features [B,input_dim], targets [B].
  double forward(const Batch& batch, Activations& acts) override;
  void backward(Activations& acts, float dloss_scale, const float* doutput = nullptr) override;
  double train_flops(int B, int T) const override;

 private:
  enum class Split { kWhole, kColumn, kRow };
  MlpConfig cfg_;
  std::vector<int> dims_;                  // input_dim, hidden..., classes
  std::vector<Split> split_;               // per layer
  std::vector<int> in_local_, out_local_;  // this rank's widths per layer
  tensor::Tensor dscratch_;                // two ping-pong [B, max width] gradient buffers
};

}  // namespace ptrain::nn
