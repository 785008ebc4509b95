// The error hierarchy users can cause, and the check macros for invariants and system calls.
// The CLI catches `ptrain::Error`, prints `what()` (and the hint) as one line, and exits with
// `exit_code()`. Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage,
// 3 timeout, 4 remote/peer failure; a failed worker's own status otherwise.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace ptrain {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitConfig = 2;
inline constexpr int kExitTimeout = 3;
inline constexpr int kExitRemote = 4;

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, std::string hint = {})
      : std::runtime_error(what), hint_(std::move(hint)) {}
  const std::string& hint() const { return hint_; }
  virtual int exit_code() const { return kExitFailure; }
  // "what; hint" as printed on the console.
  std::string message() const {
    return hint_.empty() ? what() : std::string(what()) + "; " + hint_;
  }

 private:
  std::string hint_;
};

// A bad spec, flag or argument. Message format for specs: "file:line:col: key.path: what".
class ConfigError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitConfig; }
};

// A file, socket or process operation failed.
class IoError : public Error {
 public:
  using Error::Error;
};

// A blocking call ran out of time.
class TimeoutError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitTimeout; }
};

// A peer, the coordinator or a remote host failed or refused.
class RemoteError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitRemote; }
};

// A broken invariant: a bug in ptrain, not the user's doing.
class InternalError : public Error {
 public:
  using Error::Error;
};

namespace detail {
[[noreturn]] void throw_check(const char* file, int line, const char* cond, const std::string& msg);
[[noreturn]] void throw_syscall(const char* file, int line, const char* call, int err);
}  // namespace detail

}  // namespace ptrain

// PTRAIN_CHECK(cond, "format {}", args...) throws InternalError "[file:line] check `cond` failed:
// ...".
#define PTRAIN_CHECK(cond, ...)                                                                \
  do {                                                                                         \
    if (!(cond)) [[unlikely]]                                                                  \
      ::ptrain::detail::throw_check(__FILE__, __LINE__, #cond, ::fmt::format("" __VA_ARGS__)); \
  } while (0)

// PTRAIN_SYSCALL(expr) evaluates a POSIX call; on -1 throws IoError naming the call and errno.
#define PTRAIN_SYSCALL(expr)                                             \
  ([&]() {                                                               \
    auto ptrain_rc_ = (expr);                                            \
    if (ptrain_rc_ == -1) [[unlikely]]                                   \
      ::ptrain::detail::throw_syscall(__FILE__, __LINE__, #expr, errno); \
    return ptrain_rc_;                                                   \
  }())
