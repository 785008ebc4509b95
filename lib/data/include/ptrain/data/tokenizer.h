// Tokenizers: text <-> token ids. `bytes` (one id per byte, vocab 256) and `gpt2`, OpenAI's
// GPT-2 byte-level BPE (vocab 50,257): the GPT-2 pre-tokenization regex (PCRE2, Unicode classes),
// the byte -> printable-character map, and merges applied in rank order. The GPT-2 vocabulary
// is built into the binary (third_party/gpt2); PTRAIN_GPT2_VOCAB=DIR reads DIR/encoder.json and
// DIR/vocab.bpe instead.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ptrain::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;  // "bytes", "gpt2"
  virtual int vocab_size() const = 0;    // every id is < vocab_size()
  // Appends the ids of `text` to `out`. Any byte string is accepted (bytes that are not UTF-8
  // are tokenized as their own pieces). Not safe to call concurrently on one object (the gpt2
  // tokenizer keeps a cache of words).
  virtual void encode(std::string_view text, std::vector<int32_t>& out) = 0;
  // The bytes of ids[0..n); an id outside [0, vocab_size()) throws ConfigError.
  virtual std::string decode(const int32_t* ids, size_t n) const = 0;

  std::vector<int32_t> encode(std::string_view text) {
    std::vector<int32_t> out;
    encode(text, out);
    return out;
  }
  std::string decode(const std::vector<int32_t>& ids) const {
    return decode(ids.data(), ids.size());
  }
};

// The tokenizer names `make_tokenizer` knows: bytes, gpt2.
const std::vector<std::string>& tokenizer_names();

// Vocabulary size of a named tokenizer without building it (256, 50257); 0 for an unknown name.
int tokenizer_vocab_size(const std::string& name);

// "bytes" or "gpt2" (built-in vocabulary, or PTRAIN_GPT2_VOCAB). Throws ConfigError for an
// unknown name or a missing/malformed vocabulary file (naming the file).
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

// GPT-2 BPE from an encoder.json (token string -> id) and a vocab.bpe (merges, one per line, in
// rank order). Throws ConfigError naming the file and line for a missing or malformed file.
std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::string& encoder_json_path,
                                               const std::string& vocab_bpe_path);

// The same from the files' contents; `encoder_name` and `merges_name` appear in messages.
std::unique_ptr<Tokenizer> make_gpt2_tokenizer(std::string_view encoder_json,
                                               std::string_view vocab_bpe,
                                               const std::string& encoder_name,
                                               const std::string& merges_name);

}  // namespace ptrain::data
