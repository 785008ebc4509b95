// Criteo TSV parsing (criteo.h): one pass over the bytes, no per-field allocation.
#include "dlrm/criteo.h"

#include <fmt/format.h>

#include <cmath>
#include <string_view>

#include "ptrain/core/error.h"
#include "ptrain/data/images.h"

namespace ptrain::models::criteo {
namespace {

// Why a line is malformed, or empty when it is fine.
std::string parse_line(std::string_view line, const std::vector<int64_t>& rows, float* dense,
                       int32_t* sparse, float* label) {
  std::string_view f[1 + kDense + kSparse];
  size_t n = 0, start = 0;
  for (size_t i = 0; i <= line.size(); ++i) {
    if (i == line.size() || line[i] == '\t') {
      if (n == std::size(f)) return fmt::format("more than {} tab-separated fields", std::size(f));
      f[n++] = line.substr(start, i - start);
      start = i + 1;
    }
  }
  if (n != std::size(f)) return fmt::format("{} fields, expected {}", n, std::size(f));
  if (f[0] != "0" && f[0] != "1") return fmt::format("label '{}' is not 0 or 1", f[0]);
  *label = f[0] == "1" ? 1.f : 0.f;
  for (int j = 0; j < kDense; ++j) {
    std::string_view v = f[1 + j];
    int64_t x = 0;
    bool neg = false;
    size_t i = 0;
    if (!v.empty() && v[0] == '-') neg = true, i = 1;
    if (neg && v.size() == 1)
      return fmt::format("dense feature {} '{}' is not an integer", j + 1, v);
    for (; i < v.size(); ++i) {
      if (v[i] < '0' || v[i] > '9')
        return fmt::format("dense feature {} '{}' is not an integer", j + 1, v);
      x = x * 10 + (v[i] - '0');
    }
    dense[j] = neg ? 0.f : float(std::log1p(double(x)));
  }
  for (int k = 0; k < kSparse; ++k) {
    std::string_view v = f[1 + kDense + k];
    uint64_t h = 0;
    for (char c : v) {
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) return fmt::format("categorical feature {} '{}' is not hex", k + 1, v);
      h = (h << 4) | uint64_t(d);
    }
    sparse[k] = int32_t(h % uint64_t(rows[size_t(k)]));
  }
  return {};
}

}  // namespace

Samples parse(const std::string& text, const std::string& origin,
              const std::vector<int64_t>& table_rows, bool skip_bad) {
  if (table_rows.size() != size_t(kSparse))
    throw ConfigError(fmt::format("criteo data has {} categorical features but the model has {} "
                                  "tables",
                                  kSparse, table_rows.size()),
                      "set model.sparse: 26 (or 26 entries in model.tables)");
  Samples s;
  float dense[kDense], label = 0;
  int32_t sparse[kSparse];
  size_t at = 0;
  int64_t line_no = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + at, end - at);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    at = end + 1;
    ++line_no;
    if (line.empty()) continue;
    std::string why = parse_line(line, table_rows, dense, sparse, &label);
    if (!why.empty()) {
      if (skip_bad) {
        ++s.skipped;
        continue;
      }
      throw ConfigError(fmt::format("{}:{}: {}", origin, line_no, why),
                        "fix the line, or set data.bad_lines: skip");
    }
    s.dense.insert(s.dense.end(), dense, dense + kDense);
    s.sparse.insert(s.sparse.end(), sparse, sparse + kSparse);
    s.labels.push_back(label);
  }
  return s;
}

Samples load(const std::string& path, const std::vector<int64_t>& table_rows, bool skip_bad) {
  // zlib reads plain files as they are, so `.gz` (or any gzip stream) and plain TSV both work.
  return parse(data::read_maybe_gzip(path), path, table_rows, skip_bad);
}

}  // namespace ptrain::models::criteo
