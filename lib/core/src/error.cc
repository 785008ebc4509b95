#include "ptrain/core/error.h"

#include <cstring>

namespace ptrain::detail {

static const char* basename_of(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

void throw_check(const char* file, int line, const char* cond, const std::string& msg) {
  throw InternalError(fmt::format("[{}:{}] check `{}` failed{}{}", basename_of(file), line, cond,
                                  msg.empty() ? "" : ": ", msg));
}

void throw_syscall(const char* file, int line, const char* call, int err) {
  throw IoError(
      fmt::format("[{}:{}] {} failed: {}", basename_of(file), line, call, std::strerror(err)));
}

}  // namespace ptrain::detail
