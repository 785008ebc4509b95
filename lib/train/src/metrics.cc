#include "ptrain/train/metrics.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <vector>

#include "ptrain/core/strings.h"
#include "ptrain/core/time.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::train {

static std::string quote(const std::string& s) {
  return json_quote(s);
}

MetricsLine& MetricsLine::add(const std::string& key, double value) {
  // JSON has no NaN/inf: those are reported as null.
  fields_.emplace_back(key, std::isfinite(value) ? fmt::format("{:.7g}", value) : "null");
  return *this;
}

MetricsLine& MetricsLine::add_exact(const std::string& key, double value) {
  fields_.emplace_back(key, std::isfinite(value) ? fmt::format("{}", value) : "null");
  return *this;
}

MetricsLine& MetricsLine::add_int(const std::string& key, int64_t value) {
  fields_.emplace_back(key, std::to_string(value));
  return *this;
}

MetricsLine& MetricsLine::add_str(const std::string& key, const std::string& value) {
  fields_.emplace_back(key, quote(value));
  return *this;
}

std::string MetricsLine::json() const {
  std::string out = "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    if (i) out += ", ";
    out += quote(fields_[i].first) + ": " + fields_[i].second;
  }
  return out + "}";
}

double resident_mb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

double measure_sgemm_gflops(int n, int repeats) {
  const auto& ops = tensor::cpu_ops();
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n, 0.f);
  ops.gemm(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);  // warm-up
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    double t0 = mono_seconds();
    ops.gemm(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    best = std::min(best, mono_seconds() - t0);
  }
  return 2.0 * n * n * double(n) / best / 1e9;
}

}  // namespace ptrain::train
