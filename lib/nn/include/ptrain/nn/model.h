// The model interface the trainer and the parallel strategies program against: parameters in one
// flat buffer (gradients in a second with the same layout), named like Hugging Face / PyTorch,
// and an explicit forward/backward per microbatch.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
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
  // How data parallelism keeps it in sync: `kDense` parameters are replicated and their
  // gradients allreduced (buckets, ZeRO-1); `kSharded` ones (embedding tables) are owned by one
  // rank or split across ranks and never allreduced. Dense parameters come first in the flat
  // buffers (Model::dense_numel()).
  enum class Sync { kDense, kSharded };
  Sync sync = Sync::kDense;
  // kSharded: data rank r holds rows [row_splits[r], row_splits[r+1]) of the full tensor
  // (full_shape; every rank knows every rank's range); this rank's are [row_begin, row_begin +
  // shape[0]). A table owned by another rank has 0 rows here. Empty for dense parameters.
  std::vector<int64_t> row_splits;
  int64_t row_begin = 0;
  // Pipeline parallelism: a parameter held by two stages (the GPT's wte on the first and last
  // stage) whose gradients the stages sum; `tied_copy` marks the copy that is not saved and
  // counts nowhere in the gradient norm.
  bool tied = false;
  bool tied_copy = false;
  bool is_split() const { return split_dim >= 0 && split_parts > 1; }
  // A sharded parameter holding fewer rows than the full tensor.
  bool is_row_sharded() const {
    return sync == Sync::kSharded && !full_shape.empty() && shape[0] != full_shape[0];
  }
  size_t full_numel() const;
};

// Model state that is not a parameter (BatchNorm running statistics, counters): checkpointed
// and broadcast from data-parallel rank 0, never optimised. Held in Model::buffer_data().
struct BufferInfo {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // in elements, into buffer_data()
  size_t numel = 0;
  // May be absent from a weights file (init_from), which then leaves the initial value: a
  // counter that older checkpoints of the ecosystem lack (BatchNorm's num_batches_tracked).
  // Checkpoints always hold it.
  bool optional = false;
};

// Copies between a full tensor (p.full_shape) and part `part` of it (p.shape), on the host. A
// row-sharded parameter's part is always this rank's rows (`part` is ignored).
void copy_shard_from_full(const ParamInfo& p, int part, const float* full, float* shard);
void copy_shard_to_full(const ParamInfo& p, int part, const float* shard, float* full);

// One named host tensor of a batch (the family's batch schema names them: `tokens [B,T] i32`,
// `features [B,in] f32`, `targets [B] i32`, ...).
struct BatchTensor {
  std::string name;
  tensor::DType dtype = tensor::DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// One microbatch: named host tensors, read during forward() only, and on a pipeline stage
// without the model's input layer the previous stage's output instead.
struct Batch {
  int B = 0;  // samples (sequences, rows, images)
  int T = 1;  // tokens per sequence (1 for models without a sequence axis)
  std::vector<BatchTensor> tensors;
  const float* input = nullptr;  // device, Model::boundary_shape(B, T)

  Batch& add(std::string name, tensor::DType dtype, std::vector<int64_t> shape, const void* data);
  Batch& remove(const std::string& name);
  // The tensor `name`, or nullptr.
  const BatchTensor* find(const std::string& name) const;
  // Its data, checked for dtype; nullptr when the batch has no such tensor.
  const int32_t* i32(const std::string& name) const;
  const float* f32(const std::string& name) const;
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

// The collectives a model calls inside its forward/backward over one group of the mesh: the
// tensor group at the Megatron points (after row-parallel forward GEMMs, after column-parallel
// backward GEMMs, the vocab-parallel softmax), the data group for statistics every data rank
// shares (synchronised BatchNorm). Buffers on the model's device.
class GroupComm {
 public:
  virtual ~GroupComm() = default;
  virtual void allreduce_sum(float* data, size_t count) = 0;
  virtual void allreduce_max(float* data, size_t count) = 0;
  // This rank and the group size (for models that route work between the ranks).
  virtual int rank() const { return 0; }
  virtual int size() const { return 1; }
  // All-to-all with per-peer counts of 4-byte elements (f32 or i32), as
  // comm::Communicator::alltoallv: send is the concatenation over peers j of send_counts[j]
  // elements, recv receives recv_counts[j] from each rank j in rank order. Sharded embedding
  // tables route lookups and their gradients with it.
  virtual void alltoallv(const void* send, const std::vector<size_t>& send_counts, void* recv,
                         const std::vector<size_t>& recv_counts, tensor::DType dtype);
};
using TensorParallelComm = GroupComm;

// Evaluation figures beyond the loss, as named sums over this rank's eval microbatches (the
// trainer adds them over the data group, then the family turns them into metrics):
// {"correct": 812, "count": 1000}.
using EvalSums = std::map<std::string, double>;
// Per-sample eval scores and 0/1 labels, for figures that need every sample (exact ROC AUC):
// the trainer gathers them over the data group.
struct EvalScores {
  std::vector<float> scores;
  std::vector<float> labels;
};

class Model {
 public:
  virtual ~Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const std::vector<ParamInfo>& params() const { return params_; }
  size_t num_params() const { return num_params_; }  // elements in the flat buffers
  // Elements of the dense parameters, which come first in the flat buffers.
  size_t dense_numel() const { return dense_numel_; }
  // Non-parameter state (BatchNorm statistics), its own flat fp32 buffer.
  const std::vector<BufferInfo>& buffers() const { return buffers_; }
  size_t num_buffer_elems() const { return num_buffer_elems_; }
  float* buffer_data() { return buffers_.empty() ? nullptr : state_buf_.data<float>(); }
  const float* buffer_data() const { return buffers_.empty() ? nullptr : state_buf_.data<float>(); }
  // Index into params() (buffers()) by name, or -1.
  int find_param(const std::string& name) const;
  int find_buffer(const std::string& name) const;
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
  // Sharded parameter `index`: the local rows (sorted, unique) whose gradients the backward
  // calls since the last zero_grad() wrote; the sparse optimizer updates only these.
  const std::vector<int64_t>& touched_rows(size_t index) const;
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

  // Pipeline parallelism: the shape of the activation a stage sends to the next one (and of
  // its gradient) for a [B,T] microbatch; the pipeline asks the model, not the spec.
  virtual std::vector<int64_t> boundary_shape(int B, int T) const;
  // Evaluation mode: layers with state (BatchNorm) use their running statistics and update
  // nothing. Training mode is the default.
  virtual void set_training(bool training) { training_ = training; }
  bool training() const { return training_; }

  // After a forward in evaluation mode on the stage with the head: adds this microbatch's
  // figures to `sums` (nothing by default).
  virtual void eval_sums(const Activations& /*acts*/, EvalSums& /*sums*/) const {}
  // Likewise, appends this microbatch's per-sample scores and labels (nothing by default).
  virtual void eval_scores(const Activations& /*acts*/, EvalScores& /*out*/) const {}

  void set_grad_ready_hook(GradReadyHook hook) { grad_ready_ = std::move(hook); }
  void set_tensor_parallel_comm(GroupComm* comm) { tp_comm_ = comm; }
  // The data-parallel group (set by the trainer when data > 1), for models whose forward needs
  // statistics of the whole global batch.
  void set_data_parallel_comm(GroupComm* comm) { dp_comm_ = comm; }

 protected:
  explicit Model(tensor::Device device) : device_(device) {}
  void add_param(std::string name, std::vector<int64_t> shape);
  // A parameter split over the tensor group: `full_shape` divided along `split_dim` (in
  // `blocks` blocks) into `parts`, of which this rank holds part `rank`.
  void add_split_param(std::string name, std::vector<int64_t> full_shape, int split_dim, int parts,
                       int rank, int blocks = 1);
  // A sharded parameter (never allreduced, no weight decay): `full_shape` [rows, ...] of which
  // data rank r holds rows [row_splits[r], row_splits[r+1]); this is data rank `rank`.
  void add_sharded_param(std::string name, std::vector<int64_t> full_shape,
                         std::vector<int64_t> row_splits, int rank);
  // Records that the current backward wrote gradients to these local rows of parameter `index`.
  void mark_touched(size_t index, const int64_t* rows, size_t n);
  // A non-parameter state tensor (buffers()); zero until init() sets it.
  void add_buffer(std::string name, std::vector<int64_t> shape, bool optional = false);
  // Allocates the flat buffers once every add_param / add_buffer call is done; dense
  // parameters are laid out before sharded ones.
  void allocate_params();
  void grad_ready(size_t index) const {
    if (grad_ready_) grad_ready_(index);
  }
  const tensor::Ops& ops() const { return tensor::ops(device_); }

  tensor::Device device_;
  std::vector<ParamInfo> params_;
  size_t num_params_ = 0;
  size_t dense_numel_ = 0;
  std::vector<BufferInfo> buffers_;
  size_t num_buffer_elems_ = 0;
  bool training_ = true;
  tensor::Tensor param_buf_;
  tensor::Tensor grad_buf_;
  tensor::Tensor state_buf_;
  GradReadyHook grad_ready_;
  GroupComm* tp_comm_ = nullptr;
  GroupComm* dp_comm_ = nullptr;
  // touched_rows(): per parameter index, appended by mark_touched, made unique on read.
  mutable std::vector<std::vector<int64_t>> touched_;
  mutable std::vector<bool> touched_sorted_;
};

}  // namespace ptrain::nn
