// Tensor: a shaped, typed, contiguous view into a device allocation owned through the op table.
// Views share their parent's storage, so a model keeps all parameters in one buffer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/core/dtype.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::tensor {

// The one DType of ptrain/core/dtype.h. bf16 is storage only (for checkpoints and mixed
// precision); kernels compute in f32.
using ptrain::DType;
using ptrain::dtype_name;
using ptrain::dtype_size;

const char* device_name(Device device);

// Round-to-nearest-even conversion (NaN stays NaN).
uint16_t float_to_bf16(float x);
float bf16_to_float(uint16_t x);

// The allocation behind tensors: freed through the op table that made it.
class Storage {
 public:
  Storage(Device device, size_t bytes);  // zero-filled, 64-byte aligned
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return ops_->device; }

 private:
  const Ops* ops_;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class Tensor {
 public:
  Tensor() = default;

  // A new zero-filled allocation of the given shape.
  static Tensor zeros(std::vector<int64_t> shape, DType dtype = DType::kF32,
                      Device device = Device::kCpu);

  bool defined() const { return storage_ != nullptr; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::kCpu; }
  std::string shape_str() const;  // "[2, 3]"

  void* raw_data() const;
  // Typed pointer; checks that T matches the dtype (float: f32, int32_t: i32, uint16_t: bf16).
  template <class T>
  T* data() const;

  // A tensor of `shape` starting `offset` elements into this one, sharing its storage.
  Tensor view(int64_t offset, std::vector<int64_t> shape) const;
  // The same elements under another shape of equal numel.
  Tensor reshape(std::vector<int64_t> shape) const { return view(0, std::move(shape)); }

  void zero();  // all bytes 0
  // Host copies (work for any device).
  void copy_from_host(const void* src, size_t bytes);
  void copy_to_host(void* dst, size_t bytes) const;

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_bytes_ = 0;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
};

template <>
float* Tensor::data<float>() const;
template <>
int32_t* Tensor::data<int32_t>() const;
template <>
uint16_t* Tensor::data<uint16_t>() const;

int64_t shape_numel(const std::vector<int64_t>& shape);

}  // namespace ptrain::tensor
