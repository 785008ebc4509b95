// The family registry, the built-in families and the pieces every family shares (HostBatch,
// the default checkpoint config).
#include "ptrain/models/registry.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <mutex>
#include <nlohmann/json.hpp>

#include "ptrain/core/error.h"
#include "ptrain/spec/plan.h"

namespace ptrain::models {

// Defined in each built-in family's folder.
std::shared_ptr<const Family> make_gpt_family();
std::shared_ptr<const Family> make_mlp_family();
std::shared_ptr<const Family> make_bert_family();
std::shared_ptr<const Family> make_dlrm_family();
std::shared_ptr<const Family> make_resnet_family();

namespace {

struct Registry {
  std::mutex mu;
  std::vector<std::shared_ptr<const Family>> families;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void register_family(std::shared_ptr<const Family> family) {
  PTRAIN_CHECK(family != nullptr, "null model family");
  {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    bool replaced = false;
    for (auto& f : r.families)
      if (f->type() == family->type()) f = family, replaced = true;
    if (!replaced) r.families.push_back(family);
  }
  spec::register_model_schema(family);
}

void register_builtin_families() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_family(make_gpt_family());
    register_family(make_mlp_family());
    register_family(make_bert_family());
    register_family(make_dlrm_family());
    register_family(make_resnet_family());
  });
}

const Family& family(const std::string& type) {
  register_builtin_families();
  {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    for (const auto& f : r.families)
      if (f->type() == type) return *f;
  }
  throw ConfigError(fmt::format("model.type `{}` is not a registered model family", type),
                    fmt::format("registered: {}", fmt::join(family_types(), ", ")));
}

std::vector<std::string> family_types() {
  register_builtin_families();
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> out;
  for (const auto& f : r.families) out.push_back(f->type());
  return out;
}

std::vector<std::pair<int, int>> stage_ranges(const spec::JobSpec& spec) {
  std::vector<std::pair<int, int>> out;
  int begin = 0;
  for (int c : spec::stage_layers(spec)) {
    out.emplace_back(begin, begin + c);
    begin += c;
  }
  return out;
}

std::unique_ptr<nn::Model> make_model(const spec::JobSpec& spec, tensor::Device device, int stage,
                                      int tp_rank, int dp_rank) {
  ModelPlace place;
  place.dp_rank = dp_rank;
  place.dp_size = spec.parallel.data;
  place.device = device;
  place.stage = stage;
  place.stages = spec.parallel.pipeline;
  place.layers = stage_ranges(spec).at(static_cast<size_t>(stage));
  place.tp_rank = tp_rank;
  place.tp_size = spec.parallel.tensor;
  return family_of(spec).make_model(spec, place);
}

std::string Family::checkpoint_config(const spec::ModelSpec& m) const {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& k : keys()) {
    const spec::ModelValue& v = m.values.count(k.name) ? m.values.at(k.name) : k.default_value;
    if (auto* i = std::get_if<int64_t>(&v))
      j[k.name] = *i;
    else if (auto* d = std::get_if<double>(&v))
      j[k.name] = *d;
    else if (auto* b = std::get_if<bool>(&v))
      j[k.name] = *b;
    else if (auto* t = std::get_if<std::string>(&v))
      j[k.name] = *t;
    else if (auto* l = std::get_if<std::vector<int64_t>>(&v))
      j[k.name] = *l;
  }
  return j.dump();
}

HostBatch::HostBatch(const std::vector<TensorSpec>& schema, int B, int T) {
  batch_.B = B;
  batch_.T = T;
  storage_.reserve(schema.size());
  for (const auto& t : schema) {
    size_t bytes = size_t(tensor::shape_numel(t.shape)) * tensor::dtype_size(t.dtype);
    storage_.emplace_back((bytes + 7) / 8, 0);
    batch_.add(t.name, t.dtype, t.shape, storage_.back().data());
  }
}

void* HostBatch::data(const std::string& name, tensor::DType dtype) {
  const nn::BatchTensor* t = batch_.find(name);
  PTRAIN_CHECK(t != nullptr, "the batch has no tensor {}", name);
  PTRAIN_CHECK(t->dtype == dtype, "batch tensor {} has another dtype", name);
  return const_cast<void*>(t->data);
}

int32_t* HostBatch::i32(const std::string& name) {
  return static_cast<int32_t*>(data(name, tensor::DType::kI32));
}

float* HostBatch::f32(const std::string& name) {
  return static_cast<float*>(data(name, tensor::DType::kF32));
}

}  // namespace ptrain::models
