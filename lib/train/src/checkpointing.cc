#include "ptrain/train/checkpointing.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include "ptrain/core/error.h"
#include "ptrain/data/safetensors.h"

namespace ptrain::train {

FullState gather_full(const nn::Model& model, const float* flat, comm::ProcessMesh* mesh) {
  // Tensor parallelism (tp > 1) joins split parameters here; pipeline parallelism (pp > 1)
  // merges the stages onto pipeline rank 0. With neither, the local tensors are the full ones.
  if (mesh) {
    PTRAIN_CHECK(mesh->shape().tp == 1 && mesh->shape().pp == 1,
                 "gathering tensor/pipeline shards is not implemented");
    if (mesh->rank() != 0) return {};
  }
  std::vector<float> host(model.num_params());
  tensor::ops(model.device()).copy_to_host(host.data(), flat, host.size() * sizeof(float));
  FullState out;
  for (const auto& p : model.params())
    out.push_back({p.name, p.shape,
                   std::vector<float>(host.begin() + p.offset, host.begin() + p.offset + p.numel)});
  return out;
}

void read_local(const data::SafetensorsFile& file, const std::string& file_name,
                const nn::ParamInfo& p, std::vector<float>& out) {
  const auto* info = file.find(file_name);
  if (!info || info->shape != p.shape)
    throw ConfigError(
        fmt::format("checkpoint '{}' has no tensor {} of shape [{}]{}", file.origin(), file_name,
                    fmt::join(p.shape, ","),
                    info ? fmt::format(" (it has [{}])", fmt::join(info->shape, ",")) : ""),
        "resume with the model the checkpoint was trained with");
  out.resize(p.numel);
  file.read_f32(file_name, out.data());
}

static std::vector<data::TensorRef> refs(const FullState& state, const std::string& suffix) {
  std::vector<data::TensorRef> out;
  for (const auto& t : state)
    out.push_back({t.name + suffix, data::DType::kF32, t.shape, t.data.data()});
  return out;
}

data::CheckpointManifest save_training_state(
    const std::string& dir, int keep, int64_t step, const FullState& model,
    const std::vector<std::pair<std::string, FullState>>& optim, const optim::Optimizer& optimizer,
    std::map<std::string, std::string> metadata) {
  data::CheckpointData ckpt;
  ckpt.step = step;
  ckpt.model = refs(model, "");
  for (const auto& [state_name, state] : optim) {
    auto r = refs(state, "." + state_name);
    ckpt.optim.insert(ckpt.optim.end(), r.begin(), r.end());
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
  auto it = manifest.metadata.find("optimizer");
  if (it != manifest.metadata.end() && it->second != optimizer.name())
    throw ConfigError(fmt::format("checkpoint '{}' holds {} state but the job uses {}",
                                  manifest.manifest_path(), it->second, optimizer.name()),
                      "keep train.optimizer.type as it was, or set checkpoint.resume: never");
  auto mfile = data::SafetensorsFile::open(manifest.model_path());
  std::vector<float> host;
  for (size_t i = 0; i < model.params().size(); ++i) {
    const auto& p = model.params()[i];
    read_local(mfile, p.name, p, host);
    model.param(i).copy_from_host(host.data(), p.numel * sizeof(float));
  }
  auto states = optimizer.state();
  if (!states.empty()) {
    auto ofile = data::SafetensorsFile::open(manifest.optim_path());
    const auto& shard = optimizer.shard();
    const tensor::Ops& ops = tensor::ops(model.device());
    for (auto& s : states) {
      // Each parameter's part that falls inside this rank's (ZeRO-1) shard.
      for (const auto& p : model.params()) {
        size_t lo = std::max(p.offset, shard.begin);
        size_t hi = std::min(p.offset + p.numel, shard.end);
        if (lo >= hi) continue;
        read_local(ofile, p.name + "." + s.name, p, host);
        ops.copy_from_host(s.data + (lo - shard.begin), host.data() + (lo - p.offset),
                           (hi - lo) * sizeof(float));
      }
    }
  }
  SavedState saved;
  saved.step = manifest.step;
  saved.metadata = manifest.metadata;
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
