#include "ptrain/launch/console.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "ptrain/core/error.h"

namespace ptrain::launch {

ConsoleMode parse_console_mode(const std::string& mode) {
  if (mode == "rank0") return ConsoleMode::Rank0;
  if (mode == "all") return ConsoleMode::All;
  if (mode == "none") return ConsoleMode::None;
  throw ConfigError(fmt::format("logging.console: '{}' is not one of rank0|all|none", mode));
}

bool is_warning_or_error(const std::string& text) {
  std::string lower(text.size(), ' ');
  std::transform(text.begin(), text.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* word : {"warn", "error", "fatal", "traceback", "exception", "panic", "abort"})
    if (lower.find(word) != std::string::npos) return true;
  return false;
}

bool is_step_line(const std::string& text) {
  // "step <n>[/<total>] | ..." as the built-in trainer logs it.
  if (text.rfind("step ", 0) != 0) return false;
  size_t i = 5;
  size_t digits = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '/'))
    ++i, ++digits;
  return digits > 0 && text.compare(i, 3, " | ") == 0;
}

namespace {

std::string clock_text(double seconds) {
  auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{:02d}:{:02d}", s / 60, s % 60);
}

std::string rate_text(double v) {
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

}  // namespace

std::string format_progress(const ProgressState& p) {
  std::string out =
      p.total > 0 ? fmt::format("step {}/{}", p.step, p.total) : fmt::format("step {}", p.step);
  if (p.loss) out += fmt::format(" | loss {:.4f}", *p.loss);
  if (p.tokens_per_s) out += fmt::format(" | {} tok/s", rate_text(*p.tokens_per_s));
  out += fmt::format(" | {} elapsed", clock_text(p.elapsed_s));
  if (p.total > 0 && p.step > 0 && p.step <= p.total) {
    double eta = p.elapsed_s / static_cast<double>(p.step) * static_cast<double>(p.total - p.step);
    out += fmt::format(" | ETA {}", clock_text(eta));
  }
  return out;
}

Console::Console(std::FILE* out, bool tty, ConsoleMode mode, int log_every)
    : out_(out), tty_(tty), mode_(mode), log_every_(std::max(1, log_every)) {}

void Console::clear_live() {
  if (tty_ && live_shown_) {
    std::fputs("\r\033[K", out_);
    live_shown_ = false;
  }
}

void Console::draw_live() {
  if (!tty_ || !has_progress_) return;
  std::fputs(("\r\033[K" + format_progress(progress_)).c_str(), out_);
  std::fflush(out_);
  live_shown_ = true;
}

void Console::worker_line(int rank, const std::string& node, bool /*is_stderr*/,
                          const std::string& text) {
  bool show = mode_ == ConsoleMode::All ||
              (mode_ == ConsoleMode::Rank0 && (rank == 0 || is_warning_or_error(text)));
  if (!show) return;
  // Without a TTY the progress line printed from this step's Report already stands for it (the
  // trainer reports before it logs); rank-<r>.log still gets every line.
  if (!tty_ && has_progress_ && is_step_line(text)) return;
  clear_live();
  std::string prefix =
      node.empty() ? fmt::format("[rank {}]", rank) : fmt::format("[{}:{}]", node, rank);
  fmt::print(out_, "{} {}\n", prefix, text);
  draw_live();
  if (!tty_) std::fflush(out_);
}

void Console::message(const std::string& text, bool to_stderr) {
  clear_live();
  std::FILE* f = to_stderr ? stderr : out_;
  if (to_stderr) std::fflush(out_);
  fmt::print(f, "{}\n", text);
  std::fflush(f);
  draw_live();
}

std::optional<int64_t> Console::report(const std::string& json, double elapsed_s) {
  const auto fields = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  auto number = [&](const char* key) -> std::optional<double> {
    if (!fields.is_object()) return std::nullopt;
    auto it = fields.find(key);
    if (it == fields.end() || !it->is_number()) return std::nullopt;
    return it->get<double>();
  };
  auto step = number("step");
  if (!step) return std::nullopt;
  auto s = static_cast<int64_t>(*step);
  if (s < progress_.step) return s;  // an older report from another rank
  progress_.step = s;
  progress_.loss = number("loss");
  progress_.tokens_per_s = number("tokens_per_s");
  progress_.step_ms = number("step_ms");
  progress_.lr = number("lr");
  if (auto total = number("total_steps")) progress_.total = static_cast<int64_t>(*total);
  progress_.elapsed_s = elapsed_s;
  progress_.last_report = json;
  has_progress_ = true;
  if (tty_) {
    draw_live();
  } else if (s != last_printed_step_ && (s % log_every_ == 0 || s == progress_.total)) {
    last_printed_step_ = s;
    std::string extra;  // what the trainer's own step line had beyond the progress line
    if (progress_.lr) extra += fmt::format(" | lr {:.3e}", *progress_.lr);
    if (progress_.step_ms) extra += fmt::format(" | {:.1f} ms/step", *progress_.step_ms);
    // Evaluation figures of the step (eval_loss and the family's, such as eval_accuracy).
    for (const auto& [key, value] : fields.items())
      if (key.rfind("eval_", 0) == 0 && value.is_number())
        extra += fmt::format(" | {} {:.4f}", key, value.get<double>());
    fmt::print(out_, "{}{}\n", format_progress(progress_), extra);
    std::fflush(out_);
  }
  return s;
}

void Console::tick(double elapsed_s) {
  if (!tty_ || !has_progress_) return;
  progress_.elapsed_s = elapsed_s;
  draw_live();
}

void Console::finish() {
  if (tty_ && live_shown_) {
    std::fputs("\n", out_);
    std::fflush(out_);
    live_shown_ = false;
  }
}

}  // namespace ptrain::launch
