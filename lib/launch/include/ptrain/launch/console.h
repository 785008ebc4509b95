// What the launcher shows on the terminal: worker lines prefixed `[rank r]` per logging.console,
// and the progress fed by Report (one live line on a TTY, plain lines every log_every steps
// otherwise). Used from the launcher's event loop thread only.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

namespace ptrain::launch {

// rank0: rank 0's lines plus warnings and errors of every rank; all; none.
enum class ConsoleMode { Rank0, All, None };
ConsoleMode parse_console_mode(const std::string& mode);

// True for lines that look like a warning or an error ("warning", "error", "Traceback", ...),
// which rank0 mode shows from every rank.
bool is_warning_or_error(const std::string& text);

// True for the built-in trainer's per-step line ("step 12/200 | loss ..."). A non-TTY console
// leaves it out once Reports arrive: its own progress line for that step replaces it.
bool is_step_line(const std::string& text);

struct ProgressState {
  int64_t step = 0;
  int64_t total = 0;
  std::optional<double> loss, tokens_per_s, step_ms, lr;
  double elapsed_s = 0;
  std::string last_report;  // the last metrics object (for summary.json)
};

// "step 12/200 | loss 3.1416 | 12.3k tok/s | 00:12 elapsed | ETA 03:05"
std::string format_progress(const ProgressState& p);

class Console {
 public:
  Console(std::FILE* out, bool tty, ConsoleMode mode, int log_every);

  void worker_line(int rank, const std::string& node, bool is_stderr, const std::string& text);
  // A line of the launcher's own (always shown), e.g. the run folder or a root cause.
  void message(const std::string& text, bool to_stderr = false);
  // Takes one Report (a flat JSON object with step, loss, tokens_per_s, ...). Returns its step,
  // also when an older report than the one shown; nullopt when it has no numeric step (or is
  // not a JSON object), and then it is ignored.
  std::optional<int64_t> report(const std::string& json, double elapsed_s);
  void set_total_steps(int64_t total) { progress_.total = total; }
  // Redraws the live line (TTY only) with a fresh elapsed time.
  void tick(double elapsed_s);
  // Ends the live line so that later output starts on a fresh line.
  void finish();
  const ProgressState& progress() const { return progress_; }
  bool has_progress() const { return has_progress_; }

 private:
  void clear_live();
  void draw_live();
  std::FILE* out_;
  bool tty_;
  ConsoleMode mode_;
  int log_every_;
  bool live_shown_ = false;
  bool has_progress_ = false;
  int64_t last_printed_step_ = -1;
  ProgressState progress_;
};

}  // namespace ptrain::launch
