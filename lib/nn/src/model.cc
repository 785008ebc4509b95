// The Model base: parameter registry and the flat parameter / gradient buffers.
#include "ptrain/nn/model.h"

#include "ptrain/core/error.h"

namespace ptrain::nn {

int Model::find_param(const std::string& name) const {
  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

void Model::add_param(std::string name, std::vector<int64_t> shape) {
  PTRAIN_CHECK(!param_buf_.defined(), "add_param after allocate_params");
  ParamInfo p;
  p.name = std::move(name);
  p.numel = static_cast<size_t>(tensor::shape_numel(shape));
  p.decay = shape.size() >= 2;
  p.shape = std::move(shape);
  p.offset = num_params_;
  num_params_ += p.numel;
  params_.push_back(std::move(p));
}

void Model::allocate_params() {
  auto n = static_cast<int64_t>(num_params_);
  param_buf_ = tensor::Tensor::zeros({n}, tensor::DType::kF32, device_);
  grad_buf_ = tensor::Tensor::zeros({n}, tensor::DType::kF32, device_);
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
}

}  // namespace ptrain::nn
