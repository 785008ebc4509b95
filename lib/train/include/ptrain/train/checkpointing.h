// Saving and restoring a worker's training state (model, optimizer state, step, data position)
// with the checkpoint files of lib/data. The model file uses the model's own parameter names
// (GPT-2 / PyTorch), so it opens in other tools; optimizer state is named
// "<param>.<state>" (exp_avg, exp_avg_sq, momentum_buffer).
#pragma once

#include <map>
#include <optional>
#include <string>

#include "ptrain/data/checkpoint.h"
#include "ptrain/nn/model.h"
#include "ptrain/optim/optimizer.h"

namespace ptrain::train {

struct SavedState {
  int64_t step = 0;  // steps completed
  std::map<std::string, std::string> metadata;
};

// Writes the full model and full optimizer state (host copies). `full_state` holds the optimizer
// buffers covering the whole flat parameter buffer (for ZeRO-1 the caller gathers them first),
// one vector per state name.
data::CheckpointManifest save_training_state(
    const std::string& dir, int keep, int64_t step, const nn::Model& model,
    const std::map<std::string, std::vector<float>>& full_state, const optim::Optimizer& optimizer,
    std::map<std::string, std::string> metadata);

// Restores model weights and this rank's shard of the optimizer state from a checkpoint.
// Throws ConfigError naming the file and tensor on any mismatch.
SavedState load_training_state(const data::CheckpointManifest& manifest, nn::Model& model,
                               optim::Optimizer& optimizer);

// The checkpoint to resume from per checkpoint.resume: "never" → none, "auto" → the newest
// complete one in `dir` (none when there is none), else a path (a manifest, or a folder).
std::optional<data::CheckpointManifest> find_resume_point(const std::string& resume,
                                                          const std::string& dir);

}  // namespace ptrain::train
