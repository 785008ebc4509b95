// Bookkeeping for fault_tolerance.max_restarts: the failures of each rendezvous round (with the
// root-cause block printed when the job finally fails), whether one more restart is allowed,
// how long each recovery took, and the `restarts` array of summary.json.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace ptrain::launch {

// One worker failure that stopped a round.
struct FailureRecord {
  int round = 0;                             // the rendezvous round that failed
  int rank = -1;                             // the first failing rank
  int exit_code = 1;                         // its shell exit code
  std::string reason;                        // "was killed by SIGKILL", "hung: ...", ...
  int64_t unix_us = 0;                       // when the launcher noticed it
  double mono_s = 0;                         // the same instant on the monotonic clock
  int64_t last_step = 0;                     // the last step reported before the failure
  std::string block;                         // the root-cause block (rank, reason, last log lines)
  bool restarted = false;                    // a new round was started for it
  std::optional<double> recovery_s;          // failure → first report of the next round
  std::optional<int64_t> first_report_step;  // the step of that first report
};

// Whether a failure is only the echo of another one: a worker that exited with 4 (a peer or the
// coordinator failed) or died of SIGPIPE (it wrote to a peer that was gone).
bool is_consequence(int exit_code);
// Whether `candidate`, noticed while the job is already stopping for a failure with exit code
// `current`, is the real root cause: `current` was a consequence and `candidate` is neither a
// consequence nor the SIGTERM/SIGKILL of the stop itself.
bool replaces_root_cause(int current, int candidate);

class RestartLog {
 public:
  explicit RestartLog(int max_restarts = 0) : max_restarts_(max_restarts) {}

  int round() const { return round_; }
  // Rounds started for failures; the rounds an elastic job started to grow are not restarts.
  int restarts() const { return round_ - grows_; }
  int max_restarts() const { return max_restarts_; }
  bool can_restart() const { return restarts() < max_restarts_; }

  // Why the failure `f` of the current round gets no restart even though restarts are left:
  // exit code 2 (bad input: the next round would fail the same way), or the same failure as
  // the previous round's (same rank, exit code and reason, not one step further). nullopt: do
  // restart.
  std::optional<std::string> refuse_restart(const FailureRecord& f) const;
  // How long to wait before the next round: nothing before the first restart, then 1 s, 2 s,
  // 4 s, ... up to 30 s, so a failing job does not spin through its restarts.
  double backoff_s() const;

  // Records the failure that stopped the current round.
  void add_failure(FailureRecord f);
  // Starts the next round for the last failure and returns its number.
  int begin_next_round();
  // Starts the next round for an elastic job that grows by `hosts` (no failure, not a restart)
  // and returns its number; `stopped_s` is when the previous round was asked to stop.
  int begin_grow_round(const std::vector<std::string>& hosts, int64_t at_step, double stopped_s,
                       int64_t unix_us);
  // A report arrived at `mono_s` for `step`: the first one after a restart ends its recovery.
  // Returns the recovery time when this report ended one.
  std::optional<double> on_report(double mono_s, int64_t step);

  const std::vector<FailureRecord>& failures() const { return failures_; }
  // The root-cause blocks of the earlier rounds, headed by a summary line, followed by the
  // heading of the current round; empty when no restart happened. The launchers print it
  // before the current failure's block. Consecutive rounds that failed the same way (rank,
  // exit code, reason) are one block with their count.
  std::string history_block() const;
  // [{"round": 1, "rank": 1, "reason": "...", "exit_code": 137, "time": "...", ...}, ...]:
  // one entry per restart (`round` is the round that was started).
  nlohmann::ordered_json restarts_json() const;
  // [{"round": 3, "hosts": [...], "checkpoint_step": 12, "time": "...", "first_report_step": 13,
  //   "recovery_s": 1.2}, ...]: one entry per round an elastic job started to take hosts back.
  nlohmann::ordered_json grows_json() const;

 private:
  int max_restarts_;
  struct Grow {
    int round = 0;
    std::vector<std::string> hosts;
    int64_t at_step = 0;
    double stopped_s = 0;
    int64_t unix_us = 0;
    std::optional<double> recovery_s;  // the stop → first report of the new round
    std::optional<int64_t> first_report_step;
  };
  int round_ = 0;
  int grows_ = 0;
  bool awaiting_report_ = false;
  bool awaiting_grow_report_ = false;
  std::vector<FailureRecord> failures_;
  std::vector<Grow> grow_log_;
};

}  // namespace ptrain::launch
