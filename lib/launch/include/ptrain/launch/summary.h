// summary.json, the run's result, which both launchers write: an nlohmann::ordered_json
// (members in the order written) put on one line in the spaced style users grep for:
//   {"status": "failed", "exit_codes": [0, 137], "restarts": [{"round": 1, "rank": 1}]}
// nlohmann's dump() writes either no spaces at all or one member per line, so dump_line joins
// the lines of dump(0).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ptrain/launch/console.h"

namespace ptrain::launch {

using Json = nlohmann::ordered_json;

// `value` on one line with ", " and ": " between members and elements. Strings that are not
// UTF-8 get U+FFFD for the bad bytes; NaN and infinities are written as null.
std::string dump_line(const Json& value);

// One exit code per rank; null for a rank that has not exited (INT_MIN).
Json exit_codes_json(const std::vector<int>& exit_codes);

// The progress members: steps, total_steps, final_loss, wall_time_s, tokens_per_s (null when
// unknown) and last_report (the last metrics object, when one arrived).
void add_progress(Json& summary, int64_t steps, int64_t total_steps, const ProgressState& p,
                  double wall_time_s);

}  // namespace ptrain::launch
