#include "ptrain/launch/restart.h"

#include <fmt/format.h>

#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/launch/json.h"

namespace ptrain::launch {

void RestartLog::add_failure(FailureRecord f) {
  f.round = round_;
  failures_.push_back(std::move(f));
}

int RestartLog::begin_next_round() {
  PTRAIN_CHECK(can_restart(), "restart {} of at most {}", round_ + 1, max_restarts_);
  PTRAIN_CHECK(!failures_.empty() && failures_.back().round == round_,
               "a restart needs the failure of round {}", round_);
  failures_.back().restarted = true;
  awaiting_report_ = true;
  return ++round_;
}

std::optional<double> RestartLog::on_report(double mono_s, int64_t step) {
  if (!awaiting_report_) return std::nullopt;
  awaiting_report_ = false;
  auto& f = failures_.back();
  f.recovery_s = mono_s - f.mono_s;
  f.first_report_step = step;
  return f.recovery_s;
}

std::string RestartLog::restarts_json() const {
  std::string out = "[";
  bool first = true;
  for (const auto& f : failures_) {
    if (!f.restarted) continue;
    JsonObject o;
    o.integer("round", f.round + 1).integer("rank", f.rank).str("reason", f.reason);
    o.integer("exit_code", f.exit_code).str("time", format_timestamp(f.unix_us));
    o.integer("last_step", f.last_step);
    o.raw("first_report_step", f.first_report_step ? std::to_string(*f.first_report_step) : "null");
    o.raw("recovery_s", f.recovery_s ? fmt::format("{:.3f}", *f.recovery_s) : "null");
    out += (first ? "" : ", ") + o.dump();
    first = false;
  }
  return out + "]";
}

std::string RestartLog::history_block() const {
  if (failures_.empty()) return {};
  std::string block = fmt::format(
      "ptrain: job failed after {} restart(s) (fault_tolerance.max_restarts={}); {} "
      "failure(s):\n",
      restarts(), max_restarts(), failures_.size() + 1);
  for (const auto& f : failures_)
    block += fmt::format("ptrain: --- round {} ---\n{}\n", f.round, f.block);
  block += fmt::format("ptrain: --- round {} ---\n", round());
  return block;
}

}  // namespace ptrain::launch
