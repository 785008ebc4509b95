// Small JSON helpers for the launcher's own files (summary.json) and for reading the flat metric
// objects workers report (one level, numbers and strings): no general parser is needed here.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ptrain::launch {

// "text" with quotes, backslashes and control characters escaped.
std::string json_quote(const std::string& text);

// The value of a top-level numeric field of a flat JSON object; nullopt when absent or not a
// number.
std::optional<double> json_number(const std::string& object, const std::string& key);

// Builds one flat object: {"k": v, ...}; values are inserted verbatim (quote strings yourself).
class JsonObject {
 public:
  JsonObject& raw(const std::string& key, const std::string& json_value);
  JsonObject& str(const std::string& key, const std::string& value);
  JsonObject& num(const std::string& key, double value);
  JsonObject& integer(const std::string& key, long long value);
  std::string dump() const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

}  // namespace ptrain::launch
