// Saving and restoring a worker's training state (model, optimizer state, step, data position)
// with the checkpoint files of lib/data. Files hold FULL tensors under the model's own names
// (GPT-2 / PyTorch), whatever mesh wrote them: sharded parameters are gathered before a save
// and each rank slices its own part out on load, so a checkpoint resumes on any mesh.
// Optimizer state is named "<param>.<state>" (exp_avg, exp_avg_sq, momentum_buffer).
#pragma once

#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ptrain/comm/mesh.h"
#include "ptrain/core/host_memory.h"
#include "ptrain/data/checkpoint.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/nn/model.h"
#include "ptrain/optim/optimizer.h"
#include "ptrain/optim/sparse.h"
#include "ptrain/spec/job_spec.h"

namespace ptrain::train {

// One unsharded tensor on the host.
struct FullTensor {
  std::string name;
  std::vector<int64_t> shape;
  HostVector<float> data;  // host_memory.h: a snapshot of GBs is written once, on huge pages
};
using FullState = std::vector<FullTensor>;  // in model parameter order

// Collective over the mesh (every rank must call it with a buffer laid out like the model's
// parameters: the parameters themselves, or an optimizer state covering every parameter).
// Returns the whole model's tensors on the writing rank (global rank 0) and an empty state
// elsewhere. Tensor-parallel shards are joined along their split dimension; pipeline stages
// are merged (a stage's duplicate of a tied tensor is left out). `mesh` may be null.
// `add`, when given, extends each writing rank's local tensors before stages are merged.
// Sharded parameters (row ranges over the data group, nn::ParamInfo::row_splits) are joined
// onto data rank 0 first; `sharded` false leaves them out (a dense optimizer's state, whose
// buffer then only covers the first dense_numel() elements).
FullState gather_full(const nn::Model& model, const float* flat, comm::ProcessMesh* mesh,
                      const std::function<FullState(FullState)>& add = {}, bool sharded = true);
// Collective over the data group: the full [rows, inner] tensor from every data rank's rows
// [splits[r], splits[r+1]) (`local` on the host), returned on data rank 0 (empty elsewhere).
HostVector<float> gather_rows(comm::ProcessMesh* mesh, const std::vector<int64_t>& splits,
                              size_t inner, const float* local);
// The model's parameters and buffers (BatchNorm statistics), gathered like gather_full.
FullState gather_model_state(const nn::Model& model, comm::ProcessMesh* mesh);

// This rank's part of parameter `p` (its tensor-parallel slice when the parameter is split)
// from tensor `file_name` of a checkpoint file, into `out` (p.numel floats). Throws ConfigError
// naming the file and tensor when it is missing or its shape does not match.
void read_local(const data::SafetensorsFile& file, const std::string& file_name,
                const nn::ParamInfo& p, std::vector<float>& out);

struct SavedState {
  int64_t step = 0;  // steps completed
  std::map<std::string, std::string> metadata;
};

// Writes a checkpoint from gathered state (call on the writing rank only).
data::CheckpointManifest save_training_state(
    const std::string& dir, int keep, int64_t step, const FullState& model,
    const std::vector<std::pair<std::string, FullState>>& optim, const optim::Optimizer& optimizer,
    std::map<std::string, std::string> metadata);
// The same with the optimizer's name and step count given: for a save that runs while the
// optimizer keeps stepping, and for the parameter servers' state, which no single optimizer
// object holds.
data::CheckpointManifest save_training_state(
    const std::string& dir, int keep, int64_t step, const FullState& model,
    const std::vector<std::pair<std::string, FullState>>& optim, const std::string& optimizer_name,
    int64_t optimizer_steps, std::map<std::string, std::string> metadata);

// `checkpoint.async`: writes checkpoints on a background thread, at most one at a time. The
// caller has already copied the state to host memory (gather_*); submit() first waits for the
// save in flight, so a step blocks only for the copy (and for a previous save still writing).
// A failed save is rethrown by the next submit() or wait().
class BackgroundSaver {
 public:
  BackgroundSaver() = default;
  BackgroundSaver(const BackgroundSaver&) = delete;
  BackgroundSaver& operator=(const BackgroundSaver&) = delete;
  ~BackgroundSaver();  // joins; a failure nobody waited for is printed, not lost silently

  void submit(std::function<void()> save);
  // Waits for the save in flight; rethrows its failure.
  void wait();
  bool busy() const { return thread_.joinable(); }

 private:
  std::thread thread_;
  std::exception_ptr error_;
};

// Restores this rank's parameters and its shard of the optimizer state. Every rank reads the
// files itself.
// `sparse`, when given, is the sharded tables' optimizer: its accumulators are read from
// "<param>.sum" [rows] (this rank's rows).
SavedState load_training_state(const data::CheckpointManifest& manifest, nn::Model& model,
                               optim::Optimizer& optimizer,
                               optim::RowSparseOptimizer* sparse = nullptr);

// The checkpoint to resume from per checkpoint.resume: "never" → none, "auto" or "force" → the
// newest complete one in `dir` (none when `dir` holds none; ConfigError when it holds some and
// none is usable), else a path (a manifest, one of its .safetensors files, or a folder).
// Refuses (ConfigError) a checkpoint whose spec fingerprints (spec::fingerprints) differ from
// this job's, unless checkpoint.resume is "force". Checkpoints without fingerprints pass.
void check_fingerprints(const spec::JobSpec& spec, const data::CheckpointManifest& point);

std::optional<data::CheckpointManifest> find_resume_point(const std::string& resume,
                                                          const std::string& dir);

}  // namespace ptrain::train
