// `ptrain data prepare IN... -o OUT.bin [--tokenizer gpt2|bytes] [--eval-fraction F]`: text ->
// llm.c token files (lib/data/prepare.h), with a progress bar (bytes/s, ETA) on a terminal.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/data/prepare.h"
#include "ptrain/data/tokenizer.h"

namespace ptrain::cli {
namespace {

struct PrepareArgs {
  data::PrepareOptions options;
  std::string progress = "auto";  // auto|always|never
};

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) b /= 1000, ++u;
  return fmt::format("{:.1f} {}", b, units[u]);
}

std::string clock_text(double s) {
  auto t = static_cast<int64_t>(s + 0.5);
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{}:{:02}", t / 60, t % 60);
}

// "[##########----------]  50%  12.3 MB / 24.6 MB  8.1 MB/s  ETA 0:02", redrawn in place.
class ProgressBar {
 public:
  void operator()(uint64_t done, uint64_t total) {
    auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    double secs = std::chrono::duration<double>(now - start_).count();
    double frac = total ? double(done) / double(total) : 1.0;
    double rate = secs > 0 ? double(done) / secs : 0;
    constexpr int kWidth = 30;
    int filled = static_cast<int>(frac * kWidth);
    std::string bar(size_t(filled), '#');
    bar.append(size_t(kWidth - filled), '-');
    std::string eta = rate > 0 ? clock_text(double(total - done) / rate) : "?";
    fmt::print(stderr, "\r[{}] {:3.0f}%  {} / {}  {}/s  ETA {}\x1b[K", bar, frac * 100,
               human_bytes(double(done)), human_bytes(double(total)), human_bytes(rate), eta);
    if (done >= total) fmt::print(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
};

int prepare(PrepareArgs& a) {
  if (a.progress == "always" || (a.progress == "auto" && ::isatty(STDERR_FILENO)))
    a.options.progress = ProgressBar();
  data::PrepareResult r = data::prepare_tokens(a.options);
  fmt::print("wrote {} tokens to {}", r.train_tokens, r.train_path);
  if (!r.eval_path.empty()) fmt::print(" and {} eval tokens to {}", r.eval_tokens, r.eval_path);
  fmt::print(" ({} tokenizer, {} of text in {:.2f} s, {}/s)\n", a.options.tokenizer,
             human_bytes(double(r.bytes)), r.seconds,
             human_bytes(r.seconds > 0 ? double(r.bytes) / r.seconds : 0));
  return 0;
}

Action setup_data(CLI::App& sub) {
  auto a = std::make_shared<PrepareArgs>();
  sub.require_subcommand(1);
  CLI::App* prep = sub.add_subcommand("prepare", "Tokenize text files into llm.c token files");
  prep->add_option("inputs", a->options.inputs, "text files")->required();
  prep->add_option("-o,--output", a->options.output,
                   "the train split (llm.c .bin); the eval split goes to OUT_val.bin")
      ->required();
  prep->add_option("--tokenizer", a->options.tokenizer, "gpt2|bytes")
      ->check(CLI::IsMember(data::tokenizer_names()))
      ->capture_default_str();
  prep->add_option("--eval-fraction", a->options.eval_fraction,
                   "share of the tokens (the last ones) held out for evaluation")
      ->capture_default_str();
  prep->add_option("--progress", a->progress, "auto (on a terminal)|always|never")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->capture_default_str();
  return [a] { return prepare(*a); };
}

}  // namespace

PTRAIN_COMMAND({"data", "Prepare training data (data prepare: text -> llm.c tokens)", false, 55,
                setup_data})

}  // namespace ptrain::cli
