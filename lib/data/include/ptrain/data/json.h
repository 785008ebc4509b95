// Strict JSON reading for the file formats in lib/data (safetensors headers, checkpoint
// manifests), on nlohmann::json. Strict: RFC 8259 only (no comments, no byte-order mark), and,
// beyond what nlohmann checks, duplicate keys and nesting deeper than kMaxJsonDepth are errors;
// every error says where (byte offset) and what.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

namespace ptrain::data {

inline constexpr int kMaxJsonDepth = 64;

// Objects keep their members in file order (messages name the first bad entry as written).
using Json = nlohmann::ordered_json;

// Parses exactly one JSON value surrounded by optional whitespace. On malformed input throws
// ConfigError "<origin>: invalid JSON at byte N: <what>".
Json parse_json(std::string_view text, std::string_view origin);

// The number as an exact int64: true only for an integer literal (no fraction or exponent) that
// fits, which nlohmann keeps as an integer; false for anything else (1.0, 1e3, 2^63, a string).
bool json_int64(const Json& value, int64_t* out);

// The member `key` of an object; nullptr when `value` is not an object or has no such member.
const Json* json_member(const Json& value, std::string_view key);

}  // namespace ptrain::data
