// One table of element types; every dtype helper reads it.
#include "ptrain/core/dtype.h"

#include <array>

#include "ptrain/core/error.h"

namespace ptrain {
namespace {

struct DTypeInfo {
  DType dtype;
  size_t size;
  std::string_view name;
  std::string_view safetensors_name;
};

constexpr std::array<DTypeInfo, 5> kDTypes = {{
    {DType::kF32, 4, "f32", "F32"},
    {DType::kBF16, 2, "bf16", "BF16"},
    {DType::kI32, 4, "i32", "I32"},
    {DType::kI64, 8, "i64", "I64"},
    {DType::kU8, 1, "u8", "U8"},
}};

constexpr bool table_in_enum_order() {
  for (size_t i = 0; i < kDTypes.size(); ++i)
    if (static_cast<size_t>(kDTypes[i].dtype) != i) return false;
  return true;
}
static_assert(table_in_enum_order(), "kDTypes is indexed by DType");

// nullptr for a value outside the enum (a corrupt byte, a cast from a peer's message).
const DTypeInfo* find(DType dtype) {
  auto i = static_cast<size_t>(dtype);
  return i < kDTypes.size() ? &kDTypes[i] : nullptr;
}

}  // namespace

size_t dtype_size(DType dtype) {
  const DTypeInfo* d = find(dtype);
  PTRAIN_CHECK(d != nullptr, "unknown dtype {}", static_cast<int>(dtype));
  return d->size;
}

// Names are for messages, so an unknown value prints as "?" rather than throwing in the middle
// of reporting another error.
std::string_view dtype_name(DType dtype) {
  const DTypeInfo* d = find(dtype);
  return d ? d->name : "?";
}

std::string_view safetensors_dtype_name(DType dtype) {
  const DTypeInfo* d = find(dtype);
  return d ? d->safetensors_name : "?";
}

std::optional<DType> parse_safetensors_dtype(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (d.safetensors_name == name) return d.dtype;
  }
  return std::nullopt;
}

}  // namespace ptrain
