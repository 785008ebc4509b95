// data.type: text through a tokenizer (token_stream.h's open_text_file(path, tokenizer)); a file
// of its own so that programs reading only token files do not link the tokenizers.
#include <vector>

#include "mapped_file.h"
#include "ptrain/core/error.h"
#include "ptrain/data/token_stream.h"
#include "ptrain/data/tokenizer.h"

namespace ptrain::data {
namespace {

class TokenizedTextStream final : public TokenStream {
 public:
  TokenizedTextStream(const std::string& path, const std::string& tokenizer)
      : path_(path), name_(tokenizer) {
    MappedFile file(path, "text file");
    auto t = make_tokenizer(tokenizer);
    vocab_ = t->vocab_size();
    std::vector<int32_t> ids;
    t->encode(std::string_view(reinterpret_cast<const char*>(file.data()), file.size()), ids);
    tokens_.resize(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) tokens_[i] = static_cast<uint16_t>(ids[i]);
  }
  int64_t size() const override { return static_cast<int64_t>(tokens_.size()); }
  int vocab() const override { return vocab_; }
  void read(int64_t begin, int64_t count, int32_t* out) const override {
    PTRAIN_CHECK(begin >= 0 && count >= 0 && begin + count <= size(), "read [{}, +{}) of {}", begin,
                 count, size());
    for (int64_t i = 0; i < count; ++i) out[i] = tokens_[size_t(begin + i)];
  }
  std::string describe() const override {
    return fmt::format("text file '{}' ({} tokenizer)", path_, name_);
  }

 private:
  std::string path_, name_;
  int vocab_ = 0;
  std::vector<uint16_t> tokens_;  // GPT-2 ids fit 16 bits
};

}  // namespace

std::unique_ptr<TokenStream> open_text_file(const std::string& path, const std::string& tokenizer) {
  if (tokenizer.empty() || tokenizer == "bytes") return open_text_file(path);
  PTRAIN_CHECK(tokenizer_vocab_size(tokenizer) <= 65536, "tokenizer {} ids exceed 16 bits",
               tokenizer);
  return std::make_unique<TokenizedTextStream>(path, tokenizer);
}

}  // namespace ptrain::data
