// A small strict JSON reader and writer helpers for the file formats in lib/data (safetensors
// headers, checkpoint manifests). Strict: RFC 8259 only, duplicate keys and nesting deeper than
// kMaxJsonDepth are errors, and every error says where (byte offset) and what.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace ptrain::data {

inline constexpr int kMaxJsonDepth = 64;

class JsonValue {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<JsonValue>;
  // Insertion order kept (formats here care about it for error messages, not semantics).
  using Object = std::vector<std::pair<std::string, JsonValue>>;

  JsonValue() = default;
  static JsonValue boolean(bool b);
  static JsonValue number(std::string literal);  // the literal as written, e.g. "-12", "1.5e3"
  static JsonValue string(std::string s);
  static JsonValue array(Array a);
  static JsonValue object(Object o);

  Kind kind() const { return kind_; }
  bool is_object() const { return kind_ == Kind::kObject; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_number() const { return kind_ == Kind::kNumber; }

  bool as_bool() const { return bool_; }
  const std::string& as_string() const { return text_; }  // string value or number literal
  const Array& as_array() const { return *array_; }
  const Object& as_object() const { return *object_; }
  // The number as an exact integer: nullopt-like failure reported through `ok`.
  // Succeeds only for literals without fraction or exponent that fit in int64.
  bool to_int64(int64_t* out) const;
  // nullptr when this is not an object or has no such key.
  const JsonValue* find(std::string_view key) const;

 private:
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  std::string text_;
  std::shared_ptr<Array> array_;
  std::shared_ptr<Object> object_;
};

// Parses exactly one JSON value surrounded by optional whitespace. On malformed input throws
// ConfigError "<origin>: invalid JSON at byte N: <what>".
JsonValue parse_json(std::string_view text, std::string_view origin);

// `s` as a quoted JSON string literal with the required escapes (UTF-8 passes through).
std::string json_quote(std::string_view s);

}  // namespace ptrain::data
