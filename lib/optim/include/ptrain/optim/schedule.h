// Learning-rate schedules, nanoGPT / llm.c style. For step s (0-based, the step about to run),
// peak lr L, min_lr M, warmup W, total steps N:
//   s < W:                 lr = L * (s + 1) / W                     (linear warmup)
//   decay none:            lr = L
//   decay linear/cosine:   r = clamp((s - W) / (N - W), 0, 1)       (r = 1 when N <= W)
//                linear:   lr = L - r * (L - M)
//                cosine:   lr = M + 0.5 * (1 + cos(pi * r)) * (L - M)
// so lr reaches L at s = W - 1, starts decaying at s = W and is M from s = N on.
#pragma once

#include <cstdint>
#include <string>

namespace ptrain::optim {

enum class Decay { kNone, kLinear, kCosine };

// "none" | "linear" | "cosine"; throws ConfigError naming the word otherwise.
Decay parse_decay(const std::string& word);

struct LrScheduleOptions {
  double lr = 3e-4;    // peak
  int64_t warmup = 0;  // steps of linear warmup
  Decay decay = Decay::kNone;
  double min_lr = 0.0;      // floor of the decay
  int64_t total_steps = 0;  // N; required (> 0) when decay != none
};

class LrSchedule {
 public:
  // Throws ConfigError on lr < 0, warmup < 0, min_lr outside [0, lr], or decay without steps.
  explicit LrSchedule(const LrScheduleOptions& options);
  double at(int64_t step) const;
  const LrScheduleOptions& options() const { return options_; }

 private:
  LrScheduleOptions options_;
};

}  // namespace ptrain::optim
