// ResNet forward/backward over nn/cnn.h (host memory: the CPU op table's GEMMs and loops).
#include "resnet/resnet.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ptrain/core/error.h"
#include "ptrain/nn/init.h"
#include "ptrain/nn/layers.h"

namespace ptrain::nn {
namespace {

struct NormState {
  std::vector<float> mean, var, rstd;
  int64_t count = 0;
  bool batch = true;  // batch statistics (training) or the running ones (evaluation)
};

struct BlockActs {
  std::vector<float> a1, h1, a2, out, ad;  // conv1 out, relu(bn1), conv2 out, block out, down
  NormState n1, n2, nd;
};

class ResNetActs : public Activations {
 public:
  int batch() const override { return B; }
  int seq() const override { return 1; }
  const float* output() const override { return nullptr; }
  const float* input_grad() const override { return nullptr; }

  int B = 0;
  std::vector<float> x, a0, h0, p0;  // input, stem conv out, relu(bn), max-pooled
  std::vector<int32_t> argmax;
  NormState n0;
  std::vector<BlockActs> blocks;
  std::vector<float> feat, logits, lse, losses;
  std::vector<int32_t> targets;
  // Backward scratch (t1 also holds the shortcut's BN output during forward).
  std::vector<float> g0, g1, dz, t1, t2, dlogits, dfeat;
  bool forward_done = false;
};

void relu_inplace(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = x[i] > 0 ? x[i] : 0.0f;
}
// g = g where y > 0, else 0 (the ReLU's backward from its output).
void relu_mask(float* g, const float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) g[i] = y[i] > 0 ? g[i] : 0.0f;
}
void add_into(float* dst, const float* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] += src[i];
}

int conv_out(int in, int k, int stride, int pad) {
  return (in + 2 * pad - k) / stride + 1;
}

}  // namespace

void validate(const ResNetConfig& c) {
  if (c.in_channels < 1)
    throw ConfigError(fmt::format("ResNet needs at least 1 input channel, got {}", c.in_channels),
                      "set model.in_channels");
  if (c.classes < 2)
    throw ConfigError(fmt::format("ResNet needs at least 2 classes, got {}", c.classes),
                      "set model.classes");
  if (c.widths.empty() || c.widths.size() != c.blocks.size())
    throw ConfigError(fmt::format("model.widths has {} stages but model.blocks has {}",
                                  c.widths.size(), c.blocks.size()),
                      "give one width and one block count per stage");
  for (size_t i = 0; i < c.widths.size(); ++i)
    if (c.widths[i] < 1 || c.blocks[i] < 1)
      throw ConfigError(
          fmt::format("stage {} has width {} and {} blocks", i + 1, c.widths[i], c.blocks[i]),
          "widths and blocks must be positive");
  resnet_feature_sizes(c);
}

std::vector<std::pair<int, int>> resnet_feature_sizes(const ResNetConfig& c) {
  if (c.height < 1 || c.width < 1)
    throw ConfigError(fmt::format("a {}x{} image has no pixels", c.height, c.width));
  std::vector<std::pair<int, int>> out;
  int h = c.height, w = c.width;
  auto down = [&](const std::string& layer, int k, int stride, int pad) {
    if (stride > 1 && (h < 2 || w < 2))
      throw ConfigError(
          fmt::format("a {}x{} image is {}x{} before {}, which downsamples it again: the image is "
                      "too small for the {} stem and {} stages",
                      c.height, c.width, h, w, layer, c.imagenet_stem ? "imagenet" : "cifar",
                      c.widths.size()),
          "use model.stem: cifar, fewer stages (model.widths / model.blocks), or larger images");
    h = conv_out(h, k, stride, pad);
    w = conv_out(w, k, stride, pad);
  };
  if (c.imagenet_stem) {
    down("conv1", 7, 2, 3);
    down("the max-pool", 3, 2, 1);
  }
  out.emplace_back(h, w);
  for (size_t i = 0; i < c.widths.size(); ++i) {
    if (i > 0) down(fmt::format("layer{}", i + 1), 3, 2, 1);
    out.emplace_back(h, w);
  }
  return out;
}

void ResNet::add_conv(Conv& c, const std::string& name, int C, int H, int W, int OC, int k,
                      int stride, int pad) {
  c.param = int(params_.size());
  c.shape.N = 1, c.shape.C = C, c.shape.H = H, c.shape.W = W, c.shape.OC = OC;
  c.shape.KH = c.shape.KW = k, c.shape.stride = stride, c.shape.pad = pad;
  add_param(name, {OC, C, k, k});
}

void ResNet::add_norm(Norm& n, const std::string& name, int C, int HW) {
  n.C = C, n.HW = HW;
  n.weight = int(params_.size());
  add_param(name + ".weight", {C});
  n.bias = int(params_.size());
  add_param(name + ".bias", {C});
  n.mean = int(buffers_.size());
  add_buffer(name + ".running_mean", {C});
  n.var = int(buffers_.size());
  add_buffer(name + ".running_var", {C});
  n.count = int(buffers_.size());
  add_buffer(name + ".num_batches_tracked", {}, /*optional=*/true);
}

ResNet::ResNet(const ResNetConfig& config) : Model(config.device), cfg_(config) {
  if (cfg_.device != tensor::Device::kCpu)
    throw ConfigError("the resnet family has CPU kernels only (conv2d, batch norm, pooling)",
                      "set nodes.device: cpu");
  validate(cfg_);
  const int w0 = cfg_.widths[0];
  int H = cfg_.height, W = cfg_.width;
  if (cfg_.imagenet_stem) {
    add_conv(stem_, "conv1.weight", cfg_.in_channels, H, W, w0, 7, 2, 3);
    H = conv_out(H, 7, 2, 3), W = conv_out(W, 7, 2, 3);
  } else {
    add_conv(stem_, "conv1.weight", cfg_.in_channels, H, W, w0, 3, 1, 1);
  }
  add_norm(stem_bn_, "bn1", w0, H * W);
  stem_numel_ = w0 * H * W;
  pooled_numel_ = stem_numel_;
  if (cfg_.imagenet_stem) {
    pool_.N = 1, pool_.C = w0, pool_.H = H, pool_.W = W, pool_.K = 3, pool_.stride = 2,
    pool_.pad = 1;
    H = pool_.OH(), W = pool_.OW();
    pooled_numel_ = w0 * H * W;
  }
  int C = w0;
  for (size_t s = 0; s < cfg_.widths.size(); ++s) {
    const int width = cfg_.widths[s];
    for (int b = 0; b < cfg_.blocks[s]; ++b) {
      const int stride = b == 0 && s > 0 ? 2 : 1;
      const std::string name = fmt::format("layer{}.{}.", s + 1, b);
      Block blk;
      add_conv(blk.conv1, name + "conv1.weight", C, H, W, width, 3, stride, 1);
      const int Ho = blk.conv1.shape.OH(), Wo = blk.conv1.shape.OW();
      add_norm(blk.bn1, name + "bn1", width, Ho * Wo);
      add_conv(blk.conv2, name + "conv2.weight", width, Ho, Wo, width, 3, 1, 1);
      add_norm(blk.bn2, name + "bn2", width, Ho * Wo);
      if (stride != 1 || C != width) {
        blk.has_down = true;
        add_conv(blk.down, name + "downsample.0.weight", C, H, W, width, 1, stride, 0);
        add_norm(blk.down_bn, name + "downsample.1", width, Ho * Wo);
      }
      blk.out_numel = width * Ho * Wo;
      blocks_.push_back(blk);
      C = width, H = Ho, W = Wo;
    }
  }
  feat_ = C;
  feat_hw_ = H * W;
  fc_weight_ = int(params_.size());
  add_param("fc.weight", {cfg_.classes, C});
  fc_bias_ = int(params_.size());
  add_param("fc.bias", {cfg_.classes});
  allocate_params();
}

void ResNet::init(uint64_t seed) {
  std::vector<float> host;
  for (const ParamInfo& p : params_) {
    host.assign(p.numel, 0.0f);
    const uint64_t key = param_key(seed, p.name);
    if (p.shape.size() == 4) {  // kaiming_normal_(mode="fan_out", nonlinearity="relu")
      const double fan_out = double(p.shape[0]) * p.shape[2] * p.shape[3];
      fill_normal(host.data(), host.size(), key, 0.0f, float(std::sqrt(2.0 / fan_out)));
    } else if (p.name.rfind("fc.", 0) == 0) {  // nn.Linear's default
      const float bound = 1.0f / std::sqrt(float(feat_));
      fill_uniform(host.data(), host.size(), key, -bound, bound);
    } else if (p.name.size() > 7 && p.name.substr(p.name.size() - 7) == ".weight") {
      std::fill(host.begin(), host.end(), 1.0f);  // BatchNorm weight
    }
    ops().copy_from_host(param_data() + p.offset, host.data(), p.numel * sizeof(float));
  }
  if (buffers_.empty()) return;
  host.assign(num_buffer_elems_, 0.0f);
  for (const BufferInfo& b : buffers_)
    if (b.name.size() > 12 && b.name.substr(b.name.size() - 12) == ".running_var")
      std::fill_n(host.begin() + long(b.offset), b.numel, 1.0f);
  ops().copy_from_host(buffer_data(), host.data(), host.size() * sizeof(float));
}

std::unique_ptr<Activations> ResNet::make_activations(int B, int /*T*/) const {
  PTRAIN_CHECK(B > 0, "batch {} must be positive", B);
  auto a = std::make_unique<ResNetActs>();
  a->B = B;
  const size_t b = size_t(B);
  const size_t in = b * cfg_.in_channels * cfg_.height * cfg_.width;
  a->x.resize(in);
  a->a0.resize(b * stem_numel_);
  a->h0.resize(b * stem_numel_);
  if (cfg_.imagenet_stem) {
    a->p0.resize(b * pooled_numel_);
    a->argmax.resize(b * pooled_numel_);
  }
  size_t widest = std::max<size_t>(b * stem_numel_, b * pooled_numel_);
  a->blocks.resize(blocks_.size());
  for (size_t k = 0; k < blocks_.size(); ++k) {
    const size_t n = b * blocks_[k].out_numel;
    BlockActs& ba = a->blocks[k];
    ba.a1.resize(n), ba.h1.resize(n), ba.a2.resize(n), ba.out.resize(n);
    if (blocks_[k].has_down) ba.ad.resize(n);
    widest = std::max(widest, n);
  }
  for (auto* v : {&a->g0, &a->g1, &a->dz, &a->t1, &a->t2}) v->resize(widest);
  a->feat.resize(b * feat_);
  a->dfeat.resize(b * feat_);
  a->logits.resize(b * cfg_.classes);
  a->dlogits.resize(b * cfg_.classes);
  a->lse.resize(b);
  a->losses.resize(b);
  a->targets.resize(b);
  return a;
}

double ResNet::forward(const Batch& batch, Activations& base) {
  auto& a = dynamic_cast<ResNetActs&>(base);
  PTRAIN_CHECK(batch.B == a.B, "batch {} does not match activations {}", batch.B, a.B);
  const float* images = batch.f32("images");
  const int32_t* targets = batch.i32("targets");
  PTRAIN_CHECK(images != nullptr && targets != nullptr, "a ResNet batch needs images and targets");
  const int B = batch.B;
  for (int i = 0; i < B; ++i)
    if (targets[i] < -1 || targets[i] >= cfg_.classes)
      throw ConfigError(
          fmt::format("label {} of image {} is outside [0, {})", targets[i], i, cfg_.classes),
          "check the data set against model.classes");
  std::memcpy(a.x.data(), images, a.x.size() * sizeof(float));
  std::memcpy(a.targets.data(), targets, size_t(B) * sizeof(int32_t));
  const tensor::Ops& o = ops();
  const float* w = param_data();
  float* buf = buffer_data();
  GroupComm* group = cfg_.sync_bn ? dp_comm_ : nullptr;

  auto conv = [&](float* out, const float* in, const Conv& c) {
    Conv2dShape s = c.shape;
    s.N = B;
    conv2d_forward(o, out, in, w + params_[c.param].offset, s);
  };
  auto norm = [&](float* y, const float* x, const Norm& n, NormState& st) {
    BatchNormShape s{B, n.C, n.HW};
    st.mean.resize(n.C), st.var.resize(n.C), st.rstd.resize(n.C);
    const float* gamma = w + params_[n.weight].offset;
    const float* beta = w + params_[n.bias].offset;
    float* rmean = buf + buffers_[n.mean].offset;
    float* rvar = buf + buffers_[n.var].offset;
    if (training_) {
      // Synchronised: one allreduce, shifted by the running mean (identical on every rank).
      st.count = batchnorm_forward_training(y, st.mean.data(), st.var.data(), st.rstd.data(), x,
                                            gamma, beta, s, group, cfg_.sync_bn ? rmean : nullptr);
      batchnorm_update_running(rmean, rvar, buf + buffers_[n.count].offset, st.mean.data(),
                               st.var.data(), st.count, s);
      st.batch = true;
    } else {
      std::copy_n(rmean, n.C, st.mean.data());
      batchnorm_normalize(y, st.rstd.data(), x, rmean, rvar, gamma, beta, s);
      st.count = 0;
      st.batch = false;
    }
  };

  conv(a.a0.data(), a.x.data(), stem_);
  norm(a.h0.data(), a.a0.data(), stem_bn_, a.n0);
  relu_inplace(a.h0.data(), size_t(B) * stem_numel_);
  const float* cur = a.h0.data();
  if (cfg_.imagenet_stem) {
    PoolShape p = pool_;
    p.N = B;
    maxpool2d_forward(a.p0.data(), a.argmax.data(), a.h0.data(), p);
    cur = a.p0.data();
  }
  for (size_t k = 0; k < blocks_.size(); ++k) {
    const Block& blk = blocks_[k];
    BlockActs& ba = a.blocks[k];
    const size_t n = size_t(B) * blk.out_numel;
    conv(ba.a1.data(), cur, blk.conv1);
    norm(ba.h1.data(), ba.a1.data(), blk.bn1, ba.n1);
    relu_inplace(ba.h1.data(), n);
    conv(ba.a2.data(), ba.h1.data(), blk.conv2);
    norm(ba.out.data(), ba.a2.data(), blk.bn2, ba.n2);
    if (blk.has_down) {
      conv(ba.ad.data(), cur, blk.down);
      norm(a.t1.data(), ba.ad.data(), blk.down_bn, ba.nd);
      add_into(ba.out.data(), a.t1.data(), n);
    } else {
      add_into(ba.out.data(), cur, n);
    }
    relu_inplace(ba.out.data(), n);
    cur = ba.out.data();
  }
  global_avgpool_forward(a.feat.data(), cur, B, feat_, feat_hw_);
  linear_forward(o, a.logits.data(), a.feat.data(), w + params_[fc_weight_].offset,
                 w + params_[fc_bias_].offset, B, feat_, cfg_.classes);
  crossentropy_smoothed_forward(a.losses.data(), a.lse.data(), a.logits.data(), a.targets.data(), B,
                                cfg_.classes, cfg_.label_smoothing);
  double sum = 0;
  for (int i = 0; i < B; ++i) sum += a.losses[size_t(i)];
  a.forward_done = true;
  return sum;
}

void ResNet::backward(Activations& base, float dloss_scale, const float* /*doutput*/) {
  auto& a = dynamic_cast<ResNetActs&>(base);
  PTRAIN_CHECK(a.forward_done, "backward without a forward on these activations");
  const tensor::Ops& o = ops();
  const int B = a.B;
  const float* w = param_data();
  float* g = grad_data();
  GroupComm* group = cfg_.sync_bn ? dp_comm_ : nullptr;

  auto conv_back = [&](float* dx, const float* dy, const float* x, const Conv& c) {
    Conv2dShape s = c.shape;
    s.N = B;
    const ParamInfo& p = params_[c.param];
    conv2d_backward(o, dx, g + p.offset, dy, x, w + p.offset, s);
    grad_ready(size_t(c.param));
  };
  auto norm_back = [&](float* dx, const float* dy, const float* x, const Norm& n,
                       const NormState& st) {
    BatchNormShape s{B, n.C, n.HW};
    batchnorm_backward(dx, g + params_[n.weight].offset, g + params_[n.bias].offset, dy, x,
                       st.mean.data(), st.rstd.data(), w + params_[n.weight].offset, s, st.batch,
                       st.count, group);
    grad_ready(size_t(n.bias));
    grad_ready(size_t(n.weight));
  };

  crossentropy_smoothed_backward(a.dlogits.data(), a.logits.data(), a.lse.data(), a.targets.data(),
                                 B, cfg_.classes, cfg_.label_smoothing, dloss_scale);
  linear_backward(o, a.dfeat.data(), g + params_[fc_weight_].offset, g + params_[fc_bias_].offset,
                  a.dlogits.data(), a.feat.data(), w + params_[fc_weight_].offset, B, feat_,
                  cfg_.classes);
  grad_ready(size_t(fc_bias_));
  grad_ready(size_t(fc_weight_));
  float* gout = a.g0.data();
  float* gin = a.g1.data();
  global_avgpool_backward(gout, a.dfeat.data(), B, feat_, feat_hw_);
  const float* stem_out = cfg_.imagenet_stem ? a.p0.data() : a.h0.data();
  for (size_t k = blocks_.size(); k-- > 0;) {
    const Block& blk = blocks_[k];
    BlockActs& ba = a.blocks[k];
    const float* input = k == 0 ? stem_out : a.blocks[k - 1].out.data();
    const size_t n = size_t(B) * blk.out_numel;
    std::copy_n(gout, n, a.dz.data());
    relu_mask(a.dz.data(), ba.out.data(), n);
    norm_back(a.t1.data(), a.dz.data(), ba.a2.data(), blk.bn2, ba.n2);
    conv_back(a.t2.data(), a.t1.data(), ba.h1.data(), blk.conv2);
    relu_mask(a.t2.data(), ba.h1.data(), n);
    norm_back(a.t1.data(), a.t2.data(), ba.a1.data(), blk.bn1, ba.n1);
    conv_back(gin, a.t1.data(), input, blk.conv1);
    const size_t in_n = size_t(B) * blk.conv1.shape.C * blk.conv1.shape.H * blk.conv1.shape.W;
    if (blk.has_down) {
      norm_back(a.t1.data(), a.dz.data(), ba.ad.data(), blk.down_bn, ba.nd);
      conv_back(a.t2.data(), a.t1.data(), input, blk.down);
      add_into(gin, a.t2.data(), in_n);
    } else {
      add_into(gin, a.dz.data(), in_n);
    }
    std::swap(gin, gout);
  }
  // gout: the gradient of the stem's output.
  float* dh0 = gout;
  if (cfg_.imagenet_stem) {
    PoolShape p = pool_;
    p.N = B;
    maxpool2d_backward(a.t1.data(), gout, a.argmax.data(), p);
    dh0 = a.t1.data();
  }
  relu_mask(dh0, a.h0.data(), size_t(B) * stem_numel_);
  norm_back(a.t2.data(), dh0, a.a0.data(), stem_bn_, a.n0);
  conv_back(nullptr, a.t2.data(), a.x.data(), stem_);
}

double ResNet::train_flops(int B, int /*T*/) const {
  double macs = stem_.shape.macs();
  for (const Block& b : blocks_) {
    macs += b.conv1.shape.macs() + b.conv2.shape.macs();
    if (b.has_down) macs += b.down.shape.macs();
  }
  macs += double(feat_) * cfg_.classes;
  return 6.0 * B * macs;  // forward 2 x MACs, backward 4 x
}

void ResNet::eval_sums(const Activations& base, EvalSums& sums) const {
  const auto& a = dynamic_cast<const ResNetActs&>(base);
  double correct = 0, count = 0;
  for (int i = 0; i < a.B; ++i) {
    const int t = a.targets[size_t(i)];
    if (t < 0) continue;
    const float* z = a.logits.data() + size_t(i) * cfg_.classes;
    const int best = int(std::max_element(z, z + cfg_.classes) - z);
    correct += best == t;
    count += 1;
  }
  sums["correct"] += correct;
  sums["count"] += count;
}

std::vector<float> ResNet::logits(const Activations& base) const {
  return dynamic_cast<const ResNetActs&>(base).logits;
}

}  // namespace ptrain::nn
