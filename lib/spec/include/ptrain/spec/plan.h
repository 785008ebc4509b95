// The resolved plan of a job: world size, process mesh, rank placement, parameter count and the
// memory each rank needs. What `ptrain validate` prints; computed from a JobSpec alone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ptrain/spec/job_spec.h"

namespace ptrain::spec {

// Where one rank runs and its coordinates in the mesh (docs/ARCHITECTURE.md, "The mesh": tensor
// innermost).
struct RankPlace {
  int rank = 0;
  int host_index = 0;
  int local_rank = 0;
  int dp = 0, tp = 0, pp = 0;
};

struct HostRanks {
  std::string host;
  std::vector<int> ranks;  // consecutive global ranks on this host
};

// Memory of one rank in bytes; the plan reports the largest rank (the pipeline stage that
// holds the most).
struct RankMemory {
  int64_t parameters = 0;  // parameter count held by this rank
  int64_t param_bytes = 0;
  int64_t grad_bytes = 0;
  int64_t optimizer_bytes = 0;
  int64_t activation_bytes = 0;  // estimate for the microbatches in flight
  int64_t buffer_bytes = 0;      // model state that is not a parameter (BatchNorm statistics)
  int64_t total_bytes() const {
    return param_bytes + grad_bytes + optimizer_bytes + activation_bytes + buffer_bytes;
  }
};

struct Plan {
  std::string name;
  bool launcher_only = false;
  std::vector<std::string> command;
  std::string device;
  int world_size = 1;
  int data = 1, tensor = 1, pipeline = 1;
  std::string data_mode;
  int zero = 0;
  std::vector<HostRanks> hosts;
  std::vector<RankPlace> ranks;   // indexed by rank
  std::vector<int> stage_layers;  // layers (gpt blocks or mlp Linear layers) per pipeline stage
  // Elastic jobs: nodes.min_nodes (0 = not elastic) and the world sizes the job can shrink to
  // (spec/elastic.h).
  int min_nodes = 0;
  std::vector<int> shrink_worlds;

  std::string model_type;
  std::string sample_word = "samples";  // what one sample of the batch is ("sequences")
  std::string target_word = "samples";  // what the loss averages over ("tokens")
  int64_t parameters = 0;               // whole model (GPT-2: LM head tied to wte)
  RankMemory memory;                    // the largest rank
  int largest_stage = 0;                // the pipeline stage of `memory`

  int global_batch = 0;  // samples (sequences for a GPT) per optimizer step
  int micro_batch = 0;   // per data rank, per microbatch, per accumulation step
  int microbatches = 1;
  int grad_accum = 1;
  int64_t tokens_per_step = 0;  // targets per step: global_batch x the family's per sample
  int64_t steps = 0;
  std::vector<std::string> notes;  // the family's own lines (ModelSchema::plan_notes)
};

// Rank r's coordinates: tp = r % T, dp = (r / T) % D, pp = r / (T * D).
RankPlace rank_coords(int rank, int data, int tensor);
Plan make_plan(const JobSpec& spec);
// Layers per pipeline stage: parallel.stages when given, else the family's default split
// (spec/model_schema.h; the GPT balances parameters per stage).
std::vector<int> stage_layers(const JobSpec& spec);
std::string format_plan(const Plan& plan);
// "1.5 GiB", "12.0 MiB", "512 B".
std::string format_bytes(int64_t bytes);

}  // namespace ptrain::spec
