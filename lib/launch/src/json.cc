#include "ptrain/launch/json.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>

#include "ptrain/core/strings.h"

namespace ptrain::launch {

std::string json_quote(const std::string& text) {
  return ::ptrain::json_quote(text);
}

std::optional<double> json_number(const std::string& object, const std::string& key) {
  std::string needle = json_quote(key);
  size_t pos = 0;
  int depth = 0;
  bool in_string = false;
  // Scan so that only top-level keys match, not the same text inside a string or nested object.
  for (size_t i = 0; i < object.size(); ++i) {
    char c = object[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '{' || c == '[')
      ++depth;
    else if (c == '}' || c == ']')
      --depth;
    else if (c == '"') {
      if (depth == 1 && object.compare(i, needle.size(), needle) == 0) {
        pos = i + needle.size();
        while (pos < object.size() && (object[pos] == ' ' || object[pos] == ':')) ++pos;
        const char* begin = object.c_str() + pos;
        char* end = nullptr;
        double v = std::strtod(begin, &end);
        if (end == begin) return std::nullopt;
        return v;
      }
      in_string = true;
    }
  }
  return std::nullopt;
}

JsonObject& JsonObject::raw(const std::string& key, const std::string& json_value) {
  fields_.emplace_back(key, json_value);
  return *this;
}
JsonObject& JsonObject::str(const std::string& key, const std::string& value) {
  return raw(key, json_quote(value));
}
JsonObject& JsonObject::num(const std::string& key, double value) {
  return raw(key, std::isfinite(value) ? fmt::format("{}", value) : "null");
}
JsonObject& JsonObject::integer(const std::string& key, long long value) {
  return raw(key, std::to_string(value));
}

std::string JsonObject::dump() const {
  std::string out = "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    if (i) out += ", ";
    out += json_quote(fields_[i].first) + ": " + fields_[i].second;
  }
  return out + "}";
}

}  // namespace ptrain::launch
