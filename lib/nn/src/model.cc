// The Model base: parameter registry and the flat parameter / gradient buffers.
#include "ptrain/nn/model.h"

#include <algorithm>

#include "ptrain/core/error.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::nn {

int Model::find_param(const std::string& name) const {
  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

int Model::find_buffer(const std::string& name) const {
  for (size_t i = 0; i < buffers_.size(); ++i)
    if (buffers_[i].name == name) return static_cast<int>(i);
  return -1;
}

void Model::add_param(std::string name, std::vector<int64_t> shape) {
  PTRAIN_CHECK(!param_buf_.defined(), "add_param after allocate_params");
  ParamInfo p;
  p.name = std::move(name);
  p.numel = static_cast<size_t>(tensor::shape_numel(shape));
  p.decay = shape.size() >= 2;
  p.full_shape = shape;
  p.shape = std::move(shape);
  p.offset = num_params_;
  num_params_ += p.numel;
  params_.push_back(std::move(p));
}

void Model::add_split_param(std::string name, std::vector<int64_t> full_shape, int split_dim,
                            int parts, int rank, int blocks) {
  PTRAIN_CHECK(split_dim >= 0 && split_dim < static_cast<int>(full_shape.size()),
               "split dimension {} of {}", split_dim, name);
  PTRAIN_CHECK(full_shape[split_dim] % (int64_t(blocks) * parts) == 0,
               "{}: dimension {} of size {} does not split into {} x {}", name, split_dim,
               full_shape[split_dim], blocks, parts);
  std::vector<int64_t> local = full_shape;
  local[split_dim] /= parts;
  add_param(std::move(name), local);
  ParamInfo& p = params_.back();
  p.full_shape = std::move(full_shape);
  p.decay = p.full_shape.size() >= 2;
  if (parts > 1) {
    p.split_dim = split_dim;
    p.split_blocks = blocks;
    p.split_parts = parts;
    p.split_rank = rank;
  }
}

void Model::add_sharded_param(std::string name, std::vector<int64_t> full_shape,
                              std::vector<int64_t> row_splits, int rank) {
  PTRAIN_CHECK(!full_shape.empty() && rank >= 0 && size_t(rank) + 1 < row_splits.size(),
               "sharded parameter {}: rank {} of {} row ranges", name, rank, row_splits.size() - 1);
  PTRAIN_CHECK(row_splits.front() == 0 && row_splits.back() == full_shape[0],
               "sharded parameter {}: row ranges do not cover its {} rows", name, full_shape[0]);
  std::vector<int64_t> local = full_shape;
  local[0] = row_splits[size_t(rank) + 1] - row_splits[size_t(rank)];
  add_param(std::move(name), local);
  ParamInfo& p = params_.back();
  p.full_shape = std::move(full_shape);
  p.sync = ParamInfo::Sync::kSharded;
  p.decay = false;
  p.row_begin = row_splits[size_t(rank)];
  p.row_splits = std::move(row_splits);
}

void Model::mark_touched(size_t index, const int64_t* rows, size_t n) {
  if (touched_.size() < params_.size()) {
    touched_.resize(params_.size());
    touched_sorted_.resize(params_.size(), true);
  }
  touched_[index].insert(touched_[index].end(), rows, rows + n);
  touched_sorted_[index] = false;
}

const std::vector<int64_t>& Model::touched_rows(size_t index) const {
  static const std::vector<int64_t> kNone;
  if (index >= touched_.size()) return kNone;
  if (!touched_sorted_[index]) {
    auto& v = touched_[index];
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    touched_sorted_[index] = true;
  }
  return touched_[index];
}

void GroupComm::alltoallv(const void*, const std::vector<size_t>&, void*,
                          const std::vector<size_t>&, tensor::DType) {
  throw Error("this group communicator has no all-to-all");
}

size_t ParamInfo::full_numel() const {
  return static_cast<size_t>(tensor::shape_numel(full_shape.empty() ? shape : full_shape));
}

namespace {
// Walks the contiguous runs shared by a full tensor and one of its parts: for every index of
// the dimensions before split_dim and every block, `chunk` elements of the part.
template <class F>
void for_each_run(const ParamInfo& p, int part, F&& f) {
  if (p.is_row_sharded()) {  // this rank's rows [row_begin, row_begin + shape[0])
    size_t inner = 1;
    for (size_t d = 1; d < p.full_shape.size(); ++d) inner *= size_t(p.full_shape[d]);
    if (p.numel > 0) f(size_t(p.row_begin) * inner, size_t{0}, p.numel);
    return;
  }
  if (!p.is_split()) {
    f(size_t{0}, size_t{0}, p.numel);
    return;
  }
  size_t outer = 1, inner = 1;
  for (int d = 0; d < p.split_dim; ++d) outer *= static_cast<size_t>(p.full_shape[d]);
  for (size_t d = p.split_dim + 1; d < p.full_shape.size(); ++d)
    inner *= static_cast<size_t>(p.full_shape[d]);
  const size_t full_dim = static_cast<size_t>(p.full_shape[p.split_dim]);
  const size_t local_dim = static_cast<size_t>(p.shape[p.split_dim]);
  // A part holds `chunk` entries of each block. When the block does not divide evenly (a BERT
  // vocabulary of 257 over 2 ranks) every part has ceil(block / parts) entries and the last
  // ones are padding that no full tensor has: `n` are real.
  const size_t block = full_dim / p.split_blocks, chunk = local_dim / p.split_blocks;
  const size_t begin = std::min(block, size_t(part) * chunk), n = std::min(chunk, block - begin);
  if (n == 0) return;
  for (size_t o = 0; o < outer; ++o)
    for (int b = 0; b < p.split_blocks; ++b) {
      size_t full_at = (o * full_dim + b * block + begin) * inner;
      size_t shard_at = (o * local_dim + b * chunk) * inner;
      f(full_at, shard_at, n * inner);
    }
}
}  // namespace

void copy_shard_from_full(const ParamInfo& p, int part, const float* full, float* shard) {
  for_each_run(p, part, [&](size_t full_at, size_t shard_at, size_t n) {
    std::copy_n(full + full_at, n, shard + shard_at);
  });
}

void copy_shard_to_full(const ParamInfo& p, int part, const float* shard, float* full) {
  for_each_run(p, part, [&](size_t full_at, size_t shard_at, size_t n) {
    std::copy_n(shard + shard_at, n, full + full_at);
  });
}

void Model::add_buffer(std::string name, std::vector<int64_t> shape, bool optional) {
  PTRAIN_CHECK(!param_buf_.defined(), "add_buffer after allocate_params");
  BufferInfo b;
  b.optional = optional;
  b.name = std::move(name);
  b.numel = static_cast<size_t>(tensor::shape_numel(shape));
  b.shape = std::move(shape);
  b.offset = num_buffer_elems_;
  num_buffer_elems_ += b.numel;
  buffers_.push_back(std::move(b));
}

void Model::allocate_params() {
  // Dense parameters first, in registration order, then the sharded ones.
  size_t at = 0;
  for (auto& p : params_)
    if (p.sync == ParamInfo::Sync::kDense) p.offset = at, at += p.numel;
  dense_numel_ = at;
  for (auto& p : params_)
    if (p.sync == ParamInfo::Sync::kSharded) p.offset = at, at += p.numel;
  auto n = static_cast<int64_t>(num_params_);
  param_buf_ = tensor::Tensor::zeros({n}, tensor::DType::kF32, device_);
  grad_buf_ = tensor::Tensor::zeros({n}, tensor::DType::kF32, device_);
  if (num_buffer_elems_ > 0)
    state_buf_ = tensor::Tensor::zeros({int64_t(num_buffer_elems_)}, tensor::DType::kF32, device_);
}

std::vector<int64_t> Model::boundary_shape(int, int) const {
  throw ConfigError("this model cannot be split into pipeline stages", "set parallel.pipeline: 1");
}

Batch& Batch::add(std::string name, tensor::DType dtype, std::vector<int64_t> shape,
                  const void* data) {
  for (auto& t : tensors)
    if (t.name == name) {
      t = {std::move(name), dtype, std::move(shape), data};
      return *this;
    }
  tensors.push_back({std::move(name), dtype, std::move(shape), data});
  return *this;
}

Batch& Batch::remove(const std::string& name) {
  std::erase_if(tensors, [&](const BatchTensor& t) { return t.name == name; });
  return *this;
}

const BatchTensor* Batch::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const int32_t* Batch::i32(const std::string& name) const {
  const BatchTensor* t = find(name);
  if (!t) return nullptr;
  PTRAIN_CHECK(t->dtype == tensor::DType::kI32, "batch tensor {} is not i32", name);
  return static_cast<const int32_t*>(t->data);
}

const float* Batch::f32(const std::string& name) const {
  const BatchTensor* t = find(name);
  if (!t) return nullptr;
  PTRAIN_CHECK(t->dtype == tensor::DType::kF32, "batch tensor {} is not f32", name);
  return static_cast<const float*>(t->data);
}

tensor::Tensor Model::param(size_t index) const {
  PTRAIN_CHECK(index < params_.size(), "param index {} out of range", index);
  return param_buf_.view(static_cast<int64_t>(params_[index].offset), params_[index].shape);
}

tensor::Tensor Model::grad(size_t index) const {
  PTRAIN_CHECK(index < params_.size(), "param index {} out of range", index);
  return grad_buf_.view(static_cast<int64_t>(params_[index].offset), params_[index].shape);
}

void Model::zero_grad() {
  grad_buf_.zero();
  for (auto& t : touched_) t.clear();
  touched_sorted_.assign(touched_.size(), true);
}

}  // namespace ptrain::nn
