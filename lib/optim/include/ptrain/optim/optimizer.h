// Optimizers over a flat parameter buffer: which ranges decay (ParamLayout), which slice this rank
// updates (Shard, for ZeRO-1), and AdamW / SGD with PyTorch's semantics on top of the op table's
// adamw_update / sgd_update kernels. State buffers are sized to the shard and exposed by name
// (PyTorch's names: exp_avg, exp_avg_sq, momentum_buffer) for checkpoints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/tensor/ops.h"
#include "ptrain/tensor/tensor.h"

namespace ptrain::optim {

// One named parameter tensor inside the flat buffer.
struct ParamRange {
  std::string name;
  size_t offset = 0;  // in elements
  size_t size = 0;
  bool decay = false;  // weight decay applies (matrices and embeddings, not biases/LayerNorm)
};

class ParamLayout {
 public:
  // Appends a tensor of `shape` after the last range; decays when it has >= 2 dimensions.
  void add(std::string name, const std::vector<int64_t>& shape);
  // Places a range explicitly (padding between ranges is allowed and never updated).
  // Throws ConfigError when it overlaps an existing range or has an empty/duplicate name.
  void add(std::string name, size_t offset, size_t size, bool decay);

  const std::vector<ParamRange>& ranges() const { return ranges_; }  // sorted by offset
  size_t total() const { return total_; }                            // end of the last range

 private:
  std::vector<ParamRange> ranges_;
  size_t total_ = 0;
};

// Elements [begin, end) of the flat buffer that one rank updates.
struct Shard {
  size_t begin = 0;
  size_t end = 0;
  size_t size() const { return end - begin; }
  static Shard whole(const ParamLayout& layout) { return {0, layout.total()}; }
  // ZeRO-1 partition: rank r of `world` gets [r*c, min((r+1)*c, total)) with c = ceil(total/world).
  static Shard of_rank(size_t total, int rank, int world);
};

// A state buffer on the optimizer's device; `data` is indexed by (element - shard.begin).
struct StateBuffer {
  std::string name;
  float* data = nullptr;  // [shard.size()]
  size_t size = 0;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of the shard's elements at learning rate `lr`. `params` and `grads` are the FULL
  // flat buffers on the op table's device (element 0 at the pointer); only [shard.begin,
  // shard.end) is read and written, so a ZeRO-1 caller only needs its shard's gradients reduced.
  virtual void step(float* params, const float* grads, float lr) = 0;
  // Named state buffers (empty for plain SGD), for checkpoints: copy out or into them.
  virtual std::vector<StateBuffer> state() = 0;
  virtual const char* name() const = 0;

  int64_t steps() const { return steps_; }           // updates taken so far (PyTorch's `step`)
  void set_steps(int64_t steps) { steps_ = steps; }  // when restoring a checkpoint
  const Shard& shard() const { return shard_; }
  const ParamLayout& layout() const { return layout_; }

 protected:
  Optimizer(const tensor::Ops& ops, ParamLayout layout, Shard shard);
  // Calls fn(offset, size, decay) for each part of a range that falls inside the shard.
  template <class Fn>
  void for_each_piece(Fn&& fn) const {
    for (const auto& r : layout_.ranges()) {
      size_t lo = r.offset > shard_.begin ? r.offset : shard_.begin;
      size_t hi = r.offset + r.size < shard_.end ? r.offset + r.size : shard_.end;
      if (lo < hi) fn(lo, hi - lo, r.decay);
    }
  }
  tensor::Tensor make_state() const;  // zero-filled [shard.size()] on the ops' device

  const tensor::Ops& ops_;
  ParamLayout layout_;
  Shard shard_;
  int64_t steps_ = 0;
};

// torch.optim.AdamW defaults.
struct AdamWOptions {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;  // decoupled, only on ranges with decay = true
};

// PyTorch AdamW, per element of a decayed range (t = steps() after increment):
//   p -= lr*wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
//   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
class AdamW final : public Optimizer {
 public:
  // Throws ConfigError for betas outside [0, 1), eps <= 0, weight_decay < 0, or a shard past
  // the layout.
  AdamW(const tensor::Ops& ops, ParamLayout layout, Shard shard, const AdamWOptions& options = {});
  void step(float* params, const float* grads, float lr) override;
  std::vector<StateBuffer> state() override;
  const char* name() const override { return "adamw"; }
  const AdamWOptions& options() const { return options_; }

 private:
  AdamWOptions options_;
  tensor::Tensor m_;  // exp_avg [shard.size()]
  tensor::Tensor v_;  // exp_avg_sq [shard.size()]
};

// torch.optim.SGD defaults (plain SGD).
struct SgdOptions {
  float momentum = 0.0f;
  bool nesterov = false;      // needs momentum > 0
  float weight_decay = 0.0f;  // L2 (added to the gradient), only on ranges with decay = true
};

// PyTorch SGD: g += wd*p; buf = momentum*buf + g (buf = g on the first step);
// update = nesterov ? g + momentum*buf : buf (g when momentum = 0); p -= lr*update.
class Sgd final : public Optimizer {
 public:
  Sgd(const tensor::Ops& ops, ParamLayout layout, Shard shard, const SgdOptions& options = {});
  void step(float* params, const float* grads, float lr) override;
  std::vector<StateBuffer> state() override;
  const char* name() const override { return "sgd"; }

 private:
  SgdOptions options_;
  tensor::Tensor buf_;  // momentum_buffer [shard.size()], only when momentum != 0
};

}  // namespace ptrain::optim
