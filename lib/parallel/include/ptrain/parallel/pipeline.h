// Pipeline parallelism: schedules as data (a list of operations per stage, for GPipe and 1F1B),
// the executor that runs one stage's list with the pipeline group's send/recv, and a Chrome-trace
// recorder for the spans it runs (forward, backward, send, recv).
//
//   auto ops = make_stage_schedule(ScheduleKind::kOneFOneB, /*stages=*/4, /*stage=*/1, /*m=*/8);
//   PipelineExecutor exec(model, mesh.pp(), {.schedule = kind, .microbatches = 8,
//                                            .activation_elems = B * T * D});
//   double loss_sum = exec.train_step(batch_of_micro, 1.0f / global_tokens);
//
// Stage s is pipeline-group rank s. Activations [B,T,D] go forward from s to s+1 and their
// gradients [B,T,D] backward from s+1 to s; sends are asynchronous (waited at the end of the
// step), receives block, so every schedule here is free of deadlock.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/comm/communicator.h"
#include "ptrain/nn/model.h"

namespace ptrain::parallel {

enum class ScheduleKind {
  kGpipe,     // all forwards, then all backwards: stashes every microbatch
  kOneFOneB,  // warm-up of p - s - 1 forwards, then one forward one backward, then cool-down
};
// "gpipe" | "1f1b"; throws ConfigError naming parallel.schedule otherwise.
ScheduleKind parse_schedule_kind(const std::string& name);
const char* to_string(ScheduleKind kind);

enum class PipeOpKind {
  kRecvActivation,
  kForward,
  kSendActivation,
  kRecvGrad,
  kBackward,
  kSendGrad
};

struct PipeOp {
  PipeOpKind kind = PipeOpKind::kForward;
  int micro = 0;  // microbatch index in [0, m)
  bool operator==(const PipeOp&) const = default;
};
// "F3", "B3", "<a3" (receive activation 3), ">a3" (send activation), "<g3", ">g3" (gradients).
std::string to_string(const PipeOp& op);

// The operations of stage `stage` (of `stages`) for one step of `microbatches` microbatches.
// Stage 0 has no activation receives / gradient sends, the last stage no activation sends /
// gradient receives. Throws ConfigError for stages < 1, stage outside, microbatches < 1.
std::vector<PipeOp> make_stage_schedule(ScheduleKind kind, int stages, int stage, int microbatches);
// The most microbatches forwarded and not yet backwarded at any point of `ops`: how many
// activation sets the stage holds at once (1F1B: min(p - s, m); GPipe: m).
int peak_stash(const std::vector<PipeOp>& ops);
// Forwards before the first backward, minus one: the warm-up length (1F1B: p - s - 1).
int warmup_forwards(const std::vector<PipeOp>& ops);
// Every stage's list, one line each, with the warm-up and peak stash and a legend, for
// `ptrain validate --schedule`.
std::string format_schedule(ScheduleKind kind, int stages, int microbatches);
// The ideal bubble fraction of a balanced pipeline: (p - 1) / (m + p - 1).
double theoretical_bubble(int stages, int microbatches);
// Replays every stage's list as if each stage had its own device: a forward (backward) on stage
// s takes forward_s[s] (backward_s[s]) seconds and a transfer `transfer_s`. Returns each stage's
// idle fraction of the step (1 - its busy time / the step's span). With equal times and no
// transfer cost both schedules give theoretical_bubble.
std::vector<double> replay_bubble(ScheduleKind kind, int microbatches,
                                  const std::vector<double>& forward_s,
                                  const std::vector<double>& backward_s, double transfer_s = 0);

// ---- trace ----

struct TraceSpan {
  std::string name;     // "F3", "B3", "send act 3", "recv grad 3", "optimizer", ...
  std::string cat;      // "compute" | "comm" | "step"
  double start_us = 0;  // unix time, microseconds
  double dur_us = 0;
};

// Collects spans of one rank (bounded: spans past `max_spans` are counted, not kept).
class TraceRecorder {
 public:
  explicit TraceRecorder(size_t max_spans = 500000);
  // A span from two mono_seconds() readings.
  void add(std::string name, std::string cat, double mono_begin, double mono_end);
  const std::vector<TraceSpan>& spans() const { return spans_; }
  size_t dropped() const { return dropped_; }

 private:
  size_t max_spans_;
  double mono_origin_ = 0;
  double unix_origin_us_ = 0;
  std::vector<TraceSpan> spans_;
  size_t dropped_ = 0;
};

// One rank's events as a JSON array body (no brackets): complete ("X") events with pid = rank
// and a process_name metadata event `label` ("rank 3 (stage 1, dp 1, tp 0)").
std::string trace_events_json(const std::vector<TraceSpan>& spans, int rank,
                              const std::string& label);
// Writes `dir/trace-rank-<rank>.json` (an events fragment) atomically. Throws IoError.
void write_trace_piece(const std::string& dir, int rank, const std::vector<TraceSpan>& spans,
                       const std::string& label);
// Joins the pieces of ranks [0, world) found in `dir` into `dir/trace.json` (Chrome trace /
// Perfetto: {"traceEvents": [...]}) and deletes them. Returns the number of pieces found.
int merge_trace_pieces(const std::string& dir, int world);

// ---- executor ----

struct PipelineOptions {
  ScheduleKind schedule = ScheduleKind::kOneFOneB;
  int microbatches = 1;
  int rows = 1;                 // B: sequences per microbatch
  int seq = 1;                  // T
  size_t activation_elems = 0;  // B*T*D: one stage boundary's activation (and gradient)
  uint32_t tag_base = 0;        // p2p tags used: tag_base + [0, 2m)
  Millis timeout = comm::kDefaultCommTimeout;
};

// What the last train_step / forward_only measured on this stage.
struct PipelineStats {
  double compute_s = 0;  // inside forward/backward
  double forward_s = 0;  // of which forward
  double idle_s = 0;     // blocked on receives and on finishing sends
  int peak_stash = 0;    // activation sets held at once
  // idle / (compute + idle): the measured bubble fraction.
  double bubble() const { return compute_s + idle_s > 0 ? idle_s / (compute_s + idle_s) : 0; }
};

class PipelineExecutor {
 public:
  // Fills the host batch for microbatch `micro` (tokens on the first stage, targets on the last)
  // and returns it; the executor sets Batch::input on later stages. Called right before that
  // microbatch's forward.
  using BatchFn = std::function<nn::Batch(int micro)>;

  // `pp` is the pipeline group (its rank is this stage); `model` is this stage's model. Both
  // must outlive the executor.
  PipelineExecutor(nn::Model& model, comm::Communicator& pp, PipelineOptions options);
  ~PipelineExecutor();

  int stage() const { return stage_; }
  int stages() const { return stages_; }
  const std::vector<PipeOp>& schedule() const { return ops_; }

  // Runs the step's schedule: gradients of d(dloss_scale * loss_sum) accumulate into the
  // model's grad_data() (not zeroed here). `before_last_backward` runs right before the last
  // backward of the step (arming a data-parallel reducer). Returns the loss sum of the step's
  // microbatches on the last stage, 0 elsewhere.
  double train_step(const BatchFn& batch, float dloss_scale,
                    const std::function<void()>& before_last_backward = {});
  // Forward only (evaluation) of `microbatches` microbatches through the pipeline; returns
  // the loss sum on the last stage, 0 elsewhere.
  // With `sums`, the last stage adds each microbatch's nn::Model::eval_sums to it.
  double forward_only(const BatchFn& batch, int microbatches, nn::EvalSums* sums = nullptr);

  const PipelineStats& last_stats() const { return stats_; }
  // Spans of every operation go to `trace` (nullptr: none).
  void set_trace(TraceRecorder* trace) { trace_ = trace; }

 private:
  struct Slot;
  struct SendBuffer;
  int acquire_slot();
  void release_slot(int slot);
  SendBuffer& send_buffer();
  void send(const float* src, uint32_t tag, int dst, const char* what, int micro);
  void recv(float* dst, uint32_t tag, int src, const char* what, int micro);
  void finish_sends();
  double run(const std::vector<PipeOp>& ops, const BatchFn& batch, bool train, float dloss_scale,
             const std::function<void()>& before_last_backward);

  nn::Model& model_;
  comm::Communicator& pp_;
  PipelineOptions options_;
  int stage_ = 0;
  int stages_ = 1;
  std::vector<PipeOp> ops_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<int> free_slots_;
  std::vector<int> slot_of_micro_;
  int in_use_ = 0;
  std::vector<std::unique_ptr<SendBuffer>> sends_;
  tensor::Tensor input_;  // [B,T,D] received activation
  tensor::Tensor dout_;   // [B,T,D] received gradient
  PipelineStats stats_;
  TraceRecorder* trace_ = nullptr;
  nn::EvalSums* eval_sums_ = nullptr;  // forward_only's, while it runs
};

// ---- tied embedding and stage merging helpers ----

// The parameter this stage holds as a copy of another stage's (ParamInfo::tied_copy: the GPT's
// wte on the last stage): its range in the flat buffers, or {0, 0} when it holds none.
// Excluded from the gradient norm so the tied weight counts once.
struct FlatRange {
  size_t begin = 0;
  size_t end = 0;
  size_t size() const { return end - begin; }
};
FlatRange tied_copy_range(const nn::Model& model);

// Sums the gradient of every tied parameter (ParamInfo::tied) between the first and last stage of
// the pipeline group (Megatron's embedding group) in place; other stages do nothing.
void sum_tied_grads(nn::Model& model, comm::Communicator& pp, Millis timeout);

// Sends / receives a byte string over a group (for merging stages on save). Device buffers are
// used when `device` is CUDA so that NCCL can carry them.
void send_bytes(comm::Communicator& comm, const std::string& bytes, int dst, uint32_t tag,
                tensor::Device device);
std::string recv_bytes(comm::Communicator& comm, int src, uint32_t tag, tensor::Device device);

}  // namespace ptrain::parallel
