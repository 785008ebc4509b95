// `ptrain bench ckpt [--dir D] [--layers 12 --dim 768 --vocab 50257 --seq 1024] [--runs 5]`:
// saves a checkpoint with the tensors of a GPT-2-shaped model (124M by default: weights plus
// AdamW's two moments) and, in the same run, writes the same number of bytes with plain large
// writes + fsync (what `dd bs=8M conv=fsync` does); prints both rates and their ratio (medians).
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/data/checkpoint.h"

namespace ptrain::cli {
namespace {

struct BenchCkptArgs {
  std::string dir = "runs/bench-ckpt";
  int layers = 12, dim = 768, vocab = 50257, seq = 1024;
  int runs = 5;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The GPT-2 tensors (Hugging Face names and shapes) of one model.
struct Shape {
  std::string name;
  std::vector<int64_t> dims;
};
std::vector<Shape> gpt2_shapes(const BenchCkptArgs& a) {
  const int64_t d = a.dim;
  // Per layer: name, rows (0 = a vector), columns in units of d.
  struct Row {
    const char* name;
    int64_t rows, cols;
  };
  static const Row kLayer[] = {
      {"ln_1.weight", 0, 1},      {"ln_1.bias", 0, 1},          {"attn.c_attn.weight", 1, 3},
      {"attn.c_attn.bias", 0, 3}, {"attn.c_proj.weight", 1, 1}, {"attn.c_proj.bias", 0, 1},
      {"ln_2.weight", 0, 1},      {"ln_2.bias", 0, 1},          {"mlp.c_fc.weight", 1, 4},
      {"mlp.c_fc.bias", 0, 4},    {"mlp.c_proj.weight", 4, 1},  {"mlp.c_proj.bias", 0, 1}};
  std::vector<Shape> out;
  out.push_back({"wte.weight", {a.vocab, d}});
  out.push_back({"wpe.weight", {a.seq, d}});
  for (int i = 0; i < a.layers; ++i)
    for (const Row& r : kLayer) {
      Shape s{"h." + std::to_string(i) + "." + r.name, {}};
      if (r.rows > 0) s.dims.push_back(r.rows * d);
      s.dims.push_back(r.cols * d);
      out.push_back(std::move(s));
    }
  out.push_back({"ln_f.weight", {d}});
  out.push_back({"ln_f.bias", {d}});
  return out;
}

// Large writes of `bytes` from `buf` (cycled) to a new file, then fsync: the disk's rate.
double plain_write_s(const std::string& path, const std::vector<char>& buf, uint64_t bytes) {
  const auto t0 = Clock::now();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw IoError(fmt::format("cannot create '{}': {}", path, std::strerror(errno)));
  uint64_t left = bytes;
  while (left > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
    const ssize_t w = ::write(fd, buf.data(), n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      const int err = errno;
      ::close(fd);
      throw IoError(fmt::format("cannot write '{}': {}", path, std::strerror(err)));
    }
    left -= static_cast<uint64_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0)
    throw IoError(fmt::format("cannot fsync '{}': {}", path, std::strerror(errno)));
  const double s = seconds_since(t0);
  ::unlink(path.c_str());
  return s;
}

Action setup(CLI::App& sub) {
  auto a = std::make_shared<BenchCkptArgs>();
  sub.add_option("--dir", a->dir, "folder to write in (on the disk to measure)")
      ->capture_default_str();
  sub.add_option("--layers", a->layers, "GPT-2 layers")->capture_default_str();
  sub.add_option("--dim", a->dim, "GPT-2 width")->capture_default_str();
  sub.add_option("--vocab", a->vocab, "vocabulary")->capture_default_str();
  sub.add_option("--seq", a->seq, "positions")->capture_default_str();
  sub.add_option("--runs", a->runs, "runs; medians are reported")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  return [a] {
    if (a->layers < 1 || a->dim < 1 || a->vocab < 1 || a->seq < 1)
      throw ConfigError("bench ckpt: --layers, --dim, --vocab and --seq must be positive");
    std::filesystem::create_directories(a->dir);
    const auto shapes = gpt2_shapes(*a);
    int64_t params = 0;
    for (const auto& t : shapes) {
      int64_t n = 1;
      for (int64_t x : t.dims) n *= x;
      params += n;
    }
    // One buffer per role, filled with non-constant values (a compressing file system would
    // otherwise flatter both figures).
    std::vector<float> weights(params), exp_avg(params), exp_avg_sq(params);
    for (int64_t i = 0; i < params; ++i) {
      weights[i] = static_cast<float>(i % 10007) * 1e-4f;
      exp_avg[i] = static_cast<float>(i % 7919) * -1e-5f;
      exp_avg_sq[i] = static_cast<float>(i % 104729) * 1e-7f;
    }
    data::CheckpointData ckpt;
    ckpt.step = 1;
    int64_t at = 0;
    for (const auto& t : shapes) {
      int64_t n = 1;
      for (int64_t x : t.dims) n *= x;
      ckpt.model.push_back({t.name, DType::kF32, t.dims, weights.data() + at});
      ckpt.optim.push_back({t.name + ".exp_avg", DType::kF32, t.dims, exp_avg.data() + at});
      ckpt.optim.push_back({t.name + ".exp_avg_sq", DType::kF32, t.dims, exp_avg_sq.data() + at});
      at += n;
    }
    const uint64_t bytes = static_cast<uint64_t>(params) * 3 * sizeof(float);
    std::vector<char> block(8u << 20);
    std::memcpy(block.data(), weights.data(), std::min(block.size(), weights.size() * 4));

    fmt::print(
        "# ptrain bench ckpt: GPT-2 layers {} dim {} vocab {} seq {} = {:.1f}M parameters, "
        "{:.0f} MB per checkpoint (weights + AdamW moments), in {}, {} runs (median)\n",
        a->layers, a->dim, a->vocab, a->seq, params / 1e6, bytes / 1e6, a->dir, a->runs);
    fmt::print("# {:>6} {:>12} {:>12} {:>12} {:>12} {:>8}\n", "run", "disk_s", "disk_MB/s",
               "save_s", "save_MB/s", "ratio");
    std::vector<double> disk, save, ratio;
    for (int r = 0; r < a->runs; ++r) {
      const double d = plain_write_s(a->dir + "/.bench-plain-write", block, bytes);
      const auto t0 = Clock::now();
      data::save_checkpoint(a->dir, ckpt, {.keep = 1, .refuse_nonfinite = true});
      const double s = seconds_since(t0);
      disk.push_back(bytes / d / 1e6);
      save.push_back(bytes / s / 1e6);
      ratio.push_back(d / s);
      fmt::print("  {:>6} {:>12.3f} {:>12.1f} {:>12.3f} {:>12.1f} {:>8.2f}\n", r, d, disk.back(), s,
                 save.back(), ratio.back());
    }
    fmt::print("  {:>6} {:>12} {:>12.1f} {:>12} {:>12.1f} {:>8.2f}\n", "median", "", median(disk),
               "", median(save), median(ratio));
    std::filesystem::remove_all(a->dir);
    return 0;
  };
}

}  // namespace

PTRAIN_BENCH({"ckpt", "Checkpoint save of a GPT-2-shaped state vs the disk's fsync'd write rate",
              false, 80, setup})

}  // namespace ptrain::cli
