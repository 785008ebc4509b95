#include "ptrain/train/setup.h"

#include <fmt/format.h>

#include <algorithm>

#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/nn/gpt.h"
#include "ptrain/nn/mlp.h"
#include "ptrain/spec/plan.h"
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

DataSource make_data(const spec::JobSpec& spec) {
  DataSource ds;
  data::SamplerOptions opts;
  opts.batch_size = spec.data.batch_size;
  opts.shuffle = spec.data.shuffle;
  opts.seed = spec.train.seed;
  opts.eval_fraction = spec.data.eval_fraction;
  const auto& type = spec.data.type;
  if (spec.model.type == "mlp") {
    if (type != "csv")
      throw ConfigError(fmt::format("data.type '{}' cannot feed model.type mlp", type),
                        "use data.type: csv (features then an integer label per row)");
    ds.table = std::make_unique<data::CsvData>(data::CsvData::load(
        spec.data.path, data::CsvOptions{spec.model.input, spec.model.classes}));
    ds.rows = std::make_unique<data::CsvSampler>(*ds.table, opts, data::Split::kTrain);
    if (spec.data.eval_fraction > 0)
      ds.eval_rows = std::make_unique<data::CsvSampler>(*ds.table, opts, data::Split::kEval);
    return ds;
  }
  if (type == "tokens") {
    ds.stream = data::open_token_file(spec.data.path, spec.model.vocab);
  } else if (type == "text") {
    if (spec.model.vocab < 256)
      throw ConfigError(
          fmt::format("model.vocab is {} but data.type text needs 256 (bytes)", spec.model.vocab),
          "set model.vocab: 256");
    ds.stream = data::open_text_file(spec.data.path);
  } else if (type == "synthetic") {
    data::SyntheticOptions so;
    so.vocab = spec.model.vocab;
    so.seed = spec.train.seed;
    so.num_tokens =
        std::max<int64_t>(1 << 20, int64_t(spec.data.batch_size) * (spec.model.seq_len + 1) * 4);
    ds.stream = data::make_synthetic(so);
  } else {
    throw ConfigError(fmt::format("data.type '{}' cannot feed model.type gpt", type),
                      "use tokens, text or synthetic");
  }
  ds.seq_len = spec.model.seq_len;
  ds.tokens =
      std::make_unique<data::TokenSampler>(*ds.stream, ds.seq_len, opts, data::Split::kTrain);
  if (spec.data.eval_fraction > 0)
    ds.eval_tokens =
        std::make_unique<data::TokenSampler>(*ds.stream, ds.seq_len, opts, data::Split::kEval);
  return ds;
}

std::vector<std::pair<int, int>> stage_ranges(const spec::JobSpec& spec) {
  // The same partition `ptrain validate` prints (balanced by parameter count).
  std::vector<int> counts = spec::stage_layers(spec);
  std::vector<std::pair<int, int>> out;
  int begin = 0;
  for (int c : counts) {
    out.emplace_back(begin, begin + c);
    begin += c;
  }
  return out;
}

std::unique_ptr<nn::Model> make_model(const spec::JobSpec& spec, tensor::Device device, int stage,
                                      int tp_rank) {
  std::unique_ptr<nn::Model> model;
  if (spec.model.type == "gpt") {
    nn::GptConfig cfg;
    cfg.layers = spec.model.layers;
    cfg.heads = spec.model.heads;
    cfg.dim = spec.model.dim;
    cfg.seq_len = spec.model.seq_len;
    cfg.vocab = spec.model.vocab;
    cfg.device = device;
    cfg.precision = spec.train.precision;
    cfg.tp_size = spec.parallel.tensor;
    cfg.tp_rank = tp_rank;
    auto ranges = stage_ranges(spec);
    cfg.layer_begin = ranges.at(stage).first;
    cfg.layer_end = ranges.at(stage).second;
    cfg.has_embedding = stage == 0;
    cfg.has_head = stage == spec.parallel.pipeline - 1;
    model = std::make_unique<nn::Gpt>(cfg);
  } else {
    if (spec.parallel.pipeline > 1)
      throw ConfigError("model.type mlp runs data and tensor parallel only in this version",
                        "set parallel.pipeline: 1");
    if (spec.train.precision != "fp32")
      throw ConfigError("train.precision bf16 is implemented for model.type gpt only",
                        "set train.precision: fp32 for the MLP");
    nn::MlpConfig cfg;
    cfg.input_dim = spec.model.input;
    cfg.hidden = spec.model.hidden;
    cfg.classes = spec.model.classes;
    cfg.tp_size = spec.parallel.tensor;
    cfg.tp_rank = tp_rank;
    cfg.device = device;
    model = std::make_unique<nn::Mlp>(cfg);
  }
  model->init(spec.train.seed);
  if (!spec.model.init_from.empty()) load_weights(*model, spec.model.init_from);
  return model;
}

optim::ParamLayout make_layout(const nn::Model& model) {
  optim::ParamLayout layout;
  for (const auto& p : model.params()) layout.add(p.name, p.offset, p.numel, p.decay);
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
    if (p.is_split()) {  // this tensor-parallel rank's part
      std::vector<float> part(p.numel);
      nn::copy_shard_from_full(p, p.split_rank, host.data(), part.data());
      host.swap(part);
    }
    model.param(i).copy_from_host(host.data(), p.numel * sizeof(float));
  }
  if (!allow_extra) {
    for (const auto& t : file.tensors())
      if (model.find_param(t.name) < 0)
        problems.push_back(fmt::format("{} is not in the model", t.name));
  }
  if (!problems.empty()) {
    size_t shown = std::min<size_t>(problems.size(), 6);
    std::vector<std::string> head(problems.begin(), problems.begin() + shown);
    throw ConfigError(
        fmt::format(
            "weights in '{}' do not match the model: {}{}", path, fmt::join(head, "; "),
            problems.size() > shown ? fmt::format(" (and {} more)", problems.size() - shown) : ""),
        "check model.layers/dim/heads/vocab/seq_len against the checkpoint");
  }
}

}  // namespace ptrain::train
