// MLP classifier forward/backward over the op table.
#include "mlp/mlp.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "ptrain/core/error.h"
#include "ptrain/nn/init.h"
#include "ptrain/nn/layers.h"

namespace ptrain::nn {
namespace {

class MlpActivations : public Activations {
 public:
  // dims: the input width, then each layer's (local) output width.
  MlpActivations(const std::vector<int>& dims, int B, tensor::Device device) : B_(B) {
    const size_t layers = dims.size() - 1;
    size_t total = static_cast<size_t>(B) * dims[0];
    for (size_t i = 1; i < dims.size(); ++i) total += 2 * static_cast<size_t>(B) * dims[i];
    total += 2 * static_cast<size_t>(B);  // lse, losses
    buf_ = tensor::Tensor::zeros({static_cast<int64_t>(total)}, tensor::DType::kF32, device);
    ids_ = tensor::Tensor::zeros({B}, tensor::DType::kI32, device);
    float* cur = buf_.data<float>();
    input = cur;
    cur += static_cast<size_t>(B) * dims[0];
    for (size_t i = 0; i < layers; ++i) {
      pre.push_back(cur);  // [B, dims[i+1]] before ReLU (logits for the last layer)
      cur += static_cast<size_t>(B) * dims[i + 1];
      post.push_back(cur);  // [B, dims[i+1]] after ReLU
      cur += static_cast<size_t>(B) * dims[i + 1];
    }
    lse = cur;
    losses = cur + B;
    targets = ids_.data<int32_t>();
    losses_host.resize(B);
  }
  int batch() const override { return B_; }
  int seq() const override { return 1; }
  const float* output() const override { return nullptr; }
  const float* input_grad() const override { return nullptr; }
  // Input of layer i: the features for i == 0, else post[i-1].
  const float* layer_input(size_t i) const { return i == 0 ? input : post[i - 1]; }

  float* input = nullptr;  // [B, in]
  std::vector<float*> pre, post;
  float* lse = nullptr;
  float* losses = nullptr;
  int32_t* targets = nullptr;
  std::vector<float> losses_host;
  bool forward_done = false;

 private:
  int B_;
  tensor::Tensor buf_, ids_;
};

}  // namespace

void validate(const MlpConfig& c) {
  if (c.input_dim <= 0) {
    throw ConfigError(fmt::format("MLP input dimension must be positive, got {}", c.input_dim),
                      "set model.input_dim to the number of features");
  }
  if (c.classes < 2) {
    throw ConfigError(fmt::format("MLP needs at least 2 classes, got {}", c.classes),
                      "set model.classes");
  }
  for (int h : c.hidden) {
    if (h <= 0) {
      throw ConfigError(fmt::format("MLP hidden width must be positive, got {}", h),
                        "fix model.hidden");
    }
    if (h % c.tp_size != 0) {
      throw ConfigError(
          fmt::format("MLP hidden width {} is not divisible by parallel.tensor {}", h, c.tp_size),
          "tensor parallelism splits each hidden layer; use multiples of tensor");
    }
  }
  PTRAIN_CHECK(c.tp_size >= 1 && c.tp_rank >= 0 && c.tp_rank < c.tp_size,
               "tp_rank {} outside [0, {})", c.tp_rank, c.tp_size);
}

Mlp::Mlp(const MlpConfig& config) : Model(config.device), cfg_(config) {
  validate(cfg_);
  dims_.push_back(cfg_.input_dim);
  for (int h : cfg_.hidden) dims_.push_back(h);
  dims_.push_back(cfg_.classes);
  const int t = cfg_.tp_size, r = cfg_.tp_rank;
  const size_t layers = dims_.size() - 1;
  for (size_t i = 0; i < layers; ++i) {
    Split sp = Split::kWhole;
    if (t > 1) sp = i % 2 == 1 ? Split::kRow : (i + 1 < layers ? Split::kColumn : Split::kWhole);
    split_.push_back(sp);
    in_local_.push_back(sp == Split::kRow ? dims_[i] / t : dims_[i]);
    out_local_.push_back(sp == Split::kColumn ? dims_[i + 1] / t : dims_[i + 1]);
    std::string name = "layers." + std::to_string(i) + ".";
    const int64_t out = dims_[i + 1], in = dims_[i];
    if (sp == Split::kColumn) {
      add_split_param(name + "weight", {out, in}, 0, t, r);
      add_split_param(name + "bias", {out}, 0, t, r);
    } else if (sp == Split::kRow) {
      add_split_param(name + "weight", {out, in}, 1, t, r);
      add_param(name + "bias", {out});
    } else {
      add_param(name + "weight", {out, in});
      add_param(name + "bias", {out});
    }
  }
  allocate_params();
}

void Mlp::init(uint64_t seed) {
  std::vector<float> host, local;
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamInfo& info = params_[i];
    int fan_in = dims_[i / 2];
    float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
    // The full tensor, then this rank's part: a split model starts as the unsplit one.
    host.resize(info.full_numel());
    fill_uniform(host.data(), host.size(), param_key(seed, info.name), -bound, bound);
    const float* src = host.data();
    if (info.is_split()) {
      local.resize(info.numel);
      copy_shard_from_full(info, info.split_rank, host.data(), local.data());
      src = local.data();
    }
    ops().copy_from_host(param_data() + info.offset, src, info.numel * sizeof(float));
  }
}

std::unique_ptr<Activations> Mlp::make_activations(int B, int /*T*/) const {
  PTRAIN_CHECK(B > 0, "batch {} must be positive", B);
  std::vector<int> widths{dims_[0]};
  widths.insert(widths.end(), out_local_.begin(), out_local_.end());
  return std::make_unique<MlpActivations>(widths, B, device_);
}

double Mlp::forward(const Batch& batch, Activations& acts_base) {
  auto& a = dynamic_cast<MlpActivations&>(acts_base);
  PTRAIN_CHECK(batch.B == a.batch(), "batch {} does not match activations {}", batch.B, a.batch());
  const float* features = batch.f32("features");
  const int32_t* targets = batch.i32("targets");
  PTRAIN_CHECK(features != nullptr && targets != nullptr, "MLP needs features+targets");
  PTRAIN_CHECK(cfg_.tp_size == 1 || tp_comm_ != nullptr,
               "a tensor-parallel MLP needs set_tensor_parallel_comm before forward");
  const tensor::Ops& o = ops();
  const int B = batch.B, layers = static_cast<int>(dims_.size()) - 1;
  for (int i = 0; i < B; ++i) {
    if (targets[i] >= cfg_.classes) {
      throw ConfigError(
          fmt::format("label {} in row {} is outside [0, {})", targets[i], i, cfg_.classes),
          "check the data set against the model's number of classes");
    }
  }
  o.copy_from_host(a.input, features, sizeof(float) * B * dims_[0]);
  o.copy_from_host(a.targets, targets, sizeof(int32_t) * B);
  for (int i = 0; i < layers; ++i) {
    const ParamInfo& w = params_[2 * i];
    const ParamInfo& b = params_[2 * i + 1];
    const float* bias = param_data() + b.offset;
    if (split_[i] == Split::kRow) {
      // Partial sums over this rank's input features; the bias once, after the group sum.
      linear_forward(o, a.pre[i], a.layer_input(i), param_data() + w.offset, nullptr, B,
                     in_local_[i], out_local_[i]);
      tp_comm_->allreduce_sum(a.pre[i], static_cast<size_t>(B) * out_local_[i]);
      o.bias_add(a.pre[i], bias, B, out_local_[i]);
    } else {
      linear_forward(o, a.pre[i], a.layer_input(i), param_data() + w.offset, bias, B, in_local_[i],
                     out_local_[i]);
    }
    if (i + 1 < layers) {
      o.relu_forward(a.post[i], a.pre[i], static_cast<size_t>(B) * out_local_[i]);
    }
  }
  o.crossentropy_forward(a.losses, a.lse, a.pre[layers - 1], a.targets, B, cfg_.classes);
  o.copy_to_host(a.losses_host.data(), a.losses, sizeof(float) * B);
  double sum = 0.0;
  for (int i = 0; i < B; ++i) sum += a.losses_host[i];
  a.forward_done = true;
  return sum;
}

void Mlp::backward(Activations& acts_base, float dloss_scale, const float* /*doutput*/) {
  auto& a = dynamic_cast<MlpActivations&>(acts_base);
  PTRAIN_CHECK(a.forward_done, "backward without a forward on these activations");
  const tensor::Ops& o = ops();
  const int B = a.batch(), layers = static_cast<int>(dims_.size()) - 1;
  const int widest = *std::max_element(dims_.begin(), dims_.end());
  const int64_t need = 2 * static_cast<int64_t>(B) * widest;
  if (!dscratch_.defined() || dscratch_.numel() < need) {
    dscratch_ = tensor::Tensor::zeros({need}, tensor::DType::kF32, device_);
  }
  float* dz = dscratch_.data<float>();               // d pre-activation of layer i
  float* dh = dz + static_cast<size_t>(B) * widest;  // d input of layer i
  o.crossentropy_backward(dz, a.pre[layers - 1], a.lse, a.targets, dloss_scale, B, cfg_.classes);
  for (int i = layers - 1; i >= 0; --i) {
    const ParamInfo& w = params_[2 * i];
    const ParamInfo& b = params_[2 * i + 1];
    linear_backward(o, i > 0 ? dh : nullptr, grad_data() + w.offset, grad_data() + b.offset, dz,
                    a.layer_input(i), param_data() + w.offset, B, in_local_[i], out_local_[i]);
    // A column-parallel layer's input gradient is partial: sum it over the group.
    if (i > 0 && split_[i] == Split::kColumn)
      tp_comm_->allreduce_sum(dh, static_cast<size_t>(B) * in_local_[i]);
    grad_ready(2 * i + 1);
    grad_ready(2 * i);
    if (i > 0) {
      size_t n = static_cast<size_t>(B) * in_local_[i];
      o.fill(dz, 0.0f, n);
      o.relu_backward(dz, a.pre[i - 1], dh, n);
    }
  }
}

double Mlp::train_flops(int B, int /*T*/) const {
  double weights = 0;  // this rank's
  for (size_t i = 0; i + 1 < dims_.size(); ++i)
    weights += static_cast<double>(in_local_[i]) * out_local_[i];
  return 6.0 * B * weights;
}

}  // namespace ptrain::nn
