#include "ptrain/launch/restart.h"

#include <fmt/format.h>

#include <cmath>
#include <csignal>

#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/launch/summary.h"

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
  awaiting_grow_report_ = false;  // a grown round that failed before its first report
  return ++round_;
}

int RestartLog::begin_grow_round(const std::vector<std::string>& hosts, int64_t at_step,
                                 double stopped_s, int64_t unix_us) {
  ++grows_;
  grow_log_.push_back({round_ + 1, hosts, at_step, stopped_s, unix_us, std::nullopt, std::nullopt});
  awaiting_report_ = false;
  awaiting_grow_report_ = true;
  return ++round_;
}

std::optional<double> RestartLog::on_report(double mono_s, int64_t step) {
  if (awaiting_grow_report_) {
    awaiting_grow_report_ = false;
    auto& g = grow_log_.back();
    g.recovery_s = mono_s - g.stopped_s;
    g.first_report_step = step;
    return g.recovery_s;
  }
  if (!awaiting_report_) return std::nullopt;
  awaiting_report_ = false;
  auto& f = failures_.back();
  f.recovery_s = mono_s - f.mono_s;
  f.first_report_step = step;
  return f.recovery_s;
}

Json RestartLog::restarts_json() const {
  Json out = Json::array();
  for (const auto& f : failures_) {
    if (!f.restarted) continue;
    Json o = {{"round", f.round + 1},
              {"rank", f.rank},
              {"reason", f.reason},
              {"exit_code", f.exit_code},
              {"time", format_timestamp(f.unix_us)},
              {"last_step", f.last_step},
              {"first_report_step", nullptr},
              {"recovery_s", nullptr}};
    if (f.first_report_step) o["first_report_step"] = *f.first_report_step;
    // Milliseconds are what the measurement means; more digits would be noise.
    if (f.recovery_s) o["recovery_s"] = std::round(*f.recovery_s * 1000.0) / 1000.0;
    out.push_back(std::move(o));
  }
  return out;
}

Json RestartLog::grows_json() const {
  Json out = Json::array();
  for (const auto& g : grow_log_) {
    Json o = {{"round", g.round},
              {"hosts", g.hosts},
              {"checkpoint_step", g.at_step},
              {"time", format_timestamp(g.unix_us)},
              {"first_report_step", nullptr},
              {"recovery_s", nullptr}};
    if (g.first_report_step) o["first_report_step"] = *g.first_report_step;
    if (g.recovery_s) o["recovery_s"] = std::round(*g.recovery_s * 1000.0) / 1000.0;
    out.push_back(std::move(o));
  }
  return out;
}

bool is_consequence(int exit_code) {
  return exit_code == kExitRemote || exit_code == 128 + SIGPIPE;
}

bool replaces_root_cause(int current, int candidate) {
  return is_consequence(current) && !is_consequence(candidate) && candidate != 128 + SIGTERM &&
         candidate != 128 + SIGKILL && candidate != 0;
}

namespace {

bool same_failure(const FailureRecord& a, const FailureRecord& b) {
  return a.rank == b.rank && a.exit_code == b.exit_code && a.reason == b.reason;
}

}  // namespace

std::optional<std::string> RestartLog::refuse_restart(const FailureRecord& f) const {
  if (f.exit_code == kExitConfig)
    return std::string("exit code 2 means bad input, which a restart would meet again");
  if (!failures_.empty() && same_failure(failures_.back(), f) &&
      f.last_step <= failures_.back().last_step)
    return fmt::format("round {} failed exactly as round {} did, at the same step", round_,
                       failures_.back().round);
  return std::nullopt;
}

double RestartLog::backoff_s() const {
  if (restarts() == 0) return 0;
  return std::min(30.0, std::ldexp(1.0, restarts() - 1));
}

std::string RestartLog::history_block() const {
  if (failures_.empty()) return {};
  std::string block = fmt::format(
      "ptrain: job failed after {} restart(s) (fault_tolerance.max_restarts={}); {} "
      "failure(s):\n",
      restarts(), max_restarts(), failures_.size() + 1);
  for (size_t i = 0; i < failures_.size();) {
    size_t j = i + 1;
    while (j < failures_.size() && same_failure(failures_[i], failures_[j])) ++j;
    const auto& f = failures_[j - 1];  // the last of the run: its log lines are the newest
    if (j - i == 1)
      block += fmt::format("ptrain: --- round {} ---\n{}\n", f.round, f.block);
    else
      block += fmt::format("ptrain: --- rounds {}-{}: the same failure {} times ---\n{}\n",
                           failures_[i].round, f.round, j - i, f.block);
    i = j;
  }
  block += fmt::format("ptrain: --- round {} ---\n", round());
  return block;
}

}  // namespace ptrain::launch
