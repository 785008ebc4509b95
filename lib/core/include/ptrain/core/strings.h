// Small string helpers shared by every module that writes JSON or messages.
#pragma once

#include <string>
#include <string_view>

namespace ptrain {

// `s` as a quoted JSON string literal: ", \ and control characters escaped; other bytes
// (UTF-8 included) pass through.
std::string json_quote(std::string_view s);

}  // namespace ptrain
