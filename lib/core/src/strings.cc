#include "ptrain/core/strings.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

namespace ptrain {

std::string json_quote(std::string_view s) {
  // `replace`: a byte that is not UTF-8 becomes U+FFFD instead of an exception, so a stray byte
  // in a log line or a reason never stops a file from being written.
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string printable(std::string_view s, size_t max_quoted) {
  std::string out;
  out.reserve(s.size());
  bool quoted = false;
  size_t run = 0;  // characters of the current backtick run written so far
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '`') {
      quoted = !quoted;
      run = 0;
      out += '`';
      continue;
    }
    if (quoted && ++run > max_quoted) {
      size_t close = s.find('`', i);
      size_t end = close == std::string_view::npos ? s.size() : close;
      out += fmt::format("...({} more bytes)", end - i);
      i = end - 1;
      continue;
    }
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f)
          out += fmt::format("\\x{:02x}", c);
        else
          out += static_cast<char>(c);
    }
  }
  return out;
}

}  // namespace ptrain
