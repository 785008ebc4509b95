#include "ptrain/rendezvous/token.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>

#include "ptrain/core/error.h"

namespace ptrain::rendezvous {

std::string make_token() {
  unsigned char bytes[32];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n == -1 && errno == EINTR) continue;
    PTRAIN_SYSCALL(n);
    got += static_cast<size_t>(n);
  }
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(2 * sizeof(bytes));
  for (unsigned char b : bytes) {
    out.push_back(hex[b >> 4]);
    out.push_back(hex[b & 15]);
  }
  return out;
}

bool token_equal(std::string_view a, std::string_view b) {
  // Walk the longer length whatever the inputs, so timing reveals neither content nor prefix.
  size_t n = a.size() > b.size() ? a.size() : b.size();
  volatile uint8_t diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    uint8_t x = i < a.size() ? static_cast<uint8_t>(a[i]) : 0;
    uint8_t y = i < b.size() ? static_cast<uint8_t>(b[i]) : 0;
    diff = diff | (x ^ y);
  }
  return diff == 0;
}

}  // namespace ptrain::rendezvous
