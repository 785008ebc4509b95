#include "ptrain/train/checkpointing.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include "ptrain/core/error.h"
#include "ptrain/data/safetensors.h"

namespace ptrain::train {

data::CheckpointManifest save_training_state(
    const std::string& dir, int keep, int64_t step, const nn::Model& model,
    const std::map<std::string, std::vector<float>>& full_state, const optim::Optimizer& optimizer,
    std::map<std::string, std::string> metadata) {
  std::vector<float> params(model.num_params());
  model.param_buffer().copy_to_host(params.data(), params.size() * sizeof(float));
  data::CheckpointData ckpt;
  ckpt.step = step;
  for (const auto& p : model.params())
    ckpt.model.push_back({p.name, data::DType::kF32, p.shape, params.data() + p.offset});
  for (const auto& [state_name, buf] : full_state) {
    PTRAIN_CHECK(buf.size() == model.num_params(), "state {} has {} of {} elements", state_name,
                 buf.size(), model.num_params());
    for (const auto& p : model.params())
      ckpt.optim.push_back(
          {p.name + "." + state_name, data::DType::kF32, p.shape, buf.data() + p.offset});
  }
  metadata["step"] = std::to_string(step);
  metadata["optimizer"] = optimizer.name();
  metadata["optimizer_steps"] = std::to_string(optimizer.steps());
  ckpt.metadata = std::move(metadata);
  data::CheckpointOptions opts;
  opts.keep = keep;
  return data::save_checkpoint(dir, ckpt, opts);
}

SavedState load_training_state(const data::CheckpointManifest& manifest, nn::Model& model,
                               optim::Optimizer& optimizer) {
  auto mfile = data::SafetensorsFile::open(manifest.model_path());
  std::vector<float> host;
  for (size_t i = 0; i < model.params().size(); ++i) {
    const auto& p = model.params()[i];
    const auto* info = mfile.find(p.name);
    if (!info || info->shape != p.shape)
      throw ConfigError(fmt::format("checkpoint '{}' has no tensor {} of shape [{}]",
                                    manifest.model_path(), p.name, fmt::join(p.shape, ",")),
                        "resume with the model the checkpoint was trained with");
    host.resize(p.numel);
    mfile.read_f32(p.name, host.data());
    model.param(i).copy_from_host(host.data(), p.numel * sizeof(float));
  }
  SavedState saved;
  saved.step = manifest.step;
  saved.metadata = manifest.metadata;
  auto it = manifest.metadata.find("optimizer");
  if (it != manifest.metadata.end() && it->second != optimizer.name())
    throw ConfigError(
        fmt::format("checkpoint '{}' holds {} state but the job uses {}", manifest.manifest_path(),
                    it->second, optimizer.name()),
        "keep train.optimizer.type as it was, or start fresh with checkpoint.resume: never");
  auto states = optimizer.state();
  if (!states.empty()) {
    auto ofile = data::SafetensorsFile::open(manifest.optim_path());
    const auto& shard = optimizer.shard();
    const tensor::Ops& ops = tensor::ops(model.device());
    for (auto& s : states) {
      // Each parameter's slice that falls inside this rank's shard.
      for (const auto& p : model.params()) {
        size_t lo = std::max(p.offset, shard.begin);
        size_t hi = std::min(p.offset + p.numel, shard.end);
        if (lo >= hi) continue;
        std::string name = p.name + "." + s.name;
        if (!ofile.find(name))
          throw ConfigError(fmt::format("checkpoint '{}' has no optimizer tensor {}",
                                        manifest.optim_path(), name));
        host.resize(p.numel);
        ofile.read_f32(name, host.data());
        ops.copy_from_host(s.data + (lo - shard.begin), host.data() + (lo - p.offset),
                           (hi - lo) * sizeof(float));
      }
    }
  }
  auto steps_it = manifest.metadata.find("optimizer_steps");
  optimizer.set_steps(steps_it != manifest.metadata.end() ? std::stoll(steps_it->second)
                                                          : manifest.step);
  return saved;
}

std::optional<data::CheckpointManifest> find_resume_point(const std::string& resume,
                                                          const std::string& dir) {
  if (resume == "never") return std::nullopt;
  if (resume == "auto") return data::find_latest_complete(dir);
  struct stat st {};
  if (::stat(resume.c_str(), &st) != 0)
    throw ConfigError(fmt::format("checkpoint.resume: '{}' does not exist", resume),
                      "name a step-<n>.json manifest or a checkpoint folder, or use auto");
  if (S_ISDIR(st.st_mode)) {
    auto found = data::find_latest_complete(resume);
    if (!found)
      throw ConfigError(fmt::format("checkpoint.resume: no complete checkpoint in '{}'", resume));
    return found;
  }
  return data::validate_checkpoint(resume);
}

}  // namespace ptrain::train
