#include "ptrain/core/host_memory.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>

namespace ptrain {

static size_t mapped_bytes(size_t bytes) {
  return (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
}

void* host_allocate(size_t bytes) {
  if (bytes < kHugePageBytes) {
    void* p = std::malloc(bytes == 0 ? 1 : bytes);
    if (!p) throw std::bad_alloc();
    return p;
  }
  // Over-map by one huge page so the buffer can start on a 2 MiB boundary (a huge page needs an
  // aligned virtual range), then give back what lies outside it.
  const size_t len = mapped_bytes(bytes);
  void* raw = ::mmap(nullptr, len + kHugePageBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePageBytes - 1) & ~(uintptr_t(kHugePageBytes) - 1);
  if (aligned > start) ::munmap(raw, aligned - start);
  const uintptr_t end = start + len + kHugePageBytes;
  if (end > aligned + len) ::munmap(reinterpret_cast<void*>(aligned + len), end - aligned - len);
#ifdef MADV_HUGEPAGE
  ::madvise(reinterpret_cast<void*>(aligned), len, MADV_HUGEPAGE);  // advice: failure is harmless
#endif
  return reinterpret_cast<void*>(aligned);
}

void host_free(void* p, size_t bytes) noexcept {
  if (!p) return;
  if (bytes < kHugePageBytes) {
    std::free(p);
    return;
  }
  ::munmap(p, mapped_bytes(bytes));
}

}  // namespace ptrain
