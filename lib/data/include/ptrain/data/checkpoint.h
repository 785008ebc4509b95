// Checkpoint files on disk: step-<n>.safetensors (the model, Hugging Face names, loadable by
// other tools), step-<n>.optim.safetensors (optimizer state), and the manifest step-<n>.json
// written last, which lists each file's size and XXH3-64 checksum (FNV-1a 64 in checkpoints of
// earlier versions, still read) plus the step and a metadata
// map (RNG state, data position, ...). A checkpoint counts only when its manifest and files
// validate, so a crash or a full disk mid-save never hides the previous one.
// Deciding when to save is the training loop's job (lib/train).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ptrain/data/safetensors.h"

namespace ptrain::data {

struct CheckpointOptions {
  int keep = 2;                  // newest complete checkpoints kept after a save; <= 0 keeps all
  bool refuse_nonfinite = true;  // NaN/inf in a model tensor aborts the save
};

struct CheckpointData {
  int64_t step = 0;
  std::vector<TensorRef> model;  // host memory; borrowed for the duration of save
  std::vector<TensorRef> optim;
  std::map<std::string, std::string> metadata;
};

struct CheckpointFile {
  std::string name;  // relative to the checkpoint folder
  uint64_t bytes = 0;
  uint64_t checksum = 0;
  std::string checksum_kind = "xxh3_64";  // or "fnv1a64" (checkpoints written before XXH3)
};

struct CheckpointManifest {
  std::string dir;
  int64_t step = 0;
  std::vector<CheckpointFile> files;  // model first, then optimizer state
  std::map<std::string, std::string> metadata;

  std::string manifest_path() const;
  std::string model_path() const;  // dir/step-<n>.safetensors
  std::string optim_path() const;  // dir/step-<n>.optim.safetensors
};

// Writes the checkpoint of data.step into `dir` (created if missing): each file to a temp name,
// fsync, rename, fsync of the folder; the manifest last. Then deletes all but the newest `keep`.
// Throws Error naming the tensor when a model tensor holds NaN/inf (nothing is written), IoError
// when a write fails (temp files are removed; earlier checkpoints are untouched).
CheckpointManifest save_checkpoint(const std::string& dir, const CheckpointData& data,
                                   const CheckpointOptions& options = {});

// Reads a manifest and checks that every file it lists exists with the recorded size and
// checksum and parses as safetensors. Throws ConfigError naming the bad file.
CheckpointManifest validate_checkpoint(const std::string& manifest_path);

// Test hook (fault injection): called with each temporary file's path right after a save
// created it, in the saving thread. Empty (the default) does nothing.
void set_checkpoint_temp_hook(std::function<void(const std::string& path)> hook);

// Steps that have a manifest in `dir`, newest first (not validated).
std::vector<int64_t> list_checkpoints(const std::string& dir);

// The newest checkpoint in `dir` that validates; older ones are tried after a warning naming the
// bad file. nullopt when there is none (or `dir` does not exist).
std::optional<CheckpointManifest> find_latest_complete(const std::string& dir);

// For a resume: like find_latest_complete, but when `dir` holds checkpoints and none of them
// validates, throws ConfigError naming each one and why — a job must not start over from step 0
// and overwrite them.
std::optional<CheckpointManifest> find_resume_checkpoint(const std::string& dir);

// Removes what interrupted saves leave in `dir`: temp files (.step-<n>.*.tmp-<pid>) and
// step-<n>.* files whose manifest was never written. Returns the names removed.
std::vector<std::string> sweep_incomplete(const std::string& dir);

// The manifest of a checkpoint named by any of its files (step-<n>.json, step-<n>.safetensors,
// step-<n>.optim.safetensors); other names come back unchanged.
std::string manifest_for(const std::string& path);

// An exclusive claim on a checkpoint folder for one job (flock on <dir>/.ptrain-lock, held
// until this object goes or the process dies). A second job gets ConfigError naming the
// holder; the lock file of a job that ended without releasing it is taken over (`took_over`
// says so, with the old holder in `previous`).
class CheckpointLock {
 public:
  CheckpointLock(const std::string& dir, const std::string& holder);
  ~CheckpointLock();
  CheckpointLock(const CheckpointLock&) = delete;
  CheckpointLock& operator=(const CheckpointLock&) = delete;
  bool took_over() const { return took_over_; }
  const std::string& previous() const { return previous_; }

 private:
  int fd_ = -1;
  bool took_over_ = false;
  std::string previous_;
};

}  // namespace ptrain::data
