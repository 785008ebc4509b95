#include "ptrain/train/setup.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/models/registry.h"
#include "ptrain/tensor/cuda_plugin.h"

namespace ptrain::train {

tensor::Device resolve_device(const std::string& device) {
  if (device == "cpu") return tensor::Device::kCpu;
  if (device == "cuda") {
    if (!tensor::cuda_ops())
      throw ConfigError(
          "nodes.device is cuda but CUDA is not usable here: " + tensor::cuda_unavailable_reason(),
          "check nvidia-smi and CUDA_VISIBLE_DEVICES, or set nodes.device: cpu");
    return tensor::Device::kCuda;
  }
  return tensor::cuda_ops() ? tensor::Device::kCuda : tensor::Device::kCpu;
}

int resolve_threads(const spec::JobSpec& spec) {
  if (spec.nodes.threads_per_proc > 0) return spec.nodes.threads_per_proc;
  long omp = env_int("OMP_NUM_THREADS", 0);
  return omp > 0 ? static_cast<int>(omp) : 1;
}

std::unique_ptr<nn::Model> make_model(const spec::JobSpec& spec, tensor::Device device, int stage,
                                      int tp_rank, int dp_rank) {
  auto model = models::make_model(spec, device, stage, tp_rank, dp_rank);
  model->init(spec.train.seed);
  if (!spec.model.init_from.empty()) load_weights(*model, spec.model.init_from);
  return model;
}

optim::ParamLayout make_layout(const nn::Model& model) {
  optim::ParamLayout layout;
  // Sharded parameters (embedding tables with their owners) have their own sparse optimizer.
  for (const auto& p : model.params())
    if (p.sync == nn::ParamInfo::Sync::kDense) layout.add(p.name, p.offset, p.numel, p.decay);
  return layout;
}

std::unique_ptr<optim::Optimizer> make_optimizer(const spec::JobSpec& spec, const tensor::Ops& ops,
                                                 optim::ParamLayout layout, optim::Shard shard) {
  const auto& o = spec.train.optimizer;
  if (o.type == "sgd") {
    optim::SgdOptions so;
    so.momentum = static_cast<float>(o.momentum);
    so.nesterov = o.nesterov;
    so.weight_decay = static_cast<float>(o.weight_decay);
    return std::make_unique<optim::Sgd>(ops, std::move(layout), shard, so);
  }
  optim::AdamWOptions ao;
  ao.beta1 = static_cast<float>(o.beta1);
  ao.beta2 = static_cast<float>(o.beta2);
  ao.eps = static_cast<float>(o.eps);
  ao.weight_decay = static_cast<float>(o.weight_decay);
  return std::make_unique<optim::AdamW>(ops, std::move(layout), shard, ao);
}

optim::LrSchedule make_schedule(const spec::JobSpec& spec) {
  optim::LrScheduleOptions so;
  so.lr = spec.train.optimizer.lr;
  so.warmup = spec.train.schedule.warmup;
  so.decay = optim::parse_decay(spec.train.schedule.decay);
  so.min_lr = spec.train.schedule.min_lr;
  so.total_steps = spec.train.steps;
  return optim::LrSchedule(so);
}

void load_weights(nn::Model& model, const std::string& path, bool allow_extra) {
  auto file = data::SafetensorsFile::open(path);
  std::vector<std::string> problems;
  std::vector<float> host;
  for (size_t i = 0; i < model.params().size(); ++i) {
    const auto& p = model.params()[i];
    const auto* info = file.find(p.name);
    if (!info) {
      problems.push_back(fmt::format("{} is missing", p.name));
      continue;
    }
    if (info->shape != p.full_shape) {
      problems.push_back(fmt::format("{} has shape [{}] in the file but [{}] in the model", p.name,
                                     fmt::join(info->shape, ","), fmt::join(p.full_shape, ",")));
      continue;
    }
    host.resize(p.full_numel());
    file.read_f32(p.name, host.data());
    if (p.is_split() || p.is_row_sharded()) {  // this rank's part (tensor shard, rows)
      std::vector<float> part(p.numel);
      nn::copy_shard_from_full(p, p.split_rank, host.data(), part.data());
      host.swap(part);
    }
    model.param(i).copy_from_host(host.data(), p.numel * sizeof(float));
  }
  for (const auto& b : model.buffers()) {
    const auto* info = file.find(b.name);
    if (!info) {
      if (!b.optional) problems.push_back(fmt::format("{} is missing", b.name));
      continue;
    }
    if (info->shape != b.shape) {
      problems.push_back(fmt::format("{} has shape [{}] in the file but [{}] in the model", b.name,
                                     fmt::join(info->shape, ","), fmt::join(b.shape, ",")));
      continue;
    }
    host.resize(b.numel);
    file.read_as_f32(b.name, host.data());
    tensor::ops(model.device())
        .copy_from_host(model.buffer_data() + b.offset, host.data(), b.numel * sizeof(float));
  }
  if (!allow_extra) {
    for (const auto& t : file.tensors())
      if (model.find_param(t.name) < 0 && model.find_buffer(t.name) < 0)
        problems.push_back(fmt::format("{} is not in the model", t.name));
  }
  if (!problems.empty()) {
    size_t shown = std::min<size_t>(problems.size(), 6);
    std::vector<std::string> head(problems.begin(), problems.begin() + shown);
    throw ConfigError(
        fmt::format(
            "weights in '{}' do not match the model: {}{}", path, fmt::join(head, "; "),
            problems.size() > shown ? fmt::format(" (and {} more)", problems.size() - shown) : ""),
        "check the model's keys (ptrain validate shows them) against the checkpoint's shapes");
  }
}

}  // namespace ptrain::train
