// The safetensors file format (Hugging Face): an 8-byte little-endian header length N, N bytes of
// JSON header {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [b, e]}, ...}
// padded with spaces to a multiple of 8, then the little-endian tensor bytes (offsets relative to
// the end of the header). The reader validates everything before handing out a pointer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ptrain/core/dtype.h"

namespace ptrain::data {

// The one DType of ptrain/core/dtype.h; files spell it safetensors_dtype_name() ("F32", ...).
using ptrain::DType;
using ptrain::dtype_size;

// Upper bound on the JSON header, as in the reference implementation (100 MB).
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

// A tensor to write: the bytes are borrowed and must stay valid until write()/serialize().
struct TensorRef {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // product(shape) * dtype_size(dtype) bytes, host memory
};

class SafetensorsWriter {
 public:
  // Throws ConfigError on an empty or duplicate name, the name "__metadata__", or negative dims.
  void add(TensorRef tensor);
  void add(std::string name, const float* data, std::vector<int64_t> shape);
  void set_metadata(std::string key, std::string value);

  // The header JSON (padded), tensors in the order they were added, data in the same order.
  std::string header() const;
  // Whole file in memory (small files and tests).
  std::string serialize() const;
  // Writes to an open file descriptor in large writes (small tensors are gathered in a buffer,
  // large ones go straight from their memory); returns the bytes written and, when `xxh3` is not
  // null, the XXH3-64 hash of them. Throws IoError (with `path` in the message) on failure.
  uint64_t write_fd(int fd, const std::string& path, uint64_t* xxh3 = nullptr) const;

 private:
  std::vector<TensorRef> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor of an open file.
struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Memory-maps and validates `path`. Throws ConfigError "safetensors file 'path': what" for a
  // malformed file (never reads out of bounds), IoError/ConfigError when it cannot be opened.
  static SafetensorsFile open(const std::string& path);
  // Validates an in-memory image (copied); `origin` names it in messages.
  static SafetensorsFile parse(std::string_view bytes, std::string origin);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in header order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(std::string_view name) const;  // nullptr if absent
  // The tensor's bytes (unaligned: copy before use as float*).
  const uint8_t* bytes(const TensorInfo& info) const { return data_ + info.begin; }
  // Copies an F32 tensor into `out` (numel floats); ConfigError on a missing name or a dtype
  // other than F32 (BF16 is widened).
  void read_f32(std::string_view name, float* out) const;
  // As read_f32, and integer tensors (I64, I32, U8) are converted too: for buffers that the
  // ecosystem stores as integers (BatchNorm's num_batches_tracked is I64 in PyTorch).
  void read_as_f32(std::string_view name, float* out) const;
  const std::string& origin() const { return origin_; }

 private:
  SafetensorsFile() = default;
  void validate(const uint8_t* file, size_t size);

  struct Storage;
  std::unique_ptr<Storage> storage_;
  std::string origin_;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// XXH3 64-bit (seed 0) of a whole buffer: the checksum of new checkpoint files.
uint64_t xxh3_64(const void* data, size_t n);

// FNV-1a 64-bit: continues from `hash` (start with kFnv1aOffset). The checksum of checkpoints
// written before XXH3; still read.
inline constexpr uint64_t kFnv1aOffset = 0xcbf29ce484222325ull;
uint64_t fnv1a64(const void* data, size_t n, uint64_t hash = kFnv1aOffset);

}  // namespace ptrain::data
