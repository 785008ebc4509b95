#include "ptrain/data/prepare.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "mapped_file.h"
#include "ptrain/core/error.h"
#include "ptrain/data/token_stream.h"
#include "ptrain/data/tokenizer.h"

namespace ptrain::data {
namespace {

namespace fs = std::filesystem;

constexpr int32_t kGpt2EndOfText = 50256;

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Where a chunk may end so that tokenizing the pieces equals tokenizing the whole: right after
// a '\n' that sits between two ASCII non-space bytes (no pre-token spans it: "\n" is a piece of
// its own there). The first such place at or after `from`, else the end.
size_t chunk_end(std::string_view text, size_t from) {
  for (size_t i = std::max<size_t>(from, 1); i + 1 < text.size(); ++i) {
    if (text[i] != '\n') continue;
    unsigned char before = static_cast<unsigned char>(text[i - 1]);
    unsigned char after = static_cast<unsigned char>(text[i + 1]);
    if (before < 0x80 && after < 0x80 && !is_space(char(before)) && !is_space(char(after)))
      return i + 1;
  }
  return text.size();
}

void write_atomically(const std::string& path, const std::vector<int32_t>& tokens, size_t begin,
                      size_t end) {
  std::string tmp = path + ".tmp";
  write_token_file(tmp, tokens.data() + begin, static_cast<int64_t>(end - begin));
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw IoError(fmt::format("cannot rename '{}' to '{}': {}", tmp, path, ec.message()));
}

}  // namespace

std::string eval_path_for(const std::string& output) {
  fs::path p(output);
  std::string ext = p.extension().string();
  return (p.parent_path() / (p.stem().string() + "_val" + (ext.empty() ? ".bin" : ext))).string();
}

PrepareResult prepare_tokens(const PrepareOptions& o) {
  if (o.inputs.empty()) throw ConfigError("no input files", "name one or more text files");
  if (o.output.empty()) throw ConfigError("no output file", "pass -o OUT.bin");
  if (!(o.eval_fraction >= 0 && o.eval_fraction < 1))
    throw ConfigError(fmt::format("--eval-fraction {} is outside [0, 1)", o.eval_fraction),
                      "use e.g. 0.05, or 0 for no eval split");
  if (tokenizer_vocab_size(o.tokenizer) == 0)
    throw ConfigError(fmt::format("unknown tokenizer `{}`", o.tokenizer), "use bytes or gpt2");
  PrepareResult r;
  r.train_path = o.output;
  if (o.eval_fraction > 0) r.eval_path = eval_path_for(o.output);
  std::error_code ec;
  fs::path out_dir = fs::path(o.output).parent_path();
  if (!out_dir.empty() && !fs::is_directory(out_dir, ec))
    throw ConfigError(fmt::format("the output folder '{}' does not exist", out_dir.string()),
                      "create it, or pass -o in an existing folder");
  for (const auto& in : o.inputs)
    for (const std::string& out : {r.train_path, r.eval_path})
      if (!out.empty() && fs::exists(out, ec) && fs::equivalent(in, out, ec))
        throw ConfigError(fmt::format("the output '{}' is the input '{}'", out, in),
                          "write the tokens to another file");

  auto start = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<MappedFile>> files;
  uint64_t total = 0;
  for (const auto& in : o.inputs) {
    files.push_back(std::make_unique<MappedFile>(in, "input text file"));
    total += files.back()->size();
  }
  auto tokenizer = make_tokenizer(o.tokenizer);
  std::vector<int32_t> tokens;
  tokens.reserve(static_cast<size_t>(total / 3));
  uint64_t done = 0;
  if (o.progress) o.progress(0, total);
  for (const auto& f : files) {
    if (o.tokenizer == "gpt2") tokens.push_back(kGpt2EndOfText);
    std::string_view text(reinterpret_cast<const char*>(f->data()), f->size());
    for (size_t pos = 0; pos < text.size();) {
      size_t end = chunk_end(text, std::min(text.size(), pos + std::max<size_t>(o.chunk_bytes, 1)));
      tokenizer->encode(text.substr(pos, end - pos), tokens);
      done += end - pos;
      pos = end;
      if (o.progress) o.progress(done, total);
    }
  }
  if (tokens.size() > size_t(INT32_MAX))
    throw ConfigError(
        fmt::format("{} tokens exceed the token file's limit of {}", tokens.size(), INT32_MAX),
        "prepare the text in several files");
  const size_t n = tokens.size();
  const size_t n_eval = static_cast<size_t>(double(n) * o.eval_fraction);
  if (o.eval_fraction > 0 && (n_eval == 0 || n_eval == n))
    throw ConfigError(
        fmt::format("--eval-fraction {} of {} tokens leaves an empty split", o.eval_fraction, n),
        "use more text or another fraction");
  write_atomically(r.train_path, tokens, 0, n - n_eval);
  if (n_eval > 0) write_atomically(r.eval_path, tokens, n - n_eval, n);
  r.train_tokens = static_cast<int64_t>(n - n_eval);
  r.eval_tokens = static_cast<int64_t>(n_eval);
  r.bytes = total;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace ptrain::data
