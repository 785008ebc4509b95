// The model interface the trainer and the parallel strategies program against: parameters in one
// flat buffer (gradients in a second with the same layout), named like Hugging Face / PyTorch,
// and an explicit forward/backward per microbatch.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/tensor/tensor.h"

namespace ptrain::nn {

struct ParamInfo {
  std::string name;            // "h.0.attn.c_attn.weight"
  std::vector<int64_t> shape;  // as stored: [in, out] for GPT Conv1D, [out, in] for nn.Linear
  size_t offset = 0;           // in elements, into param_data() / grad_data()
  size_t numel = 0;
  bool decay = false;  // weight decay applies (tensors with >= 2 dimensions)
  // Tensor parallelism: this rank holds part `split_rank` of `split_parts` of the full tensor
  // (shape `full_shape`) along dimension `split_dim`; -1 = replicated over the tensor group.
  // That dimension is `split_blocks` equal blocks split separately (3 for c_attn's q|k|v, so
  // the local [D, 3D/t] is q_local|k_local|v_local).
  std::vector<int64_t> full_shape;
  int split_dim = -1;
  int split_blocks = 1;
  int split_parts = 1;
  int split_rank = 0;
  bool is_split() const { return split_dim >= 0 && split_parts > 1; }
  size_t full_numel() const;
};

// Copies between a full tensor (p.full_shape) and part `part` of it (p.shape), on the host.
void copy_shard_from_full(const ParamInfo& p, int part, const float* full, float* shard);
void copy_shard_to_full(const ParamInfo& p, int part, const float* shard, float* full);

// One microbatch. Host pointers are read during forward() only.
struct Batch {
  int B = 0;                        // sequences (GPT) or rows (MLP)
  int T = 1;                        // tokens per sequence (GPT)
  const int32_t* tokens = nullptr;  // host [B,T]: GPT stage with the embedding
  const float* features = nullptr;  // host [B,in]: MLP
  const float* input = nullptr;     // device [B,T,D]: GPT stage without the embedding
  const int32_t* targets =
      nullptr;  // host [B,T] (GPT) or [B] (MLP): stage with the head; < 0 ignored
};

// What one forward pass keeps for its backward. Several may be alive at once (pipeline 1F1B);
// each is reused across steps when its batch shape stays the same, so a step allocates nothing.
class Activations {
 public:
  virtual ~Activations() = default;
  virtual int batch() const = 0;
  virtual int seq() const = 0;
  // Stage output [B,T,D] (device) after forward on a stage without the head; nullptr otherwise.
  virtual const float* output() const = 0;
  // d loss / d Batch::input [B,T,D] (device) after backward on a stage without the embedding.
  virtual const float* input_grad() const = 0;
};

// Called during backward, in reverse layer order, with the index into params() of each
// parameter whose gradient this backward call will not touch again (for overlapped allreduce).
using GradReadyHook = std::function<void(size_t param_index)>;

// The collective a tensor-parallel model calls at the Megatron points (after row-parallel
// forward GEMMs, after column-parallel backward GEMMs, and for the vocab-parallel softmax).
class TensorParallelComm {
 public:
  virtual ~TensorParallelComm() = default;
  virtual void allreduce_sum(float* data, size_t count) = 0;
  virtual void allreduce_max(float* data, size_t count) = 0;
};

class Model {
 public:
  virtual ~Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const std::vector<ParamInfo>& params() const { return params_; }
  size_t num_params() const { return num_params_; }  // elements in the flat buffers
  // Index into params() by name, or -1.
  int find_param(const std::string& name) const;
  tensor::Device device() const { return device_; }

  float* param_data() { return param_buf_.data<float>(); }
  const float* param_data() const { return param_buf_.data<float>(); }
  float* grad_data() { return grad_buf_.data<float>(); }
  const float* grad_data() const { return grad_buf_.data<float>(); }
  const tensor::Tensor& param_buffer() const { return param_buf_; }
  const tensor::Tensor& grad_buffer() const { return grad_buf_; }
  // A view of one parameter (or its gradient) with its shape.
  tensor::Tensor param(size_t index) const;
  tensor::Tensor grad(size_t index) const;

  void zero_grad();
  // Deterministic initial weights from (seed, parameter name, element index) only, so every
  // rank and pipeline stage holding a parameter gets the same values (see init.h).
  virtual void init(uint64_t seed) = 0;

  // Activations for microbatches of shape [B,T] (T is ignored by the MLP).
  virtual std::unique_ptr<Activations> make_activations(int B, int T) const = 0;
  // Runs the forward pass into `acts` (made by make_activations for the same B,T) and returns
  // the SUM of the per-token (per-row) losses; 0 on a stage without the head.
  virtual double forward(const Batch& batch, Activations& acts) = 0;
  // Accumulates d(dloss_scale * loss_sum)/d(params) into grad_data(). On a stage without the
  // head, `doutput` [B,T,D] (device) is the gradient of the stage output instead.
  virtual void backward(Activations& acts, float dloss_scale, const float* doutput = nullptr) = 0;

  // Model FLOPs of one training step (forward + backward) for B sequences of T tokens.
  virtual double train_flops(int B, int T) const = 0;

  void set_grad_ready_hook(GradReadyHook hook) { grad_ready_ = std::move(hook); }
  void set_tensor_parallel_comm(TensorParallelComm* comm) { tp_comm_ = comm; }

 protected:
  explicit Model(tensor::Device device) : device_(device) {}
  void add_param(std::string name, std::vector<int64_t> shape);
  // A parameter split over the tensor group: `full_shape` divided along `split_dim` (in
  // `blocks` blocks) into `parts`, of which this rank holds part `rank`.
  void add_split_param(std::string name, std::vector<int64_t> full_shape, int split_dim, int parts,
                       int rank, int blocks = 1);
  // Allocates the flat buffers once every add_param call is done.
  void allocate_params();
  void grad_ready(size_t index) const {
    if (grad_ready_) grad_ready_(index);
  }
  const tensor::Ops& ops() const { return tensor::ops(device_); }

  tensor::Device device_;
  std::vector<ParamInfo> params_;
  size_t num_params_ = 0;
  tensor::Tensor param_buf_;
  tensor::Tensor grad_buf_;
  GradReadyHook grad_ready_;
  TensorParallelComm* tp_comm_ = nullptr;
};

}  // namespace ptrain::nn
