// Which entries of an op table a backend left null, by name: the check every backend's table
// must pass (tests/tensor/ops_table_test.cc runs it on CPU always, on CUDA when a GPU is there).
#pragma once

#include <string>
#include <vector>

#include "ptrain/tensor/ops.h"

namespace ptrain::tensor::testing {

// The names of the null entries of `table` ("gemm_bf16", ...), in declaration order; "name"
// when the table has no name. Empty for a complete table.
inline std::vector<std::string> null_entries(const Ops& table) {
  std::vector<std::string> missing;
  if (table.name == nullptr) missing.push_back("name");
#define PTRAIN_NOTE_NULL_ENTRY(entry) \
  if (table.entry == nullptr) missing.push_back(#entry);
  PTRAIN_OPS_KERNELS(PTRAIN_NOTE_NULL_ENTRY)
#undef PTRAIN_NOTE_NULL_ENTRY
  return missing;
}

}  // namespace ptrain::tensor::testing
