#include "ptrain/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "ptrain/core/error.h"

namespace ptrain::optim {

Decay parse_decay(const std::string& word) {
  if (word == "none") return Decay::kNone;
  if (word == "linear") return Decay::kLinear;
  if (word == "cosine") return Decay::kCosine;
  throw ConfigError(fmt::format("unknown lr decay '{}'", word), "use none, linear or cosine");
}

LrSchedule::LrSchedule(const LrScheduleOptions& o) : options_(o) {
  if (!(o.lr >= 0)) throw ConfigError(fmt::format("lr must be >= 0, got {}", o.lr));
  if (o.warmup < 0) throw ConfigError(fmt::format("warmup must be >= 0, got {}", o.warmup));
  if (!(o.min_lr >= 0 && o.min_lr <= o.lr)) {
    throw ConfigError(fmt::format("min_lr {} must be in [0, lr = {}]", o.min_lr, o.lr));
  }
  if (o.decay != Decay::kNone && o.total_steps <= 0) {
    throw ConfigError("lr decay needs the total number of steps (train.steps > 0)");
  }
}

double LrSchedule::at(int64_t step) const {
  const auto& o = options_;
  if (step < o.warmup) {
    return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
  }
  if (o.decay == Decay::kNone) return o.lr;
  double r = 1.0;
  if (o.total_steps > o.warmup) {
    r = static_cast<double>(step - o.warmup) / static_cast<double>(o.total_steps - o.warmup);
    r = std::clamp(r, 0.0, 1.0);
  }
  if (o.decay == Decay::kLinear) return o.lr - r * (o.lr - o.min_lr);
  return o.min_lr + 0.5 * (1.0 + std::cos(std::numbers::pi * r)) * (o.lr - o.min_lr);
}

}  // namespace ptrain::optim
