// Pipeline schedules as lists of operations per stage (GPipe, 1F1B) and their properties.
#include <fmt/format.h>

#include <algorithm>

#include "ptrain/core/error.h"
#include "ptrain/parallel/pipeline.h"

namespace ptrain::parallel {

ScheduleKind parse_schedule_kind(const std::string& name) {
  if (name == "gpipe") return ScheduleKind::kGpipe;
  if (name == "1f1b") return ScheduleKind::kOneFOneB;
  throw ConfigError(fmt::format("parallel.schedule: unknown schedule '{}'", name),
                    "use gpipe or 1f1b");
}

const char* to_string(ScheduleKind kind) {
  return kind == ScheduleKind::kGpipe ? "gpipe" : "1f1b";
}

std::string to_string(const PipeOp& op) {
  switch (op.kind) {
    case PipeOpKind::kRecvActivation:
      return fmt::format("<a{}", op.micro);
    case PipeOpKind::kForward:
      return fmt::format("F{}", op.micro);
    case PipeOpKind::kSendActivation:
      return fmt::format(">a{}", op.micro);
    case PipeOpKind::kRecvGrad:
      return fmt::format("<g{}", op.micro);
    case PipeOpKind::kBackward:
      return fmt::format("B{}", op.micro);
    case PipeOpKind::kSendGrad:
      return fmt::format(">g{}", op.micro);
  }
  return "?";
}

namespace {

struct Builder {
  int stages, stage;
  std::vector<PipeOp> ops;
  void forward(int m) {
    if (stage > 0) ops.push_back({PipeOpKind::kRecvActivation, m});
    ops.push_back({PipeOpKind::kForward, m});
    if (stage < stages - 1) ops.push_back({PipeOpKind::kSendActivation, m});
  }
  void backward(int m) {
    if (stage < stages - 1) ops.push_back({PipeOpKind::kRecvGrad, m});
    ops.push_back({PipeOpKind::kBackward, m});
    if (stage > 0) ops.push_back({PipeOpKind::kSendGrad, m});
  }
};

}  // namespace

std::vector<PipeOp> make_stage_schedule(ScheduleKind kind, int stages, int stage,
                                        int microbatches) {
  if (stages < 1 || stage < 0 || stage >= stages)
    throw ConfigError(fmt::format("pipeline stage {} of {} does not exist", stage, stages));
  if (microbatches < 1)
    throw ConfigError(
        fmt::format("parallel.microbatches is {}; it must be at least 1", microbatches));
  Builder b{stages, stage, {}};
  const int m = microbatches;
  if (kind == ScheduleKind::kGpipe) {
    for (int i = 0; i < m; ++i) b.forward(i);
    for (int i = 0; i < m; ++i) b.backward(i);
    return b.ops;
  }
  // 1F1B: the warm-up fills the pipeline below this stage; in the steady phase each forward
  // is followed by the backward of the oldest stashed microbatch; the cool-down drains it.
  const int warmup = std::min(stages - stage - 1, m);
  for (int i = 0; i < warmup; ++i) b.forward(i);
  const int steady = m - warmup;
  for (int i = 0; i < steady; ++i) {
    b.forward(warmup + i);
    b.backward(i);
  }
  for (int i = steady; i < m; ++i) b.backward(i);
  return b.ops;
}

int peak_stash(const std::vector<PipeOp>& ops) {
  int live = 0, peak = 0;
  for (const auto& op : ops) {
    if (op.kind == PipeOpKind::kForward) peak = std::max(peak, ++live);
    if (op.kind == PipeOpKind::kBackward) --live;
  }
  return peak;
}

int warmup_forwards(const std::vector<PipeOp>& ops) {
  int forwards = 0;
  for (const auto& op : ops) {
    if (op.kind == PipeOpKind::kBackward) break;
    if (op.kind == PipeOpKind::kForward) ++forwards;
  }
  return std::max(0, forwards - 1);
}

double theoretical_bubble(int stages, int microbatches) {
  return double(stages - 1) / double(microbatches + stages - 1);
}

std::vector<double> replay_bubble(ScheduleKind kind, int microbatches,
                                  const std::vector<double>& forward_s,
                                  const std::vector<double>& backward_s, double transfer_s) {
  const int p = int(forward_s.size()), m = microbatches;
  PTRAIN_CHECK(p >= 1 && backward_s.size() == forward_s.size(), "one time per stage");
  std::vector<std::vector<PipeOp>> ops;
  for (int s = 0; s < p; ++s) ops.push_back(make_stage_schedule(kind, p, s, m));
  // act_at[s][i]: when stage s's activation i reaches stage s+1; grad_at[s][i]: when its
  // gradient i reaches stage s-1 (< 0: not sent yet).
  std::vector<std::vector<double>> act_at(size_t(p), std::vector<double>(size_t(m), -1));
  auto grad_at = act_at;
  std::vector<double> clock(size_t(p), 0), busy(size_t(p), 0);
  std::vector<size_t> next(size_t(p), 0);
  for (bool moved = true; moved;) {
    moved = false;
    for (int s = 0; s < p; ++s) {
      auto& t = clock[size_t(s)];
      for (auto& k = next[size_t(s)]; k < ops[size_t(s)].size(); ++k) {
        const PipeOp& op = ops[size_t(s)][k];
        const size_t i = size_t(op.micro);
        if (op.kind == PipeOpKind::kRecvActivation) {
          if (act_at[size_t(s - 1)][i] < 0) break;  // blocked until the sender gets there
          t = std::max(t, act_at[size_t(s - 1)][i]);
        } else if (op.kind == PipeOpKind::kRecvGrad) {
          if (grad_at[size_t(s + 1)][i] < 0) break;
          t = std::max(t, grad_at[size_t(s + 1)][i]);
        } else if (op.kind == PipeOpKind::kForward) {
          t += forward_s[size_t(s)];
          busy[size_t(s)] += forward_s[size_t(s)];
        } else if (op.kind == PipeOpKind::kBackward) {
          t += backward_s[size_t(s)];
          busy[size_t(s)] += backward_s[size_t(s)];
        } else if (op.kind == PipeOpKind::kSendActivation) {
          act_at[size_t(s)][i] = t + transfer_s;
        } else {
          grad_at[size_t(s)][i] = t + transfer_s;
        }
        moved = true;
      }
    }
  }
  for (int s = 0; s < p; ++s)
    PTRAIN_CHECK(next[size_t(s)] == ops[size_t(s)].size(), "schedule replay deadlocked");
  const double span = *std::max_element(clock.begin(), clock.end());
  std::vector<double> out;
  for (int s = 0; s < p; ++s) out.push_back(span > 0 ? 1 - busy[size_t(s)] / span : 0);
  return out;
}

std::string format_schedule(ScheduleKind kind, int stages, int microbatches) {
  std::string out = fmt::format(
      "pipeline schedule {}: {} stages, {} microbatches, ideal bubble {:.1f}%\n", to_string(kind),
      stages, microbatches, 100 * theoretical_bubble(stages, microbatches));
  for (int s = 0; s < stages; ++s) {
    auto ops = make_stage_schedule(kind, stages, s, microbatches);
    std::vector<std::string> words;
    for (const auto& op : ops) words.push_back(to_string(op));
    out += fmt::format("  stage {} (warm-up {}, peak stash {}): {}\n", s, warmup_forwards(ops),
                       peak_stash(ops), fmt::join(words, " "));
  }
  out +=
      "  legend: Fi/Bi forward/backward of microbatch i; <ai >ai receive/send its activation; "
      "<gi >gi receive/send its gradient\n";
  return out;
}

}  // namespace ptrain::parallel
