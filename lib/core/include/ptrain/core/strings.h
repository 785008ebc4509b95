// Small string helpers shared by every module that writes JSON or messages.
#pragma once

#include <string>
#include <string_view>

namespace ptrain {

// `s` as a quoted JSON string literal (nlohmann::json's escaping): ", \ and control characters
// escaped, UTF-8 passed through, and any byte sequence that is not UTF-8 replaced by U+FFFD so
// that the result is always valid JSON.
std::string json_quote(std::string_view s);

}  // namespace ptrain
