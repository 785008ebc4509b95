// `ptrain bench tokenizer FILE... [--tokenizer gpt2] [--repeats R]`: one-thread tokenizer
// throughput (MB/s of text, median of R passes, each with a fresh tokenizer so its word cache
// starts empty). `ptrain bench events [--steps N] [--repeats R]`: the TensorBoard event writer's
// cost per logged step (a typical metrics line of 14 numbers, appended as one record).
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/data/tokenizer.h"
#include "ptrain/launch/tensorboard.h"

namespace ptrain::cli {
namespace {

using SteadyClock = std::chrono::steady_clock;

double seconds_since(SteadyClock::time_point t) {
  return std::chrono::duration<double>(SteadyClock::now() - t).count();
}

// This thread's CPU time: on a busy machine the wall clock also counts other processes' turns.
double thread_cpu_seconds() {
  struct timespec ts;
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty()      ? 0
         : v.size() % 2 ? v[v.size() / 2]
                        : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

struct TokenizerArgs {
  std::vector<std::string> files;
  std::string tokenizer = "gpt2";
  int repeats = 5;
};

int bench_tokenizer(const TokenizerArgs& a) {
  if (a.repeats < 1) throw ConfigError("--repeats must be >= 1");
  std::string text;
  for (const auto& f : a.files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) throw ConfigError(fmt::format("cannot read '{}'", f), "pass text files");
    std::ostringstream s;
    s << in.rdbuf();
    text += s.str();
  }
  if (text.empty()) throw ConfigError("the input files are empty", "pass text files");
  std::vector<double> mbps, cpu_mbps;
  size_t tokens = 0;
  for (int r = 0; r < a.repeats; ++r) {
    auto tok = data::make_tokenizer(a.tokenizer);  // not timed: loading the vocabulary
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3);
    auto t0 = SteadyClock::now();
    double c0 = thread_cpu_seconds();
    tok->encode(text, ids);
    double s = seconds_since(t0), c = thread_cpu_seconds() - c0;
    tokens = ids.size();
    mbps.push_back(double(text.size()) / 1e6 / s);
    cpu_mbps.push_back(double(text.size()) / 1e6 / c);
  }
  fmt::print(
      "tokenizer {}: {:.2f} MB of text, {} tokens ({:.2f} bytes/token), one thread: "
      "median {:.2f} MB/s over {} passes (min {:.2f}, max {:.2f}); per CPU second {:.2f} "
      "MB/s\n",
      a.tokenizer, double(text.size()) / 1e6, tokens, double(text.size()) / double(tokens),
      median(mbps), a.repeats, *std::min_element(mbps.begin(), mbps.end()),
      *std::max_element(mbps.begin(), mbps.end()), median(cpu_mbps));
  return 0;
}

struct EventsArgs {
  int steps = 20000;
  int repeats = 5;
};

int bench_events(const EventsArgs& a) {
  if (a.steps < 1 || a.repeats < 1) throw ConfigError("--steps and --repeats must be >= 1");
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / fmt::format("ptrain-bench-events-{}", ::getpid());
  std::vector<std::string> lines;
  lines.reserve(size_t(a.steps));
  for (int s = 1; s <= a.steps; ++s)
    lines.push_back(fmt::format(
        R"({{"step": {}, "total_steps": {}, "loss": {:.9g}, "lr": 0.0003, "grad_norm": 0.8123, )"
        R"("tokens_per_s": 51234.5, "step_ms": 81.25, "gflops": 812.5, "mfu": 0.41, )"
        R"("mem_mb": 2048.5, "optimizer_mb": 512.25, "comm_wait_ms": 1.25, "comm_span_ms": )"
        R"(9.5, "comm_hidden": 0.87, "bubble": 0.21, "eval_loss": 2.5}})",
        s, a.steps, 5.0 / (1 + s * 1e-3)));
  std::vector<double> us, cpu_us;
  size_t bytes = 0;
  for (int r = 0; r < a.repeats; ++r) {
    fs::remove_all(dir);
    launch::EventWriter w((dir / "tb").string(), 1764633600.0);
    auto t0 = SteadyClock::now();
    double c0 = thread_cpu_seconds();
    for (const auto& l : lines) w.add_metrics(l, 1764633600.0);
    us.push_back(seconds_since(t0) * 1e6 / a.steps);
    cpu_us.push_back((thread_cpu_seconds() - c0) * 1e6 / a.steps);
    bytes = fs::file_size(w.path());
  }
  fs::remove_all(dir);
  fmt::print(
      "event writer: {} logged steps of 14 scalars, {:.0f} bytes per step: median {:.2f} "
      "us per logged step over {} runs (min {:.2f}, max {:.2f}); CPU {:.2f} us\n",
      a.steps, double(bytes) / a.steps, median(us), a.repeats,
      *std::min_element(us.begin(), us.end()), *std::max_element(us.begin(), us.end()),
      median(cpu_us));
  return 0;
}

PTRAIN_BENCH({"tokenizer", "Tokenizer throughput, one thread (MB/s of text)", false, 50,
              [](CLI::App& sub) -> Action {
                auto a = std::make_shared<TokenizerArgs>();
                sub.add_option("files", a->files, "text files")->required();
                sub.add_option("--tokenizer", a->tokenizer, "gpt2|bytes")->capture_default_str();
                sub.add_option("--repeats", a->repeats, "passes")->capture_default_str();
                return [a] { return bench_tokenizer(*a); };
              }});

PTRAIN_BENCH({"events", "TensorBoard event writer: cost per logged step", false, 51,
              [](CLI::App& sub) -> Action {
                auto a = std::make_shared<EventsArgs>();
                sub.add_option("--steps", a->steps, "logged steps per run")->capture_default_str();
                sub.add_option("--repeats", a->repeats, "runs")->capture_default_str();
                return [a] { return bench_events(*a); };
              }});

}  // namespace
}  // namespace ptrain::cli
