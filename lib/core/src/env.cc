#include "ptrain/core/env.h"

#include <charconv>
#include <cstdlib>
#include <cstring>

#include "ptrain/core/error.h"

namespace ptrain {

std::optional<std::string> env_get(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return std::nullopt;
  return std::string(v);
}

std::string env_or(const char* name, const std::string& fallback) {
  auto v = env_get(name);
  return v ? *v : fallback;
}

long env_int(const char* name, long fallback) {
  auto v = env_get(name);
  if (!v || v->empty()) return fallback;
  long out = 0;
  auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc() || ptr != v->data() + v->size())
    throw ConfigError(fmt::format("environment variable {}='{}' is not an integer", name, *v));
  return out;
}

}  // namespace ptrain
