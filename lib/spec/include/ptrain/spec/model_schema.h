// A model family's part of the job-spec schema (docs/ARCHITECTURE.md, "Model families"): the
// keys of its `model:` section with their types, defaults and ranges, the data types it reads,
// its cross-field checks and the figures `ptrain validate` prints. lib/models registers one
// schema per family; the loader, the plan and the YAML/JSON writers ask it instead of
// branching on model.type.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/spec/job_spec.h"

namespace ptrain::spec {

// One key of a family's `model:` section.
struct ModelKey {
  enum class Kind { kInt, kNumber, kBool, kString, kIntList, kChoice };
  std::string name;
  Kind kind = Kind::kInt;
  ModelValue default_value;          // monostate: the key is required
  double lo = 0, hi = 0;             // inclusive range of an int, a number or a list item
  std::vector<std::string> choices;  // kChoice
  std::string help;                  // one line for configs/README.md and hints

  static ModelKey integer(std::string name, int64_t def, int64_t lo, int64_t hi, std::string help);
  static ModelKey required_integer(std::string name, int64_t lo, int64_t hi, std::string help);
  static ModelKey number(std::string name, double def, double lo, double hi, std::string help);
  static ModelKey flag(std::string name, bool def, std::string help);
  static ModelKey choice(std::string name, std::string def, std::vector<std::string> choices,
                         std::string help);
  static ModelKey int_list(std::string name, std::vector<int64_t> def, int64_t lo, int64_t hi,
                           std::string help);
};

// Where a family's check reports: fails at the first of `paths` the spec set (file:line:col,
// key path, hint), exactly like the loader's own checks.
class SpecChecker {
 public:
  virtual ~SpecChecker() = default;
  [[noreturn]] virtual void fail_at(std::initializer_list<std::string> paths,
                                    const std::string& what, const std::string& hint) const = 0;
  virtual void warn_at(std::initializer_list<std::string> paths, const std::string& what) const = 0;
};

// The figures of one pipeline stage's rank (its tensor shard), for the plan.
struct StageFigures {
  int64_t parameters = 0;       // elements this rank holds
  int64_t buffers = 0;          // non-parameter state (BatchNorm statistics), elements
  double activation_bytes = 0;  // for `in_flight` microbatches
};

class ModelSchema {
 public:
  virtual ~ModelSchema() = default;

  virtual std::string type() const = 0;                     // `model.type`
  virtual std::string summary() const = 0;                  // one line: what the family is
  virtual const std::vector<ModelKey>& keys() const = 0;    // without `type`, `init_from`
  virtual std::vector<std::string> data_types() const = 0;  // data.type values it reads
  // Fills in keys whose default comes from elsewhere in the spec (an image model's channels
  // and classes from its data set's header), before check(); the resolved values are the
  // spec's from then on (job.yaml records them). Nothing by default.
  virtual void resolve(JobSpec& /*spec*/, const SpecChecker& /*c*/) const {}
  // Cross-field checks (shape against the mesh, data, precision); the loader has applied
  // defaults and checked each key's own range first.
  virtual void check(const JobSpec& spec, const SpecChecker& c) const = 0;

  // Pipeline parallelism: the layers a pipeline splits (GPT blocks, MLP Linear layers), the
  // key that sets them, and what they are called. A family without pipeline support returns 0
  // from max_pipeline() (and the loader refuses parallel.pipeline > 1 with the reason).
  virtual int pipeline_layers(const ModelSpec& m) const = 0;
  virtual std::string layers_key() const = 0;  // "model.layers"
  virtual std::string layer_word() const = 0;  // "blocks"
  virtual bool supports_pipeline() const { return true; }
  // Whether parallel.embeddings: table|row applies (the model has sharded embedding tables).
  virtual bool supports_sharded_embeddings() const { return false; }
  // Extra lines for `ptrain validate` (where sharded tables live, memory per worker).
  virtual std::vector<std::string> plan_notes(const JobSpec& /*spec*/) const { return {}; }
  // Layers per stage when parallel.stages is not given; the default splits evenly by count.
  virtual std::vector<int> default_stages(const JobSpec& spec) const;

  // Whole-model parameter count (tied tensors once) and one stage rank's figures; `elem` is
  // the activation element size in bytes (2 for bf16, 4 for fp32).
  virtual int64_t parameters(const ModelSpec& m) const = 0;
  virtual StageFigures stage_figures(const JobSpec& spec, int stage, int first_layer, int layers,
                                     int64_t micro_batch, int64_t in_flight, int elem) const = 0;

  // What one sample of the batch is ("sequences", "images", "samples") and the targets per
  // sample the loss averages over ("tokens" for a GPT: seq_len of them).
  virtual std::string sample_word() const { return "samples"; }
  virtual std::string target_word() const { return "samples"; }
  virtual int64_t targets_per_sample(const ModelSpec&) const { return 1; }

  const ModelKey* find_key(const std::string& name) const;
};

// The registry (filled by lib/models; see models::register_builtin_families()). Registering a
// type twice replaces the earlier schema.
void register_model_schema(std::shared_ptr<const ModelSchema> schema);
const ModelSchema* find_model_schema(const std::string& type);
std::vector<std::string> model_types();  // registered, in registration order
// The schema of `type`; throws ConfigError listing the registered types when there is none.
const ModelSchema& model_schema(const std::string& type);

}  // namespace ptrain::spec
