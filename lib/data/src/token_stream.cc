#include "ptrain/data/token_stream.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <vector>

#include "mapped_file.h"
#include "ptrain/core/error.h"
#include "rng.h"

namespace ptrain::data {

static_assert(std::endian::native == std::endian::little, "token files are little-endian");

namespace {

constexpr size_t kHeaderBytes = kTokenFileHeaderInts * sizeof(int32_t);

class TokenFileStream final : public TokenStream {
 public:
  TokenFileStream(const std::string& path, int vocab) : file_(path, "token file"), vocab_(vocab) {
    if (vocab <= 0) throw ConfigError(fmt::format("token file '{}': vocab must be > 0", path));
    if (file_.size() < kHeaderBytes) {
      throw ConfigError(
          fmt::format("token file '{}' is {} bytes, shorter than the {}-byte llm.c header", path,
                      file_.size(), kHeaderBytes),
          "token files use llm.c's .bin format (256 int32 header, then uint16 tokens)");
    }
    int32_t header[3];
    std::memcpy(header, file_.data(), sizeof(header));
    if (header[0] != kTokenFileMagic) {
      throw ConfigError(fmt::format("token file '{}' has magic {}, expected {} (llm.c .bin)", path,
                                    header[0], kTokenFileMagic),
                        "token files use llm.c's .bin format; for raw text use data.type: text");
    }
    if (header[1] != kTokenFileVersion) {
      throw ConfigError(fmt::format("token file '{}' has version {}, expected {} (uint16 tokens)",
                                    path, header[1], kTokenFileVersion));
    }
    if (header[2] < 0) {
      throw ConfigError(
          fmt::format("token file '{}' has a negative token count {}", path, header[2]));
    }
    count_ = header[2];
    size_t expected = kHeaderBytes + static_cast<size_t>(count_) * 2;
    if (file_.size() != expected) {
      throw ConfigError(fmt::format(
          "token file '{}' is {} bytes but its header promises {} tokens ({} bytes); the file is "
          "truncated or has trailing data",
          path, file_.size(), count_, expected));
    }
    tokens_ = file_.data() + kHeaderBytes;
    for (int64_t i = 0; i < count_; ++i) {
      int id = token(i);
      if (id >= vocab_) {
        throw ConfigError(fmt::format("token file '{}': token {} at position {} is >= vocab {}",
                                      path, id, i, vocab_),
                          "raise model.vocab or re-tokenize the data");
      }
    }
  }

  int64_t size() const override { return count_; }
  int vocab() const override { return vocab_; }
  void read(int64_t begin, int64_t count, int32_t* out) const override {
    PTRAIN_CHECK(begin >= 0 && count >= 0 && begin + count <= count_, "read [{}, +{}) of {}", begin,
                 count, count_);
    for (int64_t i = 0; i < count; ++i) out[i] = token(begin + i);
  }
  std::string describe() const override { return fmt::format("token file '{}'", file_.path()); }

 private:
  int token(int64_t i) const {
    uint16_t t;
    std::memcpy(&t, tokens_ + 2 * i, 2);
    return t;
  }

  MappedFile file_;
  int vocab_;
  int64_t count_ = 0;
  const uint8_t* tokens_ = nullptr;
};

class TextFileStream final : public TokenStream {
 public:
  explicit TextFileStream(const std::string& path) : file_(path, "text file") {}
  int64_t size() const override { return static_cast<int64_t>(file_.size()); }
  int vocab() const override { return 256; }
  void read(int64_t begin, int64_t count, int32_t* out) const override {
    PTRAIN_CHECK(begin >= 0 && count >= 0 && begin + count <= size(), "read [{}, +{}) of {}", begin,
                 count, size());
    const uint8_t* p = file_.data() + begin;
    for (int64_t i = 0; i < count; ++i) out[i] = p[i];
  }
  std::string describe() const override { return fmt::format("text file '{}'", file_.path()); }

 private:
  MappedFile file_;
};

class SyntheticStream final : public TokenStream {
 public:
  explicit SyntheticStream(const SyntheticOptions& o) : options_(o) {
    if (o.vocab <= 0) throw ConfigError("synthetic data: vocab must be > 0");
    if (o.num_tokens <= 0) throw ConfigError("synthetic data: num_tokens must be > 0");
    if (o.successors <= 0) throw ConfigError("synthetic data: successors must be > 0");
    const int k = std::min(o.successors, o.vocab);
    detail::SplitMix rng(detail::splitmix64(o.seed ^ 0x5ca1ab1e0ddba11ull));
    // Chain: for each state, k distinct successors and their cumulative probabilities.
    std::vector<int32_t> next(static_cast<size_t>(o.vocab) * k);
    std::vector<double> cdf(static_cast<size_t>(o.vocab) * k);
    for (int s = 0; s < o.vocab; ++s) {
      int32_t* succ = &next[static_cast<size_t>(s) * k];
      double* c = &cdf[static_cast<size_t>(s) * k];
      for (int j = 0; j < k; ++j) {
        int32_t cand;
        bool dup;
        do {
          cand = static_cast<int32_t>(rng.below(static_cast<uint64_t>(o.vocab)));
          dup = std::find(succ, succ + j, cand) != succ + j;
        } while (dup);
        succ[j] = cand;
        c[j] = 0.5 + rng.uniform();  // weight in [0.5, 1.5): unequal but none negligible
      }
      double total = 0;
      for (int j = 0; j < k; ++j) total += c[j];
      double acc = 0;
      for (int j = 0; j < k; ++j) {
        acc += c[j] / total;
        c[j] = acc;
      }
      c[k - 1] = 1.0;
    }
    tokens_.resize(static_cast<size_t>(o.num_tokens));
    int32_t state = static_cast<int32_t>(rng.below(static_cast<uint64_t>(o.vocab)));
    for (auto& t : tokens_) {
      t = state;
      double u = rng.uniform();
      const double* c = &cdf[static_cast<size_t>(state) * k];
      int j = 0;
      while (j < k - 1 && u >= c[j]) ++j;
      state = next[static_cast<size_t>(state) * k + j];
    }
  }

  int64_t size() const override { return static_cast<int64_t>(tokens_.size()); }
  int vocab() const override { return options_.vocab; }
  void read(int64_t begin, int64_t count, int32_t* out) const override {
    PTRAIN_CHECK(begin >= 0 && count >= 0 && begin + count <= size(), "read [{}, +{}) of {}", begin,
                 count, size());
    std::copy_n(tokens_.data() + begin, count, out);
  }
  std::string describe() const override {
    return fmt::format("synthetic(vocab={}, seed={}, tokens={})", options_.vocab, options_.seed,
                       options_.num_tokens);
  }

 private:
  SyntheticOptions options_;
  std::vector<int32_t> tokens_;
};

}  // namespace

std::unique_ptr<TokenStream> open_token_file(const std::string& path, int vocab) {
  return std::make_unique<TokenFileStream>(path, vocab);
}

std::unique_ptr<TokenStream> open_text_file(const std::string& path) {
  return std::make_unique<TextFileStream>(path);
}

std::unique_ptr<TokenStream> make_synthetic(const SyntheticOptions& options) {
  return std::make_unique<SyntheticStream>(options);
}

void write_token_file(const std::string& path, const int32_t* tokens, int64_t count) {
  if (count < 0 || count > INT32_MAX) {
    throw ConfigError(fmt::format("token file '{}': count {} out of range", path, count));
  }
  std::vector<uint8_t> buf(kHeaderBytes + static_cast<size_t>(count) * 2);
  int32_t header[kTokenFileHeaderInts] = {};
  header[0] = kTokenFileMagic;
  header[1] = kTokenFileVersion;
  header[2] = static_cast<int32_t>(count);
  std::memcpy(buf.data(), header, kHeaderBytes);
  for (int64_t i = 0; i < count; ++i) {
    if (tokens[i] < 0 || tokens[i] > 0xFFFF) {
      throw ConfigError(fmt::format("token file '{}': token {} at position {} does not fit uint16",
                                    path, tokens[i], i));
    }
    uint16_t t = static_cast<uint16_t>(tokens[i]);
    std::memcpy(buf.data() + kHeaderBytes + 2 * i, &t, 2);
  }
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw IoError(fmt::format("cannot create token file '{}': {}", path, std::strerror(errno)));
  }
  size_t off = 0;
  while (off < buf.size()) {
    ssize_t n = ::write(fd, buf.data() + off, buf.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      throw IoError(fmt::format("cannot write token file '{}': {}", path, std::strerror(err)));
    }
    off += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    throw IoError(fmt::format("cannot close token file '{}': {}", path, std::strerror(errno)));
  }
}

}  // namespace ptrain::data
