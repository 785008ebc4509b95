// The Criteo display-advertising TSV layout (label, 13 integer features, 26 hex categorical
// features; tab-separated; fields may be empty; plain or .gz), read into memory as DLRM inputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain::models::criteo {

inline constexpr int kDense = 13;
inline constexpr int kSparse = 26;

// One file's samples: dense x -> log(1 + max(x, 0)) (empty -> 0), categorical hex -> value mod
// the table's rows (empty -> 0), label 0/1.
struct Samples {
  std::vector<float> dense;     // [n, 13]
  std::vector<int32_t> sparse;  // [n, 26]
  std::vector<float> labels;    // [n]
  int64_t skipped = 0;          // malformed lines left out (skip_bad)
  int64_t size() const { return int64_t(labels.size()); }
};

// Parses `text` (the file's bytes; `origin` names it in errors). A line with the wrong number
// of fields, a non-hex categorical, a non-integer dense value or a label that is not 0/1 throws
// ConfigError "origin:line: ..." unless `skip_bad`, which counts and drops it.
Samples parse(const std::string& text, const std::string& origin,
              const std::vector<int64_t>& table_rows, bool skip_bad);
// Reads and parses a TSV file, plain or gzip-compressed (`.gz`); an error names the file.
Samples load(const std::string& path, const std::vector<int64_t>& table_rows, bool skip_bad);

}  // namespace ptrain::models::criteo
