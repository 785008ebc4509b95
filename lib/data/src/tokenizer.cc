// The tokenizer registry behind make_tokenizer: `bytes` is built in; `gpt2` registers itself
// from the ptrain_gpt2 object library (gpt2_tokenizer.cc), which the ptrain binary links, so
// programs that never tokenize GPT-2 text carry neither it nor PCRE2.
#include "ptrain/data/tokenizer.h"

#include <map>
#include <mutex>

#include "ptrain/core/error.h"
#include "tokenizer_registry.h"

namespace ptrain::data {
namespace {

// ---------------------------------------------------------------------------------------------
// bytes

class ByteTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "bytes"; }
  int vocab_size() const override { return 256; }
  void encode(std::string_view text, std::vector<int32_t>& out) override {
    out.reserve(out.size() + text.size());
    for (unsigned char c : text) out.push_back(c);
  }
  std::string decode(const int32_t* ids, size_t n) const override {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) {
      if (ids[i] < 0 || ids[i] > 255)
        throw ConfigError(fmt::format("token {} at position {} is not a byte (0..255)", ids[i], i));
      s[i] = static_cast<char>(ids[i]);
    }
    return s;
  }
};

std::map<std::string, detail::TokenizerFactory>& registry() {
  static std::map<std::string, detail::TokenizerFactory> r;
  return r;
}

}  // namespace

void detail::register_tokenizer(const std::string& name, TokenizerFactory factory) {
  registry()[name] = std::move(factory);
}

const std::vector<std::string>& tokenizer_names() {
  static const std::vector<std::string> names = {"bytes", "gpt2"};
  return names;
}

int tokenizer_vocab_size(const std::string& name) {
  if (name == "bytes") return 256;
  if (name == "gpt2") return 50257;
  return 0;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "bytes") return std::make_unique<ByteTokenizer>();
  auto it = registry().find(name);
  if (it != registry().end()) return it->second();
  if (tokenizer_vocab_size(name) > 0)
    throw ConfigError(fmt::format("the {} tokenizer is not built into this program", name),
                      "use the ptrain binary (it links ptrain_gpt2)");
  throw ConfigError(fmt::format("unknown tokenizer `{}`", name), "use bytes or gpt2");
}

}  // namespace ptrain::data
