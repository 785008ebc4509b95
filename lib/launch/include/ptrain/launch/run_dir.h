// The run directory (docs/ARCHITECTURE.md, "The run folder"): runs/<name>-<YYYYmmdd-HHMMSS>/
// with job.yaml, rank-<r>.log, launcher.log, metrics.jsonl and summary.json.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace ptrain::launch {

class RunDir {
 public:
  // Creates root/<name>-<YYYYmmdd-HHMMSS>/ (root too, if missing). Two runs started in the same
  // second get distinct folders (-2, -3, ... appended): mkdir is the arbiter, no race.
  static RunDir create(const std::string& root, const std::string& name);
  // Opens an existing run directory (for `ptrain logs`).
  static RunDir open(const std::string& path);

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::string rank_log(int rank) const;

  // Replaces the file atomically (write to a temporary, then rename).
  void write_file(const std::string& name, const std::string& content) const;
  // The same, but readable by this user only (0600) whatever logging.mode says: for secrets.
  void write_private_file(const std::string& name, const std::string& content) const;
  // Appends one line to metrics.jsonl, and its numbers to the TensorBoard events when
  // enable_tensorboard() was called. Thread-safe.
  void append_metrics(const std::string& json);
  // logging.tensorboard: metrics go to <run>/tb/events.out.tfevents.* too (launch/tensorboard.h).
  void enable_tensorboard();
  // logging.mlflow: metrics go to an MLflow file store under `root` too (launch/mlflow.h).
  void enable_mlflow(const std::string& root, const std::string& experiment,
                     const std::string& run_name, const std::map<std::string, std::string>& params);
  // Marks the MLflow run finished or failed (nothing without enable_mlflow).
  void finish_mlflow(bool ok);
  // One scalar event (e.g. "restarts"), when TensorBoard output is on. Thread-safe.
  void add_scalar(const std::string& tag, double value, int64_t step);
  // Appends "<timestamp> <text>" to launcher.log. Thread-safe.
  void log(const std::string& text);

 private:
  std::string path_;
  struct Files;
  std::shared_ptr<Files> files_;
};

// A line of a rank log: "2026-11-26 23:42:07.123 <text>".
std::string format_log_line(int64_t unix_us, const std::string& text);

// The newest run directory under root (by the time in its name, then by mtime); nullopt when none.
std::optional<std::string> newest_run(const std::string& root);

// logging.mode: private makes this process (and so every ptrain process it starts) create
// folders 0700 and files 0600, whatever the user's umask; shared leaves the umask alone.
// Returns the umask the user had, which `command:` programs get back.
mode_t apply_file_mode(const std::string& mode);

// This user's newest run: the folder the last RunDir::create recorded in
// $XDG_CACHE_HOME/ptrain/last-run (default ~/.cache/ptrain/last-run), when it still exists.
std::optional<std::string> last_run();

}  // namespace ptrain::launch
