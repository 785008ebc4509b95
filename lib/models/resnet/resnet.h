// torchvision's ResNet with BasicBlocks (resnet18/34 layout) over the CNN layers of nn/cnn.h,
// on NCHW float32 images, CPU only. Parameter and buffer names, shapes and registration order
// are those of torchvision's state_dict, so its checkpoints load as they are and ours load into
// torchvision.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ptrain/nn/cnn.h"
#include "ptrain/nn/model.h"

namespace ptrain::nn {

struct ResNetConfig {
  int in_channels = 3;
  int classes = 10;
  int height = 32, width = 32;                 // input images
  std::vector<int> widths{64, 128, 256, 512};  // channels of stage i (layer{i+1})
  std::vector<int> blocks{2, 2, 2, 2};         // BasicBlocks of stage i
  // imagenet: conv 7x7 stride 2 pad 3, BN, ReLU, max-pool 3x3 stride 2 pad 1.
  // cifar: conv 3x3 stride 1 pad 1, BN, ReLU.
  bool imagenet_stem = true;
  // BatchNorm statistics over the data-parallel group (SyncBatchNorm; needs
  // set_data_parallel_comm when data > 1) instead of this rank's microbatch.
  bool sync_bn = false;
  float label_smoothing = 0;
  tensor::Device device = tensor::Device::kCpu;
};

// Throws ConfigError for a shape the model cannot take (names the key).
void validate(const ResNetConfig& config);
// Spatial size after the stem and after each stage for an h x w input; throws ConfigError when
// a downsampling layer would receive a 1-pixel map.
std::vector<std::pair<int, int>> resnet_feature_sizes(const ResNetConfig& config);

// Parameters (torchvision names): conv1.weight [w0, C, k, k], bn1.{weight,bias}; per block
// layer{s}.{b}.conv1.weight, bn1.*, conv2.weight, bn2.*, and for the first block of a stage
// whose stride or width changes downsample.0.weight [out, in, 1, 1], downsample.1.*;
// fc.weight [classes, w_last], fc.bias. Buffers per BatchNorm: running_mean, running_var,
// num_batches_tracked (shape [], optional on load).
// Batch: images [B, C, H, W] f32, targets [B] i32 (-1: ignored, for padded eval batches).
class ResNet : public Model {
 public:
  explicit ResNet(const ResNetConfig& config);

  const ResNetConfig& config() const { return cfg_; }
  // torchvision's init: convs kaiming_normal(fan_out, relu), BN weight 1 bias 0, fc as
  // nn.Linear (uniform +-1/sqrt(in)); running_mean 0, running_var 1, num_batches_tracked 0.
  void init(uint64_t seed) override;
  std::unique_ptr<Activations> make_activations(int B, int T) const override;
  double forward(const Batch& batch, Activations& acts) override;
  void backward(Activations& acts, float dloss_scale, const float* doutput = nullptr) override;
  double train_flops(int B, int T) const override;
  // {"correct": top-1 hits, "count": targets} of the last forward.
  void eval_sums(const Activations& acts, EvalSums& sums) const override;
  // The logits [B, classes] of the last forward on `acts`.
  std::vector<float> logits(const Activations& acts) const;

  struct Conv {
    int param = -1;
    Conv2dShape shape;  // N = 1; the batch sets it
  };
  struct Norm {
    int weight = -1, bias = -1;
    int mean = -1, var = -1, count = -1;  // buffer indices
    int C = 0, HW = 0;
  };
  struct Block {
    Conv conv1, conv2, down;
    Norm bn1, bn2, down_bn;
    bool has_down = false;
    int out_numel = 0;  // per image
  };

 private:
  void add_conv(Conv& c, const std::string& name, int C, int H, int W, int OC, int k, int stride,
                int pad);
  void add_norm(Norm& n, const std::string& name, int C, int HW);

  ResNetConfig cfg_;
  Conv stem_;
  Norm stem_bn_;
  PoolShape pool_;                         // N = 1
  int stem_numel_ = 0, pooled_numel_ = 0;  // per image
  std::vector<Block> blocks_;
  int fc_weight_ = -1, fc_bias_ = -1;
  int feat_ = 0, feat_hw_ = 0;  // channels and spatial size entering the average pool
};

}  // namespace ptrain::nn
