// MLflow's file store (what `mlflow ui --backend-store-uri DIR` reads), written directly:
// DIR/<experiment id>/meta.yaml, and per run DIR/<experiment id>/<run id>/ with meta.yaml,
// params/<key> (the resolved spec, flattened: `train.optimizer.lr`), metrics/<key> lines
// "<unix ms> <value> <step>", tags/ (mlflow.runName, mlflow.source.name, mlflow.user) and
// artifacts/. The experiment is the job's name; its id is a stable number derived from it.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace ptrain::launch {

class MlflowRun {
 public:
  // Creates the experiment (if new) and the run, status RUNNING.
  MlflowRun(const std::string& root, const std::string& experiment, const std::string& run_name,
            const std::map<std::string, std::string>& params, int64_t start_ms);
  // One metrics object of metrics.jsonl: each number but step/total_steps, at its step.
  void log_metrics(const std::string& json, int64_t unix_ms);
  // Rewrites meta.yaml with the end time and FINISHED (ok) or FAILED.
  void finish(bool ok, int64_t end_ms);
  const std::string& run_dir() const { return run_dir_; }
  const std::string& experiment_id() const { return experiment_id_; }

 private:
  void write_meta(int status, int64_t end_ms) const;
  std::string root_, experiment_id_, run_id_, run_dir_, run_name_;
  int64_t start_ms_ = 0;
};

// The spec as flat "a.b.c" -> value strings, from its JSON form (lists as JSON text).
std::map<std::string, std::string> flatten_json(const std::string& json);

}  // namespace ptrain::launch
