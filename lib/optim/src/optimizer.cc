#include "ptrain/optim/optimizer.h"

#include <algorithm>
#include <cmath>

#include "ptrain/core/error.h"

namespace ptrain::optim {

void ParamLayout::add(std::string name, const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw ConfigError(fmt::format("parameter '{}' has a negative dimension", name));
    n *= static_cast<size_t>(d);
  }
  add(std::move(name), total_, n, shape.size() >= 2);
}

void ParamLayout::add(std::string name, size_t offset, size_t size, bool decay) {
  if (name.empty()) throw ConfigError("parameter range with an empty name");
  for (const auto& r : ranges_) {
    if (r.name == name) throw ConfigError(fmt::format("duplicate parameter range '{}'", name));
    if (size > 0 && r.size > 0 && offset < r.offset + r.size && r.offset < offset + size) {
      throw ConfigError(fmt::format("parameter range '{}' [{}, {}) overlaps '{}' [{}, {})", name,
                                    offset, offset + size, r.name, r.offset, r.offset + r.size));
    }
  }
  ranges_.push_back(ParamRange{std::move(name), offset, size, decay});
  std::stable_sort(ranges_.begin(), ranges_.end(),
                   [](const ParamRange& a, const ParamRange& b) { return a.offset < b.offset; });
  total_ = std::max(total_, offset + size);
}

Shard Shard::of_rank(size_t total, int rank, int world) {
  PTRAIN_CHECK(world > 0 && rank >= 0 && rank < world, "rank {} of {}", rank, world);
  size_t chunk = (total + static_cast<size_t>(world) - 1) / static_cast<size_t>(world);
  size_t begin = std::min(total, chunk * static_cast<size_t>(rank));
  size_t end = std::min(total, begin + chunk);
  return {begin, end};
}

Optimizer::Optimizer(const tensor::Ops& ops, ParamLayout layout, Shard shard)
    : ops_(ops), layout_(std::move(layout)), shard_(shard) {
  if (shard.begin > shard.end || shard.end > layout_.total()) {
    throw ConfigError(fmt::format("optimizer shard [{}, {}) is outside the {} parameters",
                                  shard.begin, shard.end, layout_.total()));
  }
}

tensor::Tensor Optimizer::make_state() const {
  if (shard_.size() == 0) return {};
  return tensor::Tensor::zeros({static_cast<int64_t>(shard_.size())}, tensor::DType::kF32,
                               ops_.device);
}

namespace {

float* state_ptr(const tensor::Tensor& t) {
  return t.defined() ? t.data<float>() : nullptr;
}

}  // namespace

AdamW::AdamW(const tensor::Ops& ops, ParamLayout layout, Shard shard, const AdamWOptions& o)
    : Optimizer(ops, std::move(layout), shard), options_(o) {
  if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1)) {
    throw ConfigError(
        fmt::format("adamw: betas must be in [0, 1), got [{}, {}]", o.beta1, o.beta2));
  }
  if (!(o.eps > 0)) throw ConfigError(fmt::format("adamw: eps must be > 0, got {}", o.eps));
  if (!(o.weight_decay >= 0)) {
    throw ConfigError(fmt::format("adamw: weight_decay must be >= 0, got {}", o.weight_decay));
  }
  m_ = make_state();
  v_ = make_state();
}

void AdamW::step(float* params, const float* grads, float lr) {
  ++steps_;
  float* m = state_ptr(m_);
  float* v = state_ptr(v_);
  for_each_piece([&](size_t offset, size_t size, bool decay) {
    size_t s = offset - shard_.begin;
    ops_.adamw_update(params + offset, grads + offset, m + s, v + s, size, lr, options_.beta1,
                      options_.beta2, options_.eps, decay ? options_.weight_decay : 0.0f, steps_);
  });
}

std::vector<StateBuffer> AdamW::state() {
  return {{"exp_avg", state_ptr(m_), shard_.size()}, {"exp_avg_sq", state_ptr(v_), shard_.size()}};
}

Sgd::Sgd(const tensor::Ops& ops, ParamLayout layout, Shard shard, const SgdOptions& o)
    : Optimizer(ops, std::move(layout), shard), options_(o) {
  if (!(o.momentum >= 0)) {
    throw ConfigError(fmt::format("sgd: momentum must be >= 0, got {}", o.momentum));
  }
  if (!(o.weight_decay >= 0)) {
    throw ConfigError(fmt::format("sgd: weight_decay must be >= 0, got {}", o.weight_decay));
  }
  if (o.nesterov && o.momentum == 0) {
    throw ConfigError("sgd: nesterov needs momentum > 0", "set optimizer.momentum, e.g. 0.9");
  }
  if (o.momentum != 0) buf_ = make_state();
}

void Sgd::step(float* params, const float* grads, float lr) {
  const bool first = steps_ == 0;
  ++steps_;
  float* buf = state_ptr(buf_);
  for_each_piece([&](size_t offset, size_t size, bool decay) {
    ops_.sgd_update(params + offset, grads + offset,
                    buf != nullptr ? buf + (offset - shard_.begin) : nullptr, size, lr,
                    options_.momentum, options_.nesterov, decay ? options_.weight_decay : 0.0f,
                    first);
  });
}

std::vector<StateBuffer> Sgd::state() {
  if (options_.momentum == 0) return {};
  return {{"momentum_buffer", state_ptr(buf_), shard_.size()}};
}

}  // namespace ptrain::optim
