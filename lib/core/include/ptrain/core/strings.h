// Small string helpers shared by every module that writes JSON or messages.
#pragma once

#include <string>
#include <string_view>

namespace ptrain {

// `s` as a quoted JSON string literal (nlohmann::json's escaping): ", \ and control characters
// escaped, UTF-8 passed through, and any byte sequence that is not UTF-8 replaced by U+FFFD so
// that the result is always valid JSON.
std::string json_quote(std::string_view s);

// `s` safe to print on one line of a terminal: control characters written as \n, \r, \t or
// \xNN (ESC is \x1b), so a value can neither forge a second line nor reach the terminal; and
// every run between backticks (an echoed value: "got `...`") cut to `max_quoted` characters.
std::string printable(std::string_view s, size_t max_quoted = 200);

}  // namespace ptrain
