// The model-family schema registry and ModelSpec's typed reads.
#include "ptrain/spec/model_schema.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <mutex>

#include "ptrain/core/error.h"

namespace ptrain::spec {
namespace {

struct Registry {
  std::mutex mu;
  std::vector<std::shared_ptr<const ModelSchema>> schemas;
};

Registry& registry() {
  static Registry r;
  return r;
}

const char* kind_name(const ModelValue& v) {
  switch (v.index()) {
    case 0:
      return "unset";
    case 1:
      return "an integer";
    case 2:
      return "a number";
    case 3:
      return "a boolean";
    case 4:
      return "a string";
    default:
      return "a list of integers";
  }
}

}  // namespace

ModelKey ModelKey::integer(std::string name, int64_t def, int64_t lo, int64_t hi,
                           std::string help) {
  return {std::move(name), Kind::kInt, def, double(lo), double(hi), {}, std::move(help)};
}

ModelKey ModelKey::required_integer(std::string name, int64_t lo, int64_t hi, std::string help) {
  return {std::move(name), Kind::kInt, {}, double(lo), double(hi), {}, std::move(help)};
}

ModelKey ModelKey::number(std::string name, double def, double lo, double hi, std::string help) {
  return {std::move(name), Kind::kNumber, def, lo, hi, {}, std::move(help)};
}

ModelKey ModelKey::flag(std::string name, bool def, std::string help) {
  return {std::move(name), Kind::kBool, def, 0, 0, {}, std::move(help)};
}

ModelKey ModelKey::choice(std::string name, std::string def, std::vector<std::string> choices,
                          std::string help) {
  return {std::move(name),    Kind::kChoice,  std::move(def), 0, 0,
          std::move(choices), std::move(help)};
}

ModelKey ModelKey::int_list(std::string name, std::vector<int64_t> def, int64_t lo, int64_t hi,
                            std::string help) {
  return {std::move(name), Kind::kIntList, std::move(def), double(lo), double(hi), {},
          std::move(help)};
}

const ModelKey* ModelSchema::find_key(const std::string& name) const {
  for (const auto& k : keys())
    if (k.name == name) return &k;
  return nullptr;
}

std::vector<int> ModelSchema::default_stages(const JobSpec& spec) const {
  const int stages = spec.parallel.pipeline, layers = pipeline_layers(spec.model);
  std::vector<int> out(static_cast<size_t>(stages), layers / stages);
  for (int i = 0; i < layers % stages; ++i) ++out[static_cast<size_t>(i)];
  return out;
}

void register_model_schema(std::shared_ptr<const ModelSchema> schema) {
  PTRAIN_CHECK(schema != nullptr, "null model schema");
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (auto& s : r.schemas)
    if (s->type() == schema->type()) {
      s = std::move(schema);
      return;
    }
  r.schemas.push_back(std::move(schema));
}

const ModelSchema* find_model_schema(const std::string& type) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const auto& s : r.schemas)
    if (s->type() == type) return s.get();
  return nullptr;
}

std::vector<std::string> model_types() {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> out;
  for (const auto& s : r.schemas) out.push_back(s->type());
  return out;
}

const ModelSchema& model_schema(const std::string& type) {
  if (const ModelSchema* s = find_model_schema(type)) return *s;
  auto types = model_types();
  if (types.empty())
    throw Error(
        fmt::format("model.type {}: no model families are registered in this program", type),
        "call ptrain::models::register_builtin_families() before loading specs");
  throw ConfigError(fmt::format("model.type `{}` is not a registered model family", type),
                    fmt::format("registered: {}", fmt::join(types, ", ")));
}

const ModelValue& ModelSpec::value(const std::string& key) const {
  auto it = values.find(key);
  if (it != values.end()) return it->second;
  const ModelKey* k = model_schema(type).find_key(key);
  PTRAIN_CHECK(k != nullptr, "model type {} has no key {}", type, key);
  PTRAIN_CHECK(k->default_value.index() != 0, "model.{} of type {} is required but unset", key,
               type);
  return k->default_value;
}

int64_t ModelSpec::integer(const std::string& key) const {
  const ModelValue& v = value(key);
  PTRAIN_CHECK(std::holds_alternative<int64_t>(v), "model.{} is {}, not an integer", key,
               kind_name(v));
  return std::get<int64_t>(v);
}

double ModelSpec::number(const std::string& key) const {
  const ModelValue& v = value(key);
  if (std::holds_alternative<int64_t>(v)) return double(std::get<int64_t>(v));
  PTRAIN_CHECK(std::holds_alternative<double>(v), "model.{} is {}, not a number", key,
               kind_name(v));
  return std::get<double>(v);
}

bool ModelSpec::flag(const std::string& key) const {
  const ModelValue& v = value(key);
  PTRAIN_CHECK(std::holds_alternative<bool>(v), "model.{} is {}, not a boolean", key, kind_name(v));
  return std::get<bool>(v);
}

std::string ModelSpec::text(const std::string& key) const {
  const ModelValue& v = value(key);
  PTRAIN_CHECK(std::holds_alternative<std::string>(v), "model.{} is {}, not a string", key,
               kind_name(v));
  return std::get<std::string>(v);
}

std::vector<int64_t> ModelSpec::ints(const std::string& key) const {
  const ModelValue& v = value(key);
  PTRAIN_CHECK(std::holds_alternative<std::vector<int64_t>>(v), "model.{} is {}, not a list", key,
               kind_name(v));
  return std::get<std::vector<int64_t>>(v);
}

}  // namespace ptrain::spec
