// The model-family registry: the one door through which a model enters ptrain. A family
// registered here is known to the spec loader (its keys and checks), `ptrain validate` (its
// plan figures), the trainer and the parallel strategies; nothing else names it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ptrain/models/family.h"
#include "ptrain/spec/job_spec.h"

namespace ptrain::models {

// Adds (or replaces) a family; its schema goes to the spec loader too.
void register_family(std::shared_ptr<const Family> family);
// Registers the families that ship with ptrain (gpt, mlp, bert, resnet). Idempotent; every
// program that loads specs calls it first (the CLI's main, the test main).
void register_builtin_families();

// The family of `type`; throws ConfigError listing the registered ones.
const Family& family(const std::string& type);
inline const Family& family_of(const spec::JobSpec& spec) {
  return family(spec.model.type);
}
std::vector<std::string> family_types();

// Pipeline layers [begin, end) of every stage: parallel.stages, else the family's default
// split (the same one `ptrain validate` prints).
std::vector<std::pair<int, int>> stage_ranges(const spec::JobSpec& spec);

// The model of one rank: built by its family for (device, pipeline stage, tensor shard).
std::unique_ptr<nn::Model> make_model(const spec::JobSpec& spec, tensor::Device device, int stage,
                                      int tp_rank, int dp_rank = 0);

}  // namespace ptrain::models
