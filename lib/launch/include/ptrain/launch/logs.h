// `ptrain logs`: the rank logs of a run merged in time order with `[rank r]` (or `[node:rank]`)
// prefixes, filtered by rank and pattern, optionally followed until the run ends.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "ptrain/core/time.h"

namespace ptrain::launch {

inline constexpr Millis kDefaultFollowTimeout{std::chrono::hours(24)};

struct LogsOptions {
  std::vector<int> ranks;  // empty = every rank
  std::string grep;        // ECMAScript regular expression matched against the text; empty = all
  bool follow = false;     // keep printing new lines until summary.json appears
  Millis follow_timeout = kDefaultFollowTimeout;
  Millis poll_interval{100};
};

// Prints the merged logs of run_dir to out; returns the number of lines printed. Throws IoError
// when run_dir is not a run folder, ConfigError for a bad pattern.
size_t print_logs(const std::string& run_dir, const LogsOptions& options, std::FILE* out);

}  // namespace ptrain::launch
