// Environment parameters: typed reads of environment variables with defaults.
#pragma once

#include <optional>
#include <string>

namespace ptrain {

std::optional<std::string> env_get(const char* name);
std::string env_or(const char* name, const std::string& fallback);
// Throws ConfigError naming the variable when it is set but not an integer.
long env_int(const char* name, long fallback);

}  // namespace ptrain
