// Test-only failure injection for the fault-tolerance tests, read once from the environment:
//   PTRAIN_TEST_FAIL_AT_STEP=RANK:STEP[:ROUND[:HOW]][,RANK:STEP...]
// makes global rank RANK, in restart round ROUND (default 0, the first start), fail after STEP
// completed steps. HOW is `kill` (default: SIGKILL itself before step STEP+1), `stop` (SIGSTOP
// itself there: a hang) or `save` (SIGKILL itself while writing the checkpoint of step STEP, as
// soon as its first temporary file appears; RANK must be the writing rank: 0, or in
// data_mode: async parameter server 0, whose rank is the world size). Unset: no effect.
//   PTRAIN_TEST_SLOW_RANK=RANK:MS
// makes worker RANK (-1: every worker) sleep MS milliseconds before every step.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/core/time.h"

namespace ptrain::train {

// PTRAIN_TEST_SLOW_RANK's delay for `rank` (0 when unset or for another rank). Throws
// ConfigError when the variable is malformed.
Millis test_step_delay(int rank);

class FaultInjection {
 public:
  // The faults of PTRAIN_TEST_FAIL_AT_STEP that apply to `rank` in `round`. Throws ConfigError
  // when the variable is malformed.
  static FaultInjection from_env(int rank, int round);

  // Called at the top of the loop with the number of completed steps.
  void before_step(int64_t steps_done) const;

  // While the returned guard lives, the process SIGKILLs itself as soon as a checkpoint save
  // creates a temporary file in `dir` (null when no `save` fault is set for this step).
  class SaveWatch;
  std::unique_ptr<SaveWatch> during_save(int64_t step, const std::string& dir) const;

 private:
  struct Fault {
    int64_t step;
    std::string how;
  };
  std::vector<Fault> faults_;
};

class FaultInjection::SaveWatch {
 public:
  explicit SaveWatch(const std::string& dir);
  ~SaveWatch();
  SaveWatch(const SaveWatch&) = delete;
  SaveWatch& operator=(const SaveWatch&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptrain::train
