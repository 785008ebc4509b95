// Large host buffers on transparent huge pages. Memory the process has not touched yet costs a
// page fault and a cleared page per 4 KiB on first write; a copy of the training state into new
// buffers (a checkpoint's snapshot, hundreds of MB to GB) spends most of its time there. Buffers of
// 2 MiB and more are mapped separately and advised onto 2 MiB pages (a fault per 2 MiB),
// smaller ones come from malloc.
//
//   HostVector<float> snapshot(flat, flat + n);  // one pass, no zero-fill before the copy
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace ptrain {

inline constexpr size_t kHugePageBytes = size_t(2) << 20;

// Bytes from mmap (+ MADV_HUGEPAGE where the kernel has it) at or above kHugePageBytes, else from
// malloc. Throws std::bad_alloc when there is no memory.
void* host_allocate(size_t bytes);
void host_free(void* p, size_t bytes) noexcept;

template <class T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <class U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n > size_t(-1) / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(host_allocate(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept { host_free(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const HugePageAllocator<U>&) const noexcept {
    return true;
  }
};

template <class T>
using HostVector = std::vector<T, HugePageAllocator<T>>;

}  // namespace ptrain
