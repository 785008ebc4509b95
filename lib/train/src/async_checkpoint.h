// Checkpoints of data_mode: async. The parameter servers hold the training state, each one
// contiguous shard of the flat parameters and its optimizer state (server 0 also the model's
// buffers). After every `checkpoint.every` server updates each server copies its shard; server 0
// joins the copies of one version and writes the checkpoint a sync job writes (full tensors under
// the family's names, optimizer state, manifest last), so checkpoints move between the modes.
// A checkpoint's step is updates / workers: every worker pushes once per step.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fault_injection.h"
#include "ptrain/core/time.h"
#include "ptrain/nn/model.h"
#include "ptrain/parallel/param_server.h"
#include "ptrain/spec/job_spec.h"

namespace ptrain::train {

// Where a job keeps its checkpoints: checkpoint.dir, else RUN_DIR/checkpoints ("" = none).
std::string checkpoint_dir_of(const spec::JobSpec& spec, const std::string& run_dir);

// What server 0 decided at the start of round `round`, for the other servers and the workers:
// the step training continues from and the checkpoint holding it ("" = the initial weights).
struct AsyncResume {
  int64_t step = 0;
  std::string manifest;
};
std::string async_resume_key(int round);
std::string encode_resume(const AsyncResume& r);
AsyncResume decode_resume(const std::string& text);

// Server 0's writer: collects each version's snapshots (its own whole, the others' piece by
// piece), and once every server's shard of a version is in, writes that checkpoint on its own
// thread. At most one complete checkpoint waits behind the one being written; a further one
// makes add() wait (training slows to the disk's pace instead of memory growing).
class AsyncCheckpointWriter {
 public:
  struct Options {
    std::string dir;
    int keep = 2;
    int servers = 1;
    int workers = 1;
    int64_t last_step = 0;  // the step resumed from: not written again
    std::string optimizer;  // its name (optimizer.type's state)
    std::map<std::string, std::string> metadata;
    const FaultInjection* faults = nullptr;  // test-only: a `save` fault of server 0's rank
    std::function<void(const std::string& line)> log;
  };
  // `model`: a host copy of the model (names, shapes, layout), used only by the writing thread.
  AsyncCheckpointWriter(Options options, std::unique_ptr<nn::Model> model);
  // Writes the complete checkpoints still queued (at most two), drops incomplete ones.
  ~AsyncCheckpointWriter();
  AsyncCheckpointWriter(const AsyncCheckpointWriter&) = delete;
  AsyncCheckpointWriter& operator=(const AsyncCheckpointWriter&) = delete;

  // A whole snapshot (pieces == 0) or one piece of one (pieces > 0). Thread-safe. Throws
  // RemoteError for a piece that does not fit the layout.
  void add(parallel::ShardSnapshot snap);
  // True once the checkpoint of `version` is written (or skipped: its step was written already).
  // Throws the writing thread's error, or TimeoutError naming the servers still missing.
  bool wait_written(int64_t version, Millis timeout, const std::function<bool()>& stop);
  // The writing thread's error, if any ("" = none).
  std::string error() const;
  std::vector<double> save_seconds() const;  // how long each write took

 private:
  struct Pending {
    std::vector<int> expected, got;  // per server: pieces it sends, pieces received
    std::vector<float> params;       // [n]
    std::vector<std::pair<std::string, std::vector<float>>> state;  // each [n]
    std::vector<float> buffers;
    int64_t optimizer_steps = 0;
    bool complete() const;
  };
  void write_loop();
  void write(int64_t version, Pending& p);

  Options opt_;
  std::unique_ptr<nn::Model> model_;
  size_t n_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, Pending> pending_;
  std::deque<std::pair<int64_t, Pending>> queue_;
  std::set<int64_t> done_;
  int64_t writing_ = -1;
  std::string error_;
  std::vector<double> save_s_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace ptrain::train
