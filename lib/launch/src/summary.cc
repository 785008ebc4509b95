#include "ptrain/launch/summary.h"

#include <climits>

namespace ptrain::launch {

std::string dump_line(const Json& value) {
  // dump(0) puts each member and element on its own line without indentation. A raw newline
  // there is always structure (newlines inside strings are escaped as \n), so dropping each one,
  // and turning ",\n" into ", ", leaves the one-line form.
  std::string lines = value.dump(0, ' ', false, Json::error_handler_t::replace);
  std::string out;
  out.reserve(lines.size());
  for (char c : lines) {
    if (c != '\n') {
      out += c;
    } else if (!out.empty() && out.back() == ',') {
      out += ' ';
    }
  }
  return out;
}

Json exit_codes_json(const std::vector<int>& exit_codes) {
  Json codes = Json::array();
  for (int code : exit_codes) codes.push_back(code == INT_MIN ? Json() : Json(code));
  return codes;
}

void add_progress(Json& summary, int64_t steps, int64_t total_steps, const ProgressState& p,
                  double wall_time_s) {
  auto or_null = [](const std::optional<double>& v) { return v ? Json(*v) : Json(); };
  summary["steps"] = steps;
  summary["total_steps"] = total_steps;
  summary["final_loss"] = or_null(p.loss);
  summary["wall_time_s"] = wall_time_s;
  summary["tokens_per_s"] = or_null(p.tokens_per_s);
  if (!p.last_report.empty()) {
    Json report = Json::parse(p.last_report, nullptr, /*allow_exceptions=*/false);
    if (!report.is_discarded()) summary["last_report"] = std::move(report);
  }
}

}  // namespace ptrain::launch
