// parse_json: nlohmann's parser with a callback that rejects duplicate keys and deep nesting,
// reading through an iterator that remembers the last byte it handed out, so that those errors
// carry a byte offset like nlohmann's own.
#include "ptrain/data/json.h"

#include <fmt/format.h>

#include <iterator>
#include <string>
#include <unordered_set>
#include <vector>

#include "ptrain/core/error.h"

namespace ptrain::data {
namespace {

// A pointer into the text that records the last byte nlohmann's lexer read.
class TrackingIterator {
 public:
  using iterator_category = std::forward_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  TrackingIterator(const char* p, const char** last_read) : p_(p), last_read_(last_read) {}
  reference operator*() const {
    *last_read_ = p_;
    return *p_;
  }
  TrackingIterator& operator++() {
    ++p_;
    return *this;
  }
  TrackingIterator operator++(int) {
    TrackingIterator old = *this;
    ++p_;
    return old;
  }
  bool operator==(const TrackingIterator& other) const { return p_ == other.p_; }

 private:
  const char* p_;
  const char** last_read_;
};

// The byte offset of the opening quote of the string whose closing quote is at `close`: the
// nearest earlier quote not escaped by an odd run of backslashes.
size_t opening_quote(std::string_view text, size_t close) {
  for (size_t i = close; i-- > 0;) {
    if (text[i] != '"') continue;
    size_t backslashes = 0;
    while (backslashes < i && text[i - 1 - backslashes] == '\\') ++backslashes;
    if (backslashes % 2 == 0) return i;
  }
  return 0;
}

// `token` as it may appear in a message: at most 32 bytes, non-printable bytes as \xNN.
std::string printable(std::string_view token) {
  constexpr size_t kMax = 32;
  std::string out;
  for (size_t i = 0; i < token.size() && i < kMax; ++i) {
    auto u = static_cast<unsigned char>(token[i]);
    if (u >= 0x20 && u < 0x7f) {
      out += token[i];
    } else {
      out += fmt::format("\\x{:02x}", u);
    }
  }
  if (token.size() > kMax) out += "...";
  return out;
}

// nlohmann's message without its "[json.exception.parse_error.101] parse error at line 1,
// column 4: " prefix, and with the lexer's "last read: '<token>'" (which can be the whole rest
// of a 100 MB header, and raw bytes) shortened to something printable.
std::string describe(const std::string& what) {
  std::string_view s = what;
  if (size_t p = s.find("] "); s.starts_with("[json.exception.") && p != s.npos) {
    s.remove_prefix(p + 2);
  }
  if (s.starts_with("parse error")) {
    if (size_t p = s.find(": "); p != s.npos) s.remove_prefix(p + 2);
  }
  constexpr std::string_view kLastRead = "; last read: '";
  size_t begin = s.find(kLastRead);
  if (begin == s.npos) return std::string(s);
  size_t token = begin + kLastRead.size();
  size_t end = s.rfind("'; expected ");
  if (end == s.npos || end < token) end = s.rfind('\'');
  if (end == s.npos || end < token) return std::string(s.substr(0, begin));
  return std::string(s.substr(0, token)) + printable(s.substr(token, end - token)) +
         std::string(s.substr(end));
}

}  // namespace

Json parse_json(std::string_view text, std::string_view origin) {
  auto fail = [&](size_t byte, const std::string& what) {
    throw ConfigError(fmt::format("{}: invalid JSON at byte {}: {}", origin, byte, what));
  };
  // nlohmann skips a UTF-8 byte-order mark; RFC 8259 forbids sending one.
  if (text.starts_with("\xEF\xBB\xBF")) fail(0, "a byte-order mark is not allowed");

  const char* last_read = text.data();
  auto offset_of_last_read = [&] { return static_cast<size_t>(last_read - text.data()); };
  // The keys of each object being read, innermost last.
  std::vector<std::unordered_set<std::string>> keys;
  auto check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        keys.emplace_back();
        [[fallthrough]];
      case Json::parse_event_t::array_start:
      case Json::parse_event_t::value:
        if (depth > kMaxJsonDepth) {
          fail(offset_of_last_read(), fmt::format("nesting deeper than {}", kMaxJsonDepth));
        }
        break;
      case Json::parse_event_t::key: {
        auto& key = parsed.get_ref<const std::string&>();
        if (!keys.back().insert(key).second) {
          fail(opening_quote(text, offset_of_last_read()),
               fmt::format("duplicate key \"{}\"", printable(key)));
        }
        break;
      }
      case Json::parse_event_t::object_end:
        keys.pop_back();
        break;
      case Json::parse_event_t::array_end:
        break;
    }
    return true;
  };

  try {
    return Json::parse(TrackingIterator(text.data(), &last_read),
                       TrackingIterator(text.data() + text.size(), &last_read), check,
                       /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const Json::parse_error& e) {
    // e.byte counts the bytes read, the failing one (or the end of input) included.
    fail(e.byte > 0 ? e.byte - 1 : 0, describe(e.what()));
  } catch (const Json::exception& e) {  // e.g. out_of_range.406: a number too large for double
    fail(offset_of_last_read(), describe(e.what()));
  }
  return Json();  // not reached: fail() throws
}

bool json_int64(const Json& value, int64_t* out) {
  if (value.is_number_unsigned()) {
    auto u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (value.is_number_integer()) {
    *out = value.get<int64_t>();
    return true;
  }
  return false;
}

const Json* json_member(const Json& value, std::string_view key) {
  if (!value.is_object()) return nullptr;
  auto it = value.find(key);
  return it == value.end() ? nullptr : &*it;
}

}  // namespace ptrain::data
