// CRC-32C (Castagnoli), as TFRecord and TensorBoard event files use it, and the "masked" form
// those files store: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ptrain {

uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
inline uint32_t masked_crc32c(const void* data, size_t size) {
  uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

}  // namespace ptrain
