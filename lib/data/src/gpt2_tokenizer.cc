// GPT-2 byte-level BPE (tokenizer.h): the ptrain_gpt2 object library, with the built-in merges
// (gpt2_vocab.cc); it registers `gpt2` with make_tokenizer when a program links it.
#include "ptrain/data/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "gpt2_vocab.h"
#include "mapped_file.h"
#include "ptrain/core/error.h"
#include "tokenizer_registry.h"

namespace ptrain::data {
namespace {

// ---------------------------------------------------------------------------------------------
// GPT-2 byte-level BPE

// GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves, the other 68
// bytes for U+0100.. in byte order, so every token is a printable string in encoder.json.
std::array<char32_t, 256> byte_to_unicode() {
  std::array<char32_t, 256> map{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  int n = 0;
  for (int b = 0; b < 256; ++b) map[b] = direct[b] ? char32_t(b) : char32_t(256 + n++);
  return map;
}

// Decodes one UTF-8 code point at s[i] (advancing i); -1 when malformed.
int32_t next_code_point(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  int extra = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
  if (extra < 0 || i + size_t(extra) >= s.size()) return -1;
  if (extra == 0) return s[i++];
  int32_t cp = c & (0x3F >> extra);
  for (int k = 1; k <= extra; ++k) {
    auto d = static_cast<unsigned char>(s[i + size_t(k)]);
    if ((d >> 6) != 2) return -1;
    cp = (cp << 6) | (d & 0x3F);
  }
  i += size_t(extra) + 1;
  return cp;
}

// JavaScript's \s (the reference encoder is the npm gpt-3-encoder package, a JS regex with the
// u flag): PCRE2's own \s differs on U+0085 and U+FEFF, so the class is spelled out.
constexpr const char* kSpace =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}\\x{FEFF}";

std::string gpt2_pattern() {
  const std::string s = kSpace;
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  return "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" + s + "\\p{L}\\p{N}]+|[" + s +
         "]+(?![^" + s + "])|[" + s + "]+";
}

// The compiled pre-tokenization regex (UTF, Unicode properties, JIT), shared read-only.
class Pretokenizer {
 public:
  Pretokenizer() {
    std::string pattern = gpt2_pattern();
    int err = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      throw InternalError(fmt::format("the GPT-2 regex does not compile at {}: {}", offset,
                                      reinterpret_cast<const char*>(msg)));
    }
    // JIT is an optimisation: without it (a build without JIT support) the interpreter runs.
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  ~Pretokenizer() { pcre2_code_free(code_); }
  Pretokenizer(const Pretokenizer&) = delete;
  Pretokenizer& operator=(const Pretokenizer&) = delete;
  const pcre2_code* code() const { return code_; }

 private:
  pcre2_code* code_ = nullptr;
};

const Pretokenizer& pretokenizer() {
  static const Pretokenizer p;
  return p;
}

class Gpt2Tokenizer final : public Tokenizer {
 public:
  Gpt2Tokenizer(std::string_view encoder_json, std::string_view vocab_bpe,
                const std::string& encoder_name, const std::string& merges_name) {
    load_encoder(encoder_json, encoder_name);
    load_merges(vocab_bpe, merges_name);
    make_match_data();
  }
  // From the merges alone: GPT-2's encoder.json is exactly the 256 bytes (printable ones first,
  // each run in byte order), then each merge's result in rank order, then <|endoftext|>
  // (tokenizer_test checks this against the vendored encoder.json).
  Gpt2Tokenizer(std::string_view vocab_bpe, const std::string& merges_name) {
    std::array<bool, 256> direct{};
    for (int b = 0; b < 256; ++b) direct[size_t(b)] = byte_to_unicode()[size_t(b)] == char32_t(b);
    for (bool printable : {true, false})
      for (int b = 0; b < 256; ++b)
        if (direct[size_t(b)] == printable) add_token(std::string(1, static_cast<char>(b)));
    for (int b = 0; b < 256; ++b) byte_id_[size_t(b)] = ids_.at(std::string(1, char(b)));
    load_merges(vocab_bpe, merges_name, /*add_tokens=*/true);
    add_token("<|endoftext|>");
    make_match_data();
  }
  ~Gpt2Tokenizer() override { pcre2_match_data_free(match_); }

  std::string name() const override { return "gpt2"; }
  int vocab_size() const override { return static_cast<int>(tokens_.size()); }

  void encode(std::string_view text, std::vector<int32_t>& out) override {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      int rc = pcre2_match(pretokenizer().code(), subject, text.size(), pos, 0, match_, nullptr);
      size_t begin = text.size(), end = text.size();
      if (rc >= 0) {
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match_);
        begin = ov[0];
        end = ov[1];
      } else if (rc != PCRE2_ERROR_NOMATCH) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        throw InternalError(fmt::format("GPT-2 pre-tokenization failed at byte {}: {}", pos,
                                        reinterpret_cast<const char*>(msg)));
      }
      // Bytes no alternative matches (invalid UTF-8) form a piece of their own.
      if (begin > pos) bpe(text.substr(pos, begin - pos), out);
      if (end > begin) bpe(text.substr(begin, end - begin), out);
      PTRAIN_CHECK(end > pos || end == text.size(), "empty pre-token at {}", pos);
      pos = end;
    }
  }

  std::string decode(const int32_t* ids, size_t n) const override {
    std::string s;
    for (size_t i = 0; i < n; ++i) {
      if (ids[i] < 0 || ids[i] >= vocab_size())
        throw ConfigError(
            fmt::format("token {} at position {} is outside the GPT-2 vocabulary "
                        "(0..{})",
                        ids[i], i, vocab_size() - 1));
      s += tokens_[static_cast<size_t>(ids[i])];
    }
    return s;
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
  }

  void load_encoder(std::string_view text, const std::string& file) {
    auto j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object())
      throw ConfigError(fmt::format("GPT-2 vocabulary '{}' is not a JSON object", file),
                        "it must map token strings to ids (OpenAI's encoder.json)");
    std::array<char32_t, 256> b2u = byte_to_unicode();
    std::unordered_map<char32_t, int> u2b;
    for (int b = 0; b < 256; ++b) u2b[b2u[b]] = b;
    tokens_.assign(j.size(), std::string());
    std::vector<bool> seen(j.size(), false);
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& key = it.key();
      if (!it->is_number_integer())
        throw ConfigError(fmt::format(
            "GPT-2 vocabulary '{}': the id of token \"{}\" is not an integer", file, key));
      int64_t id = it->get<int64_t>();
      if (id < 0 || id >= static_cast<int64_t>(j.size()) || seen[size_t(id)])
        throw ConfigError(
            fmt::format("GPT-2 vocabulary '{}': token \"{}\" has id {}, which is out of range "
                        "or used twice (ids must be 0..{} once each)",
                        file, key, id, j.size() - 1));
      std::string bytes;
      for (size_t i = 0; i < key.size();) {
        int32_t cp = next_code_point(key, i);
        auto b = cp < 0 ? u2b.end() : u2b.find(char32_t(cp));
        if (b == u2b.end())
          throw ConfigError(
              fmt::format("GPT-2 vocabulary '{}': token \"{}\" (id {}) has a "
                          "character outside GPT-2's byte alphabet",
                          file, key, id));
        bytes.push_back(static_cast<char>(b->second));
      }
      if (bytes.empty())
        throw ConfigError(fmt::format("GPT-2 vocabulary '{}': id {} is an empty token", file, id));
      seen[size_t(id)] = true;
      ids_[bytes] = static_cast<int32_t>(id);
      tokens_[size_t(id)] = std::move(bytes);
    }
    for (int b = 0; b < 256; ++b) {
      auto it = ids_.find(std::string(1, static_cast<char>(b)));
      if (it == ids_.end())
        throw ConfigError(fmt::format("GPT-2 vocabulary '{}' has no token for byte {}", file, b),
                          "a byte-level BPE vocabulary holds all 256 bytes");
      byte_id_[size_t(b)] = it->second;
    }
  }

  void make_match_data() {
    match_ = pcre2_match_data_create_from_pattern(pretokenizer().code(), nullptr);
    PTRAIN_CHECK(match_ != nullptr, "pcre2_match_data_create_from_pattern");
  }

  void add_token(std::string bytes) {
    ids_[bytes] = static_cast<int32_t>(tokens_.size());
    tokens_.push_back(std::move(bytes));
  }

  void load_merges(std::string_view text, const std::string& file, bool add_tokens = false) {
    size_t line_no = 0, pos = 0;
    int32_t rank = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      std::string_view line = text.substr(pos, nl == std::string_view::npos ? nl : nl - pos);
      pos = nl == std::string_view::npos ? text.size() : nl + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty() || (line_no == 1 && line.starts_with("#version"))) continue;
      size_t sp = line.find(' ');
      if (sp == std::string_view::npos || sp == 0 || sp + 1 >= line.size() ||
          line.find(' ', sp + 1) != std::string_view::npos)
        throw ConfigError(fmt::format("GPT-2 merges '{}' line {}: expected two tokens separated "
                                      "by one space, got \"{}\"",
                                      file, line_no, line),
                          "use OpenAI's vocab.bpe");
      int32_t a = id_of_printable(line.substr(0, sp), file, line_no);
      int32_t b = id_of_printable(line.substr(sp + 1), file, line_no);
      std::string joined = tokens_[size_t(a)] + tokens_[size_t(b)];
      if (add_tokens && !ids_.count(joined)) add_token(joined);
      auto merged = ids_.find(joined);
      if (merged == ids_.end())
        throw ConfigError(fmt::format("GPT-2 merges '{}' line {}: \"{}\" merges into a token "
                                      "that is not in the vocabulary",
                                      file, line_no, line),
                          "encoder.json and vocab.bpe must come from the same model");
      merges_.emplace(pair_key(a, b), Merge{rank++, merged->second});
    }
    if (merges_.empty())
      throw ConfigError(fmt::format("GPT-2 merges '{}' holds no merges", file),
                        "use OpenAI's vocab.bpe (50,000 merges)");
  }

  // A merge-file token (printable GPT-2 characters) -> its id.
  int32_t id_of_printable(std::string_view s, const std::string& file, size_t line) const {
    static const std::array<char32_t, 256> b2u = byte_to_unicode();
    static const std::unordered_map<char32_t, int> u2b = [] {
      std::unordered_map<char32_t, int> m;
      for (int b = 0; b < 256; ++b) m[b2u[b]] = b;
      return m;
    }();
    std::string bytes;
    for (size_t i = 0; i < s.size();) {
      int32_t cp = next_code_point(s, i);
      auto it = cp < 0 ? u2b.end() : u2b.find(char32_t(cp));
      if (it == u2b.end())
        throw ConfigError(
            fmt::format("GPT-2 merges '{}' line {}: \"{}\" has a character outside "
                        "GPT-2's byte alphabet",
                        file, line, s));
      bytes.push_back(static_cast<char>(it->second));
    }
    auto it = ids_.find(bytes);
    if (it == ids_.end())
      throw ConfigError(
          fmt::format("GPT-2 merges '{}' line {}: \"{}\" is not in the vocabulary", file, line, s),
          "encoder.json and vocab.bpe must come from the same model");
    return it->second;
  }

  // BPE of one pre-token: start from its bytes, repeatedly merge the adjacent pair of lowest
  // rank (all its occurrences, left to right), as OpenAI's encoder does. A heap of candidate
  // pairs ordered by (rank, position) over a linked list of symbols keeps long pieces
  // O(n log n); results are cached per piece.
  void bpe(std::string_view piece, std::vector<int32_t>& out) {
    if (piece.size() == 1) {
      out.push_back(byte_id_[static_cast<unsigned char>(piece[0])]);
      return;
    }
    auto cached = cache_.find(std::string(piece));
    if (cached != cache_.end()) {
      out.insert(out.end(), cached->second.begin(), cached->second.end());
      return;
    }
    const int n = static_cast<int>(piece.size());
    syms_.resize(size_t(n));
    for (int i = 0; i < n; ++i)
      syms_[size_t(i)] = {byte_id_[static_cast<unsigned char>(piece[size_t(i)])], i - 1, i + 1};
    syms_[size_t(n - 1)].next = -1;
    heap_.clear();
    auto push = [&](int left) {
      int right = syms_[size_t(left)].next;
      if (left < 0 || right < 0) return;
      auto m = merges_.find(pair_key(syms_[size_t(left)].id, syms_[size_t(right)].id));
      if (m == merges_.end()) return;
      heap_.push_back(
          {m->second.rank, left, syms_[size_t(left)].id, syms_[size_t(right)].id, m->second.id});
      std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
    };
    for (int i = 0; i + 1 < n; ++i) push(i);
    while (!heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<>());
      Candidate c = heap_.back();
      heap_.pop_back();
      Sym& left = syms_[size_t(c.pos)];
      if (left.id != c.left || left.next < 0) continue;  // stale: left merged or dead
      Sym& right = syms_[size_t(left.next)];
      if (right.id != c.right) continue;
      left.id = c.merged;
      right.id = -1;  // dead
      left.next = right.next;
      if (right.next >= 0) syms_[size_t(right.next)].prev = c.pos;
      if (left.prev >= 0) push(left.prev);
      push(c.pos);
    }
    std::vector<int32_t> ids;
    for (int i = 0; i >= 0; i = syms_[size_t(i)].next) ids.push_back(syms_[size_t(i)].id);
    out.insert(out.end(), ids.begin(), ids.end());
    if (cache_.size() >= kMaxCache) cache_.clear();
    cache_.emplace(std::string(piece), std::move(ids));
  }

  struct Sym {
    int32_t id;
    int prev, next;
  };
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t left, right, merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  static constexpr size_t kMaxCache = 1 << 20;

  std::vector<std::string> tokens_;               // id -> bytes
  std::unordered_map<std::string, int32_t> ids_;  // bytes -> id
  std::unordered_map<uint64_t, Merge> merges_;    // (left id, right id) -> rank, merged id
  std::array<int32_t, 256> byte_id_{};            // byte -> its single-byte token
  std::unordered_map<std::string, std::vector<int32_t>> cache_;  // piece -> ids
  std::vector<Sym> syms_;
  std::vector<Candidate> heap_;
  pcre2_match_data* match_ = nullptr;
};

std::string_view& builtin_merges_gz() {
  static std::string_view v;
  return v;
}

// gunzip (zlib with the gzip wrapper).
std::string gunzip(std::string_view gz, const char* what) {
  z_stream z{};
  PTRAIN_CHECK(inflateInit2(&z, 16 + MAX_WBITS) == Z_OK, "inflateInit2");
  std::string out;
  char buf[1 << 16];
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
  z.avail_in = static_cast<uInt>(gz.size());
  int rc = Z_OK;
  while (rc == Z_OK) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof(buf);
    rc = inflate(&z, Z_NO_FLUSH);
    out.append(buf, sizeof(buf) - z.avail_out);
  }
  inflateEnd(&z);
  PTRAIN_CHECK(rc == Z_STREAM_END, "{} does not inflate (zlib {})", what, rc);
  return out;
}

std::string read_vocab_file(const std::string& path, const char* what) {
  MappedFile f(path, what);
  return std::string(reinterpret_cast<const char*>(f.data()), f.size());
}

}  // namespace

void detail::register_builtin_gpt2_merges(std::string_view vocab_bpe_gz) {
  builtin_merges_gz() = vocab_bpe_gz;
}

static std::unique_ptr<Tokenizer> builtin_gpt2_tokenizer() {
  std::string_view gz = builtin_merges_gz();
  if (gz.empty())
    throw ConfigError("this program has no built-in GPT-2 vocabulary",
                      "set PTRAIN_GPT2_VOCAB to a folder with encoder.json and vocab.bpe");
  return std::make_unique<Gpt2Tokenizer>(gunzip(gz, "the built-in vocab.bpe.gz"),
                                         "built-in vocab.bpe");
}

std::unique_ptr<Tokenizer> make_gpt2_tokenizer(std::string_view encoder_json,
                                               std::string_view vocab_bpe,
                                               const std::string& encoder_name,
                                               const std::string& merges_name) {
  return std::make_unique<Gpt2Tokenizer>(encoder_json, vocab_bpe, encoder_name, merges_name);
}

std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::string& encoder_json_path,
                                               const std::string& vocab_bpe_path) {
  std::string enc = read_vocab_file(encoder_json_path, "GPT-2 vocabulary (encoder.json)");
  std::string bpe = read_vocab_file(vocab_bpe_path, "GPT-2 merges (vocab.bpe)");
  return make_gpt2_tokenizer(enc, bpe, encoder_json_path, vocab_bpe_path);
}

// `gpt2` for make_tokenizer: the files in $PTRAIN_GPT2_VOCAB, else the built-in merges.
[[maybe_unused]] static const bool registered = [] {
  detail::register_tokenizer("gpt2", [] {
    const char* dir = std::getenv("PTRAIN_GPT2_VOCAB");
    if (dir && *dir)
      return load_gpt2_tokenizer(std::string(dir) + "/encoder.json",
                                 std::string(dir) + "/vocab.bpe");
    return builtin_gpt2_tokenizer();
  });
  return true;
}();

}  // namespace ptrain::data
