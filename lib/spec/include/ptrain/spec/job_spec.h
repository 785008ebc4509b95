// The job spec as plain structs: what `spec::load` returns after parsing, defaults, `--set`
// overrides and validation. No YAML types appear outside lib/spec. configs/README.md describes
// every field.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace ptrain::spec {

struct HostSlots {
  std::string host;
  int slots = 0;  // 0 = procs_per_node

  bool operator==(const HostSlots&) const = default;
};

struct SshSpec {
  std::string user;                  // empty = ssh's default
  int port = 0;                      // 0 = ssh's default
  std::string identity;              // private key file
  std::vector<std::string> options;  // extra `-o Key=Value` options
  std::string config;                // ssh_config file (-F)

  bool operator==(const SshSpec&) const = default;
};

struct NodesSpec {
  std::vector<HostSlots> hosts{{"localhost", 0}};
  std::string hostfile;         // DeepSpeed/OpenMPI `host slots=N`
  int procs_per_node = 1;       // resolved; `gpu` resolves to the GPU count
  bool procs_per_gpu = false;   // the spec said `procs_per_node: gpu`
  std::string device = "auto";  // auto|cpu|cuda
  int threads_per_proc = 0;     // 0 = 1 when several workers share a node, else all cores
  SshSpec ssh;
  std::string remote_ptrain;  // default: the launcher's own absolute path
  bool ship_binary = false;
  // Elastic jobs: the fewest hosts the job may shrink to when hosts are lost; 0 = all of them
  // (the job never shrinks).
  int min_nodes = 0;

  bool operator==(const NodesSpec&) const = default;
};

struct RendezvousSpec {
  std::string bind;  // empty = 127.0.0.1 for `run`, the route to hosts for `launch`
  int port = 0;      // 0 = kernel-chosen
  double timeout_s = 60;
  // auto|on|off: mutual TLS on every gRPC channel; auto = on when an address is not loopback.
  std::string tls = "auto";
  // Jobs of more nodes than this: each node's relay talks to a parent relay instead of the
  // coordinator, which then sees only the top `tree_fanout` nodes. 0 = never.
  int tree_fanout = 32;

  bool operator==(const RendezvousSpec&) const = default;
};

struct ParallelSpec {
  int data = 1;  // resolved from `auto`
  bool data_auto = false;
  int tensor = 1;
  int pipeline = 1;
  std::string data_mode = "sync";  // sync|async
  int staleness = 4;
  int servers = 1;
  int zero = 0;  // 0|1
  double bucket_mb = 25;
  std::string schedule = "1f1b";  // gpipe|1f1b
  int microbatches = 1;
  std::vector<int> stages;    // layer counts per pipeline stage; empty = balanced
  std::string comm = "auto";  // auto|gloo|nccl|shm
  // Embedding tables (families with sharded parameters, dlrm): every worker holds every table
  // (replicated), each table lives on one data rank (table), or every table's rows are split
  // across the data group (row).
  std::string embeddings = "replicated";  // replicated|table|row
  // async, `ptrain launch`: the host of each parameter server (server i on
  // server_hosts[i % size]); empty = round-robin over the job's hosts.
  std::vector<std::string> server_hosts;
  int server_port = 0;  // async: server i listens on server_port + i; 0 = kernel-chosen

  bool operator==(const ParallelSpec&) const = default;
};

// A value of a model family's key (spec/model_schema.h declares each family's keys).
using ModelValue =
    std::variant<std::monostate, int64_t, double, bool, std::string, std::vector<int64_t>>;

// The `model:` section: the family (`type`), its keys, and weights to start from. A key the spec
// did not set reads as the family's default.
struct ModelSpec {
  std::string type = "gpt";                  // a registered family (ptrain validate lists them)
  std::map<std::string, ModelValue> values;  // the family's keys the spec set (or defaulted)
  std::string init_from;                     // safetensors path (resolved)

  // The value of `key`, or the family's default; throws ptrain::Error for a key the family
  // does not have or a value of another kind.
  int64_t integer(const std::string& key) const;
  double number(const std::string& key) const;  // ints read as numbers too
  bool flag(const std::string& key) const;
  std::string text(const std::string& key) const;
  std::vector<int64_t> ints(const std::string& key) const;
  // int(key) for keys whose range fits an int (layer counts, widths).
  int i(const std::string& key) const { return static_cast<int>(integer(key)); }

  ModelSpec& set(const std::string& key, int64_t v) { return put(key, v); }
  ModelSpec& set(const std::string& key, int v) { return put(key, int64_t{v}); }
  ModelSpec& set(const std::string& key, double v) { return put(key, v); }
  ModelSpec& set(const std::string& key, bool v) { return put(key, v); }
  ModelSpec& set(const std::string& key, std::string v) { return put(key, std::move(v)); }
  ModelSpec& set(const std::string& key, const char* v) { return put(key, std::string(v)); }
  ModelSpec& set(const std::string& key, std::vector<int64_t> v) { return put(key, std::move(v)); }
  ModelSpec& set(const std::string& key, const std::vector<int>& v) {
    return put(key, std::vector<int64_t>(v.begin(), v.end()));
  }

  bool operator==(const ModelSpec&) const = default;

 private:
  ModelSpec& put(const std::string& key, ModelValue v) {
    values[key] = std::move(v);
    return *this;
  }
  const ModelValue& value(const std::string& key) const;
};

// Image data: per-channel normalisation of pixel/255, and training-time augmentation.
struct NormalizeSpec {
  std::vector<double> mean;  // empty: no normalisation
  std::vector<double> std;

  bool operator==(const NormalizeSpec&) const = default;
};

struct AugmentSpec {
  int crop_padding = 0;  // random crop of the image padded by this many zero pixels
  bool hflip = false;    // random horizontal flip

  bool enabled() const { return crop_padding > 0 || hflip; }
  bool operator==(const AugmentSpec&) const = default;
};

struct DataSpec {
  std::string type = "synthetic";  // tokens|text|synthetic|csv|idx|cifar
  std::string path;                // resolved against the spec's folder
  std::string labels;              // idx: the labels file of `path`
  std::string eval_path;           // a separate eval (test) split; else eval_fraction
  std::string eval_labels;         // idx: the labels of eval_path
  int batch_size = 8;              // global, in samples (sequences for a GPT)
  bool shuffle = false;
  double eval_fraction = 0;
  // --- masked-language-model data (model.type: bert) ---
  double mask_prob = 0.15;  // share of the positions masked, in (0, 1)
  // --- record readers (criteo): a malformed line is an error or is skipped and counted ---
  std::string bad_lines = "error";  // error|skip
  // --- tokenizer (data.type text: how the text becomes ids, default bytes; data.type tokens:
  // the tokenizer that made the file, recorded in checkpoints for `ptrain generate`) ---
  std::string tokenizer;  // ""|bytes|gpt2
  NormalizeSpec normalize;
  AugmentSpec augment;

  bool has_eval() const { return eval_fraction > 0 || !eval_path.empty(); }

  bool operator==(const DataSpec&) const = default;
};

// train.optimizer.embeddings: the sparse optimizer of sharded embedding tables (rows updated only
// where looked up). lr 0 = the job's lr; the LR schedule scales it the same way.
struct EmbeddingOptimizerSpec {
  std::string type = "sgd";  // sgd|adagrad (row-wise, TorchRec's default)
  double lr = 0.0;
  double eps = 1e-8;  // adagrad

  bool operator==(const EmbeddingOptimizerSpec&) const = default;
};

struct OptimizerSpec {
  std::string type = "adamw";  // adamw|sgd
  double lr = 3e-4;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double momentum = 0.0;
  bool nesterov = false;
  double grad_clip = 0.0;  // 0 = off
  EmbeddingOptimizerSpec embeddings;

  bool operator==(const OptimizerSpec&) const = default;
};

struct LrScheduleSpec {
  int warmup = 0;
  std::string decay = "none";  // none|cosine|linear
  double min_lr = 0.0;

  bool operator==(const LrScheduleSpec&) const = default;
};

struct TrainSpec {
  int64_t steps = 100;
  uint64_t seed = 1;
  std::string precision = "fp32";  // fp32|bf16
  int grad_accum = 1;
  int log_every = 1;
  int eval_every = 0;          // 0 = never
  double label_smoothing = 0;  // classifiers' cross-entropy (PyTorch's label_smoothing)
  OptimizerSpec optimizer;
  LrScheduleSpec schedule;

  bool operator==(const TrainSpec&) const = default;
};

struct CheckpointSpec {
  int every = 0;    // 0 = only at the end
  std::string dir;  // empty = RUN_DIR/checkpoints
  int keep = 2;
  std::string resume = "auto";  // auto|never|force (auto, even another job's)|PATH
  bool async = true;  // write and fsync on a background thread; the step waits for the copy only

  bool operator==(const CheckpointSpec&) const = default;
};

struct FaultToleranceSpec {
  int max_restarts = 0;
  double heartbeat_s = 5;
  double hang_timeout_s = 300;
  double term_grace_s = 5;

  bool operator==(const FaultToleranceSpec&) const = default;
};

struct LoggingSpec {
  std::string dir = "runs";       // resolved against the spec's folder
  std::string console = "rank0";  // rank0|all|none
  std::string level = "info";
  // private: run folders 0700 and every file ptrain writes 0600 (job.yaml, logs, checkpoints);
  // shared: the user's umask as it is.
  std::string mode = "private";
  bool tensorboard = true;  // RUN_DIR/tb/events.out.tfevents.* beside metrics.jsonl
  std::string mlflow;       // an MLflow file store to log the run to ("" = none; resolved)

  bool operator==(const LoggingSpec&) const = default;
};

struct JobSpec {
  std::string name = "job";
  std::vector<std::string> command;  // non-empty: launcher-only mode
  std::map<std::string, std::string> env;
  NodesSpec nodes;
  RendezvousSpec rendezvous;
  ParallelSpec parallel;
  ModelSpec model;
  DataSpec data;
  TrainSpec train;
  CheckpointSpec checkpoint;
  FaultToleranceSpec fault_tolerance;
  LoggingSpec logging;

  std::string source_path;  // the file it came from ("" for in-memory specs)

  bool launcher_only() const { return !command.empty(); }
  int world_size() const { return parallel.data * parallel.tensor * parallel.pipeline; }

  bool operator==(const JobSpec&) const = default;
};

}  // namespace ptrain::spec
