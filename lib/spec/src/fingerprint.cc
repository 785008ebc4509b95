// Spec fingerprints: what a checkpoint records about the job that wrote it, so that resuming
// another job's checkpoint is refused (checkpoint.resume: force overrides).
#include <cinttypes>
#include <cstdio>

#include "ptrain/spec/spec.h"

namespace ptrain::spec {
namespace {

std::string fnv1a_hex(const std::string& text) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, h);
  return buf;
}

}  // namespace

std::map<std::string, std::string> fingerprints(const JobSpec& spec) {
  // Each part is the resolved YAML of a spec that differs from the defaults only in that part,
  // so a key added to the schema later is covered without a change here.
  JobSpec model;
  model.model = spec.model;
  model.model.init_from.clear();  // where the first weights came from does not matter now
  JobSpec data;
  data.model.type = spec.model.type;
  data.data = spec.data;
  JobSpec train;
  train.model.type = spec.model.type;
  train.train = spec.train;
  // A resumed run may go on for more steps and log or evaluate at another rate.
  train.train.steps = TrainSpec{}.steps;
  train.train.log_every = TrainSpec{}.log_every;
  train.train.eval_every = TrainSpec{}.eval_every;
  // grad_accum only says how the global batch is split over time: an elastic job that shrinks
  // raises it so the global batch stays the same, and must resume the same checkpoint.
  train.train.grad_accum = TrainSpec{}.grad_accum;
  return {{"model", fnv1a_hex(to_yaml(model))},
          {"data", fnv1a_hex(to_yaml(data))},
          {"train", fnv1a_hex(to_yaml(train))}};
}

}  // namespace ptrain::spec
