#include "ptrain/core/strings.h"

#include <nlohmann/json.hpp>

namespace ptrain {

std::string json_quote(std::string_view s) {
  // `replace`: a byte that is not UTF-8 becomes U+FFFD instead of an exception, so a stray byte
  // in a log line or a reason never stops a file from being written.
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace ptrain
