// `ptrain generate CHECKPOINT --prompt TEXT --tokens N [--temperature T] [--top-k K] [--seed S]`:
// loads a GPT from a checkpoint (a step-N.safetensors file, or a run or checkpoint folder: its
// newest one) and prints the prompt followed by N sampled tokens, decoded with the checkpoint's
// tokenizer (__metadata__ "tokenizer": bytes or gpt2; --tokenizer overrides; a 256-id model
// without one is byte-level). The model's shape comes from the file's __metadata__ "config"
// (written by the trainer) or from flags.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <vector>

#include "command.h"
#include "gpt/gpt.h"
#include "ptrain/core/error.h"
#include "ptrain/data/json.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/data/tokenizer.h"
#include "ptrain/tensor/tensor.h"
#include "ptrain/train/setup.h"

namespace ptrain::cli {
namespace {

namespace fs = std::filesystem;

struct GenerateArgs {
  std::string checkpoint;
  std::string prompt = "\n";
  int tokens = 64;
  double temperature = 1.0;
  int top_k = 0;  // 0 = the whole vocabulary
  uint64_t seed = 1;
  std::string device = "cpu";
  std::string tokenizer;  // "" = the checkpoint's
  // Model shape when the file has no config metadata (0 = from the file).
  int layers = 0, heads = 0, dim = 0, seq_len = 0, vocab = 0;
};

// step-<N>.safetensors -> N, or -1.
int64_t step_of(const fs::path& p) {
  std::string name = p.filename().string();
  const std::string prefix = "step-", suffix = ".safetensors";
  if (!name.starts_with(prefix) || !name.ends_with(suffix)) return -1;
  std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return -1;
  return std::stoll(digits);
}

// The model file: CHECKPOINT itself, or the newest step-N.safetensors in it or its checkpoints/.
std::string find_model_file(const std::string& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return path;
  if (!fs::is_directory(path, ec))
    throw IoError(fmt::format("checkpoint '{}' does not exist", path),
                  "pass a step-N.safetensors file, or a run or checkpoints folder");
  fs::path best;
  int64_t best_step = -1;
  for (const fs::path& dir : {fs::path(path), fs::path(path) / "checkpoints"}) {
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      int64_t s = step_of(e.path());
      if (s > best_step) best_step = s, best = e.path();
    }
  }
  if (best_step < 0)
    throw IoError(fmt::format("no step-N.safetensors checkpoint in '{}'", path),
                  "train with checkpoint.every > 0, or pass the file itself");
  return best.string();
}

int config_int(const data::Json* config, const char* key, int flag) {
  if (flag > 0) return flag;
  const data::Json* v = config ? data::json_member(*config, key) : nullptr;
  int64_t n = 0;
  if (!v || !data::json_int64(*v, &n) || n <= 0)
    throw ConfigError(fmt::format("the checkpoint does not say the model's {}", key),
                      fmt::format("pass --{} (and the other shape flags)",
                                  key == std::string("seq_len") ? "seq-len" : key));
  return static_cast<int>(n);
}

// Samples one token from logits [V] (host) with temperature and top-k.
int sample(std::vector<float> logits, double temperature, int top_k, std::mt19937_64& rng) {
  const int V = static_cast<int>(logits.size());
  if (temperature <= 0)  // greedy
    return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int> order(V);
  for (int i = 0; i < V; ++i) order[i] = i;
  int k = top_k > 0 && top_k < V ? top_k : V;
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int a, int b) { return logits[a] > logits[b]; });
  double mx = logits[order[0]], total = 0;
  std::vector<double> w(k);
  for (int i = 0; i < k; ++i) total += w[i] = std::exp((logits[order[i]] - mx) / temperature);
  double u = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (int i = 0; i < k; ++i) {
    u -= w[i];
    if (u <= 0) return order[i];
  }
  return order[k - 1];
}

int generate(const GenerateArgs& a) {
  if (a.tokens < 0) throw ConfigError("--tokens must be >= 0");
  if (a.top_k < 0) throw ConfigError("--top-k must be >= 0 (0 = the whole vocabulary)");
  std::string path = find_model_file(a.checkpoint);
  auto file = data::SafetensorsFile::open(path);
  const auto& meta = file.metadata();
  auto it = meta.find("config");
  data::Json config;
  bool has_config = it != meta.end();
  if (has_config) config = data::parse_json(it->second, path + " __metadata__.config");
  const data::Json* cfgp = has_config ? &config : nullptr;

  nn::GptConfig cfg;
  cfg.layers = config_int(cfgp, "layers", a.layers);
  cfg.heads = config_int(cfgp, "heads", a.heads);
  cfg.dim = config_int(cfgp, "dim", a.dim);
  cfg.seq_len = config_int(cfgp, "seq_len", a.seq_len);
  cfg.vocab = config_int(cfgp, "vocab", a.vocab);
  std::string tok_name = a.tokenizer;
  if (tok_name.empty()) {
    auto t = meta.find("tokenizer");
    if (t != meta.end()) {
      tok_name = t->second;
    } else if (cfg.vocab == 256) {
      tok_name = "bytes";
    } else {
      throw ConfigError(fmt::format("the checkpoint '{}' does not name its tokenizer", path),
                        "pass --tokenizer bytes|gpt2 (set data.tokenizer when training on token "
                        "files)");
    }
  }
  auto tokenizer = data::make_tokenizer(tok_name);
  const int tok_vocab = tokenizer->vocab_size();
  if (cfg.vocab < tok_vocab)
    throw ConfigError(fmt::format("the model's vocabulary has {} entries, fewer than the {} "
                                  "tokenizer's {}",
                                  cfg.vocab, tok_name, tok_vocab),
                      "pass the tokenizer the model was trained with (--tokenizer)");
  cfg.device = train::resolve_device(a.device);
  nn::Gpt model(cfg);
  train::load_weights(model, path);
  const tensor::Ops& o = tensor::ops(cfg.device);

  std::vector<int32_t> ids = tokenizer->encode(a.prompt);
  if (ids.empty()) ids = tokenizer->encode("\n");
  std::mt19937_64 rng(a.seed);
  std::vector<int32_t> generated;
  std::vector<float> row(cfg.vocab);
  std::unique_ptr<nn::Activations> acts;
  for (int n = 0; n < a.tokens; ++n) {
    const int T = std::min<int>(static_cast<int>(ids.size()), cfg.seq_len);
    if (!acts || acts->seq() != T) acts = model.make_activations(1, T);
    std::vector<int32_t> ctx(ids.end() - T, ids.end()), targets(T, -1);
    nn::Batch b;
    b.B = 1;
    b.T = T;
    b.add("tokens", tensor::DType::kI32, {1, T}, ctx.data());
    b.add("targets", tensor::DType::kI32, {1, T}, targets.data());
    model.forward(b, *acts);
    o.copy_to_host(row.data(), model.logits(*acts) + size_t(T - 1) * cfg.vocab,
                   row.size() * sizeof(float));
    // Padding ids past the tokenizer's vocabulary (50304 for GPT-2's 50257) are never sampled.
    row.resize(size_t(tok_vocab));
    int next = sample(row, a.temperature, a.top_k, rng);
    row.resize(size_t(cfg.vocab));
    ids.push_back(next);
    generated.push_back(next);
  }
  // Decoded at once: a multi-byte character may span tokens.
  std::string out = a.prompt + tokenizer->decode(generated);
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  return 0;
}

PTRAIN_COMMAND(
    {"generate", "Sample text from a GPT checkpoint", false, 60, [](CLI::App& sub) -> Action {
       auto a = std::make_shared<GenerateArgs>();
       sub.add_option("checkpoint", a->checkpoint,
                      "step-N.safetensors, or a run/checkpoints folder (newest)")
           ->required();
       sub.add_option("--prompt", a->prompt, "text to continue")->capture_default_str();
       sub.add_option("--tokens", a->tokens, "tokens to generate")->capture_default_str();
       sub.add_option("--tokenizer", a->tokenizer,
                      "bytes|gpt2 (default: the checkpoint's; byte-level for a 256-id model)");
       sub.add_option("--temperature", a->temperature, "0 = greedy")->capture_default_str();
       sub.add_option("--top-k", a->top_k, "sample among the k likeliest (0 = all)")
           ->capture_default_str();
       sub.add_option("--seed", a->seed, "sampling seed")->capture_default_str();
       sub.add_option("--device", a->device, "cpu|cuda|auto")->capture_default_str();
       sub.add_option("--layers", a->layers, "model shape when the file lacks it");
       sub.add_option("--heads", a->heads);
       sub.add_option("--dim", a->dim);
       sub.add_option("--seq-len", a->seq_len);
       sub.add_option("--vocab", a->vocab);
       return [a] { return generate(*a); };
     }});

}  // namespace
}  // namespace ptrain::cli
