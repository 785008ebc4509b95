// Per-step metrics: the JSON object reported to the coordinator (one line of metrics.jsonl),
// and the machine figures they are measured against (resident memory, the GEMM peak).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ptrain::train {

// A flat JSON object built in insertion order: {"step": 3, "loss": 2.5, ...}.
class MetricsLine {
 public:
  MetricsLine& add(const std::string& key, double value);
  // Shortest text that reads back as the same double (for values compared bit for bit).
  MetricsLine& add_exact(const std::string& key, double value);
  MetricsLine& add_int(const std::string& key, int64_t value);
  MetricsLine& add_str(const std::string& key, const std::string& value);
  std::string json() const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

// Resident set size of this process in MiB (VmRSS), 0 when unknown.
double resident_mb();

// Measured single-process sgemm rate in GFLOP/s (n x n x n, best of `repeats`), with the
// threads the CPU op table is set to use.
double measure_sgemm_gflops(int n = 1024, int repeats = 3);

}  // namespace ptrain::train
