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
  MlpConfig cfg_;
  std::vector<int> dims_;    // input_dim, hidden..., classes
  tensor::Tensor dscratch_;  // two ping-pong [B, max width] gradient buffers
};

}  // namespace ptrain::nn
