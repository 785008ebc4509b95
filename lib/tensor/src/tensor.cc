// Tensor and Storage: allocation through the op table, views, bf16 conversion.
#include "ptrain/tensor/tensor.h"

#include <cstring>

#include "ptrain/core/error.h"

namespace ptrain::tensor {

const char* device_name(Device device) {
  return device == Device::kCpu ? "cpu" : "cuda";
}

uint16_t float_to_bf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // keep NaN a (quiet) NaN
  }
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float bf16_to_float(uint16_t x) {
  uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    PTRAIN_CHECK(d >= 0, "negative dimension {}", d);
    n *= d;
  }
  return n;
}

Storage::Storage(Device device, size_t bytes) : ops_(&ops(device)), bytes_(bytes) {
  ptr_ = ops_->alloc(bytes == 0 ? 64 : bytes);
}

Storage::~Storage() {
  if (ptr_) ops_->free(ptr_);
}

Tensor Tensor::zeros(std::vector<int64_t> shape, DType dtype, Device device) {
  Tensor t;
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(device, t.nbytes());
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  PTRAIN_CHECK(i >= 0 && i < n, "dim {} out of range for shape {}", i, shape_str());
  return shape_[i];
}

std::string Tensor::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape_.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape_[i]);
  }
  return s + "]";
}

void* Tensor::raw_data() const {
  PTRAIN_CHECK(storage_ != nullptr, "data of an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_bytes_;
}

template <>
float* Tensor::data<float>() const {
  PTRAIN_CHECK(dtype_ == DType::kF32, "tensor is {}, not f32", dtype_name(dtype_));
  return static_cast<float*>(raw_data());
}
template <>
int32_t* Tensor::data<int32_t>() const {
  PTRAIN_CHECK(dtype_ == DType::kI32, "tensor is {}, not i32", dtype_name(dtype_));
  return static_cast<int32_t*>(raw_data());
}
template <>
uint16_t* Tensor::data<uint16_t>() const {
  PTRAIN_CHECK(dtype_ == DType::kBF16, "tensor is {}, not bf16", dtype_name(dtype_));
  return static_cast<uint16_t*>(raw_data());
}

Tensor Tensor::view(int64_t offset, std::vector<int64_t> shape) const {
  PTRAIN_CHECK(defined(), "view of an undefined tensor");
  int64_t n = shape_numel(shape);
  PTRAIN_CHECK(offset >= 0 && offset + n <= numel_, "view [{}, {}) outside a tensor of {} elements",
               offset, offset + n, numel_);
  Tensor t = *this;
  t.offset_bytes_ = offset_bytes_ + static_cast<size_t>(offset) * dtype_size(dtype_);
  t.shape_ = std::move(shape);
  t.numel_ = n;
  return t;
}

void Tensor::zero() {
  if (!defined() || numel_ == 0) return;
  const Ops& o = ops(device());
  if (dtype_ == DType::kF32) {
    o.fill(data<float>(), 0.0f, static_cast<size_t>(numel_));
  } else {
    std::vector<char> zeros(nbytes(), 0);
    o.copy_from_host(raw_data(), zeros.data(), zeros.size());
  }
}

void Tensor::copy_from_host(const void* src, size_t bytes) {
  PTRAIN_CHECK(bytes <= nbytes(), "copy of {} bytes into a tensor of {}", bytes, nbytes());
  if (bytes) ops(device()).copy_from_host(raw_data(), src, bytes);
}

void Tensor::copy_to_host(void* dst, size_t bytes) const {
  PTRAIN_CHECK(bytes <= nbytes(), "copy of {} bytes out of a tensor of {}", bytes, nbytes());
  if (bytes) ops(device()).copy_to_host(dst, raw_data(), bytes);
}

}  // namespace ptrain::tensor
