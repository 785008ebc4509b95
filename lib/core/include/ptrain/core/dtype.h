// The element types of the whole code base: tensors, collectives and safetensors files all use
// this one enum (tensor::DType, comm::DType and data::DType are aliases of it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ptrain {

// bf16 is stored as uint16_t (the upper half of an fp32); kernels compute in f32.
enum class DType : uint8_t { kF32, kBF16, kI32, kI64, kU8 };

size_t dtype_size(DType dtype);            // bytes per element: 4, 2, 4, 8, 1
std::string_view dtype_name(DType dtype);  // "f32", "bf16", "i32", "i64", "u8"

// The spelling of the safetensors format: "F32", "BF16", "I32", "I64", "U8".
std::string_view safetensors_dtype_name(DType dtype);
// The DType for a safetensors spelling; nullopt for any other text (case matters).
std::optional<DType> parse_safetensors_dtype(std::string_view name);

}  // namespace ptrain
