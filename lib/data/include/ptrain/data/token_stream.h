// Token data sets: a read-only stream of token ids in [0, vocab) with random access, from an
// llm.c .bin file (memory-mapped), any file's bytes, or a seeded learnable synthetic chain.
// The sampler (sampler.h) cuts training sequences out of a stream.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace ptrain::data {

class TokenStream {
 public:
  virtual ~TokenStream() = default;
  virtual int64_t size() const = 0;  // tokens in the stream
  virtual int vocab() const = 0;     // every id is < vocab
  // out[i] = token[begin + i] for i < count; requires 0 <= begin, begin + count <= size().
  virtual void read(int64_t begin, int64_t count, int32_t* out) const = 0;
  // For messages: "token file 'data/x.bin'", "synthetic(vocab=256, seed=1)".
  virtual std::string describe() const = 0;
};

// llm.c token format: a 256 x int32 little-endian header (magic 20240520, version 1, token
// count, rest unused) followed by `count` uint16 tokens.
inline constexpr int32_t kTokenFileMagic = 20240520;
inline constexpr int32_t kTokenFileVersion = 1;
inline constexpr int kTokenFileHeaderInts = 256;

// Opens and validates a .bin file: magic, version, size == header + 2*count, and every id below
// `vocab` (one pass at open, so a bad id fails before training starts). Throws ConfigError
// naming the file (and the position of a bad id); IoError on read failures.
std::unique_ptr<TokenStream> open_token_file(const std::string& path, int vocab);

// Writes `count` tokens in the llm.c format (for tests and data preparation); ids must fit uint16.
void write_token_file(const std::string& path, const int32_t* tokens, int64_t count);

// The file's bytes as tokens, vocab 256.
std::unique_ptr<TokenStream> open_text_file(const std::string& path);

// The file's text through a tokenizer (tokenizer.h: "bytes", "gpt2"), tokenized once at open and
// held in memory; vocab is the tokenizer's. "bytes" is open_text_file.
std::unique_ptr<TokenStream> open_text_file(const std::string& path, const std::string& tokenizer);

struct SyntheticOptions {
  int vocab = 256;
  uint64_t seed = 1;
  int64_t num_tokens = 1 << 20;  // stream length (held in memory as uint16/int32)
  int successors = 4;            // each state has this many possible next tokens
};

// A fixed random sparse Markov chain: from each token, the next one is drawn from `successors`
// fixed successors (with fixed unequal probabilities). Its entropy rate is at most
// ln(successors), far below ln(vocab), so a model's loss falls well under ln(vocab).
// Deterministic from the options; identical on every platform.
std::unique_ptr<TokenStream> make_synthetic(const SyntheticOptions& options);

}  // namespace ptrain::data
