// The pipeline executor: runs one stage's schedule with the pipeline group's send/recv, keeps
// one activation set per stashed microbatch, and measures compute and idle time.
#include "ptrain/parallel/pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "ptrain/core/error.h"
#include "ptrain/core/time.h"

namespace ptrain::parallel {

using comm::DType;

struct PipelineExecutor::Slot {
  std::unique_ptr<nn::Activations> acts;
};

// A staging copy of an outgoing activation or gradient, kept until its send finishes so the
// activation set it came from can be reused at once.
struct PipelineExecutor::SendBuffer {
  tensor::Tensor data;  // [B,T,D]
  std::unique_ptr<comm::Work> work;
};

PipelineExecutor::PipelineExecutor(nn::Model& model, comm::Communicator& pp,
                                   PipelineOptions options)
    : model_(model), pp_(pp), options_(options), stage_(pp.rank()), stages_(pp.size()) {
  PTRAIN_CHECK(options_.activation_elems > 0, "pipeline needs the activation size");
  PTRAIN_CHECK(options_.microbatches >= 1 && options_.microbatches < (1 << 22), "microbatches {}",
               options_.microbatches);
  ops_ = make_stage_schedule(options_.schedule, stages_, stage_, options_.microbatches);
  const int64_t n = int64_t(options_.activation_elems);
  if (stage_ > 0) input_ = tensor::Tensor::zeros({n}, tensor::DType::kF32, model_.device());
  if (stage_ < stages_ - 1)
    dout_ = tensor::Tensor::zeros({n}, tensor::DType::kF32, model_.device());
}

PipelineExecutor::~PipelineExecutor() {
  // Sends still in flight reference our buffers: let them finish (errors are moot here).
  for (auto& s : sends_) {
    if (!s->work) continue;
    try {
      s->work->wait(options_.timeout);
    } catch (...) {
    }
  }
}

int PipelineExecutor::acquire_slot() {
  int slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = int(slots_.size());
    auto s = std::make_unique<Slot>();
    s->acts = model_.make_activations(options_.rows, options_.seq);
    slots_.push_back(std::move(s));
  }
  stats_.peak_stash = std::max(stats_.peak_stash, ++in_use_);
  return slot;
}

void PipelineExecutor::release_slot(int slot) {
  free_slots_.push_back(slot);
  --in_use_;
}

PipelineExecutor::SendBuffer& PipelineExecutor::send_buffer() {
  for (auto& s : sends_) {
    if (!s->work) return *s;
    if (s->work->test()) {
      s->work->wait(options_.timeout);  // finished: rethrows its failure, if any
      s->work.reset();
      return *s;
    }
  }
  auto s = std::make_unique<SendBuffer>();
  s->data = tensor::Tensor::zeros({int64_t(options_.activation_elems)}, tensor::DType::kF32,
                                  model_.device());
  sends_.push_back(std::move(s));
  return *sends_.back();
}

void PipelineExecutor::send(const float* src, uint32_t tag, int dst, const char* what, int micro) {
  double t0 = mono_seconds();
  auto& buf = send_buffer();
  const size_t n = options_.activation_elems;
  tensor::ops(model_.device()).copy(buf.data.data<float>(), src, n * sizeof(float));
  buf.work = pp_.send_async(buf.data.data<float>(), n, DType::kF32, dst, tag);
  if (trace_) trace_->add(fmt::format("send {} {}", what, micro), "comm", t0, mono_seconds());
}

void PipelineExecutor::recv(float* dst, uint32_t tag, int src, const char* what, int micro) {
  double t0 = mono_seconds();
  pp_.recv_async(dst, options_.activation_elems, DType::kF32, src, tag)->wait(options_.timeout);
  double t1 = mono_seconds();
  stats_.idle_s += t1 - t0;
  if (trace_) trace_->add(fmt::format("recv {} {}", what, micro), "comm", t0, t1);
}

void PipelineExecutor::finish_sends() {
  double t0 = mono_seconds();
  for (auto& s : sends_) {
    if (!s->work) continue;
    s->work->wait(options_.timeout);
    s->work.reset();
  }
  double t1 = mono_seconds();
  stats_.idle_s += t1 - t0;
  if (trace_ && t1 - t0 > 1e-6) trace_->add("wait sends", "comm", t0, t1);
}

double PipelineExecutor::run(const std::vector<PipeOp>& ops, const BatchFn& batch_of, bool train,
                             float dloss_scale, const std::function<void()>& before_last_backward) {
  stats_ = {};
  PTRAIN_CHECK(in_use_ == 0, "pipeline: {} activation sets still held from the last step", in_use_);
  int m = 0;
  for (const auto& op : ops) m = std::max(m, op.micro + 1);
  slot_of_micro_.assign(size_t(m), -1);
  int last_backward = -1;
  for (size_t i = 0; i < ops.size(); ++i)
    if (ops[i].kind == PipeOpKind::kBackward) last_backward = int(i);

  const uint32_t base = options_.tag_base;
  double loss = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    const PipeOp& op = ops[i];
    const uint32_t act_tag = base + 2 * uint32_t(op.micro);
    const uint32_t grad_tag = act_tag + 1;
    switch (op.kind) {
      case PipeOpKind::kRecvActivation:
        recv(input_.data<float>(), act_tag, stage_ - 1, "act", op.micro);
        break;
      case PipeOpKind::kForward: {
        nn::Batch b = batch_of(op.micro);
        if (stage_ > 0) b.input = input_.data<float>();
        int slot = acquire_slot();
        slot_of_micro_[size_t(op.micro)] = slot;
        double t0 = mono_seconds();
        loss += model_.forward(b, *slots_[size_t(slot)]->acts);
        double t1 = mono_seconds();
        stats_.compute_s += t1 - t0;
        stats_.forward_s += t1 - t0;
        if (trace_) trace_->add(fmt::format("F{}", op.micro), "compute", t0, t1);
        // Evaluation keeps nothing for a backward.
        if (!train) {
          if (eval_sums_ && stage_ == stages_ - 1)
            model_.eval_sums(*slots_[size_t(slot)]->acts, *eval_sums_);
          if (stage_ < stages_ - 1)
            send(slots_[size_t(slot)]->acts->output(), act_tag, stage_ + 1, "act", op.micro);
          release_slot(slot);
          slot_of_micro_[size_t(op.micro)] = -1;
        }
        break;
      }
      case PipeOpKind::kSendActivation: {
        if (!train) break;  // sent right after the forward above
        int slot = slot_of_micro_[size_t(op.micro)];
        PTRAIN_CHECK(slot >= 0, "pipeline: activation {} sent before its forward", op.micro);
        send(slots_[size_t(slot)]->acts->output(), act_tag, stage_ + 1, "act", op.micro);
        break;
      }
      case PipeOpKind::kRecvGrad:
        recv(dout_.data<float>(), grad_tag, stage_ + 1, "grad", op.micro);
        break;
      case PipeOpKind::kBackward: {
        int slot = slot_of_micro_[size_t(op.micro)];
        PTRAIN_CHECK(slot >= 0, "pipeline: backward {} before its forward", op.micro);
        if (int(i) == last_backward && before_last_backward) before_last_backward();
        double t0 = mono_seconds();
        model_.backward(*slots_[size_t(slot)]->acts, dloss_scale,
                        stage_ < stages_ - 1 ? dout_.data<float>() : nullptr);
        double t1 = mono_seconds();
        stats_.compute_s += t1 - t0;
        if (trace_) trace_->add(fmt::format("B{}", op.micro), "compute", t0, t1);
        if (stage_ > 0)
          send(slots_[size_t(slot)]->acts->input_grad(), grad_tag, stage_ - 1, "grad", op.micro);
        release_slot(slot);
        slot_of_micro_[size_t(op.micro)] = -1;
        break;
      }
      case PipeOpKind::kSendGrad:
        break;  // sent right after the backward above, before its activation set is reused
    }
  }
  finish_sends();
  return loss;
}

double PipelineExecutor::train_step(const BatchFn& batch, float dloss_scale,
                                    const std::function<void()>& before_last_backward) {
  return run(ops_, batch, true, dloss_scale, before_last_backward);
}

double PipelineExecutor::forward_only(const BatchFn& batch, int microbatches, nn::EvalSums* sums) {
  PTRAIN_CHECK(microbatches >= 1 && microbatches < (1 << 22), "microbatches {}", microbatches);
  std::vector<PipeOp> ops;
  for (int i = 0; i < microbatches; ++i) {
    if (stage_ > 0) ops.push_back({PipeOpKind::kRecvActivation, i});
    ops.push_back({PipeOpKind::kForward, i});
  }
  eval_sums_ = sums;
  double loss = run(ops, batch, false, 0.0f, {});
  eval_sums_ = nullptr;
  return loss;
}

// ---- tied embedding ----

FlatRange tied_copy_range(const nn::Model& model) {
  // The model marks the copies (ParamInfo::tied_copy); one tied tensor per model today.
  for (const auto& p : model.params())
    if (p.tied_copy) return {p.offset, p.offset + p.numel};
  return {};
}

void sum_tied_grads(nn::Model& model, comm::Communicator& pp, Millis timeout) {
  const int stages = pp.size(), stage = pp.rank();
  if (stages <= 1 || (stage != 0 && stage != stages - 1)) return;
  const int peer = stage == 0 ? stages - 1 : 0;
  // Tag 2^24 - 2 stays clear of the executor's microbatch tags.
  const uint32_t tag = (1u << 24) - 2;
  const auto& o = tensor::ops(model.device());
  for (const auto& p : model.params()) {
    if (!p.tied) continue;
    auto other = tensor::Tensor::zeros({int64_t(p.numel)}, tensor::DType::kF32, model.device());
    float* g = model.grad_data() + p.offset;
    auto sent = pp.send_async(g, p.numel, DType::kF32, peer, tag);
    auto got = pp.recv_async(other.data<float>(), p.numel, DType::kF32, peer, tag);
    got->wait(timeout);
    sent->wait(timeout);
    o.add(g, g, other.data<float>(), p.numel);
  }
}

// ---- bytes over a group ----

void send_bytes(comm::Communicator& comm, const std::string& bytes, int dst, uint32_t tag,
                tensor::Device device) {
  // Header: the byte count as raw bits in two floats (send/recv move bits, not values).
  uint64_t n = bytes.size();
  size_t words = (n + 3) / 4;
  std::vector<float> host(2 + words, 0.0f);
  std::memcpy(host.data(), &n, sizeof n);
  if (n) std::memcpy(host.data() + 2, bytes.data(), n);
  auto buf = tensor::Tensor::zeros({int64_t(host.size())}, tensor::DType::kF32, device);
  buf.copy_from_host(host.data(), host.size() * sizeof(float));
  comm.send(buf.data<float>(), 2, DType::kF32, dst, tag);
  if (words) comm.send(buf.data<float>() + 2, words, DType::kF32, dst, tag);
}

std::string recv_bytes(comm::Communicator& comm, int src, uint32_t tag, tensor::Device device) {
  auto head = tensor::Tensor::zeros({2}, tensor::DType::kF32, device);
  comm.recv(head.data<float>(), 2, DType::kF32, src, tag);
  uint64_t n = 0;
  head.copy_to_host(&n, sizeof n);
  size_t words = (n + 3) / 4;
  std::string out(n, '\0');
  if (!words) return out;
  auto buf = tensor::Tensor::zeros({int64_t(words)}, tensor::DType::kF32, device);
  comm.recv(buf.data<float>(), words, DType::kF32, src, tag);
  std::vector<float> host(words);
  buf.copy_to_host(host.data(), words * sizeof(float));
  std::memcpy(out.data(), host.data(), n);
  return out;
}

}  // namespace ptrain::parallel
