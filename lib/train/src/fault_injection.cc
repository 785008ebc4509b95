#include "fault_injection.h"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/data/checkpoint.h"

namespace ptrain::train {

namespace {
constexpr const char* kVar = "PTRAIN_TEST_FAIL_AT_STEP";

void die(int sig, const std::string& why) {
  std::fprintf(stderr, "ptrain worker: %s: %s (test fault injection)\n", kVar, why.c_str());
  std::fflush(nullptr);
  ::raise(sig);
}
}  // namespace

Millis test_step_delay(int rank) {
  auto v = env_get("PTRAIN_TEST_SLOW_RANK");
  if (!v || v->empty()) return Millis(0);
  const size_t colon = v->find(':');
  try {
    if (colon == std::string::npos) throw std::invalid_argument("no colon");
    const int r = std::stoi(v->substr(0, colon));
    if (r != rank && r != -1) return Millis(0);
    return Millis(std::stol(v->substr(colon + 1)));
  } catch (const std::exception&) {
    throw ConfigError(fmt::format("PTRAIN_TEST_SLOW_RANK='{}' is not RANK:MILLISECONDS", *v),
                      "write RANK:MILLISECONDS, e.g. 1:50 (RANK -1: every worker)");
  }
}

FaultInjection FaultInjection::from_env(int rank, int round) {
  FaultInjection out;
  auto value = env_get(kVar);
  if (!value || value->empty()) return out;
  std::stringstream items(*value);
  std::string item;
  while (std::getline(items, item, ',')) {
    std::vector<std::string> parts;
    std::stringstream fields(item);
    std::string f;
    while (std::getline(fields, f, ':')) parts.push_back(f);
    long long r = 0, step = 0, rnd = 0;
    std::string how = parts.size() > 3 ? parts[3] : "kill";
    bool ok =
        parts.size() >= 2 && parts.size() <= 4 && (how == "kill" || how == "stop" || how == "save");
    try {
      if (ok) {
        r = std::stoll(parts[0]);
        step = std::stoll(parts[1]);
        rnd = parts.size() > 2 ? std::stoll(parts[2]) : 0;
      }
    } catch (const std::exception&) {
      ok = false;
    }
    if (!ok)
      throw ConfigError(fmt::format("{}: cannot read '{}'", kVar, item),
                        "write RANK:STEP[:ROUND[:kill|stop|save]], comma-separated");
    if (r == rank && rnd == round) out.faults_.push_back({step, how});
  }
  return out;
}

void FaultInjection::before_step(int64_t steps_done) const {
  for (const auto& f : faults_) {
    if (f.step != steps_done || f.how == "save") continue;
    die(f.how == "stop" ? SIGSTOP : SIGKILL,
        fmt::format("{} after step {}", f.how == "stop" ? "stopping" : "killing", steps_done));
  }
}

std::unique_ptr<FaultInjection::SaveWatch> FaultInjection::during_save(
    int64_t step, const std::string& dir) const {
  for (const auto& f : faults_)
    if (f.step == step && f.how == "save") return std::make_unique<SaveWatch>(dir);
  return nullptr;
}

struct FaultInjection::SaveWatch::Impl {};

// Synchronous: the save calls the hook in its own thread right after creating a temp file, so
// the fault fires mid-save every time, however fast the save or busy the machine.
FaultInjection::SaveWatch::SaveWatch(const std::string& dir) {
  data::set_checkpoint_temp_hook([dir](const std::string& path) {
    die(SIGKILL, fmt::format("killing while {}/{} is being written", dir,
                             std::filesystem::path(path).filename().string()));
  });
}

FaultInjection::SaveWatch::~SaveWatch() {
  data::set_checkpoint_temp_hook({});
}

}  // namespace ptrain::train
