#include "ptrain/launch/mlflow.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "ptrain/core/error.h"

namespace ptrain::launch {
namespace {

namespace fs = std::filesystem;

constexpr int kRunning = 1, kFinished = 3, kFailed = 4;  // mlflow.entities.RunStatus

void write_text(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out) throw IoError(fmt::format("cannot write {}", tmp), "check logging.mlflow");
  }
  fs::rename(tmp, path);
}

// MLflow keys allow letters, digits, _ - . space / ; anything else becomes _.
std::string key_name(const std::string& key) {
  std::string out;
  for (char c : key)
    out += (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' ||
            c == ' ')
               ? c
               : '_';
  return out;
}

std::string yaml_quote(const std::string& s) {
  return nlohmann::json(s).dump();  // a JSON string is a YAML double-quoted scalar
}

void flatten(const nlohmann::json& j, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) flatten(v, prefix.empty() ? k : prefix + "." + k, out);
    return;
  }
  out[prefix] = j.is_string() ? j.get<std::string>() : j.dump();
}

}  // namespace

std::map<std::string, std::string> flatten_json(const std::string& json) {
  std::map<std::string, std::string> out;
  flatten(nlohmann::json::parse(json), "", out);
  return out;
}

MlflowRun::MlflowRun(const std::string& root, const std::string& experiment,
                     const std::string& run_name, const std::map<std::string, std::string>& params,
                     int64_t start_ms)
    : root_(root), run_name_(run_name), start_ms_(start_ms) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a: the same name, the same experiment
  for (unsigned char c : experiment) h = (h ^ c) * 1099511628211ull;
  experiment_id_ = std::to_string(h % 1000000000000ull + 1);
  std::random_device rd;
  run_id_ =
      fmt::format("{:016x}{:016x}", (uint64_t(rd()) << 32) | rd(), (uint64_t(rd()) << 32) | rd());
  const std::string exp_dir = root + "/" + experiment_id_;
  run_dir_ = exp_dir + "/" + run_id_;
  std::error_code ec;
  for (const char* sub : {"metrics", "params", "tags", "artifacts"})
    fs::create_directories(run_dir_ + "/" + sub, ec);
  if (ec)
    throw IoError(fmt::format("logging.mlflow: cannot create {}: {}", run_dir_, ec.message()),
                  "set logging.mlflow to a writable folder");
  fs::create_directories(root + "/.trash", ec);
  if (!fs::exists(root + "/0/meta.yaml"))  // MLflow's UI expects its Default experiment
    fs::create_directories(root + "/0", ec),
        write_text(root + "/0/meta.yaml",
                   fmt::format("artifact_location: {}\nexperiment_id: '0'\nlifecycle_stage: "
                               "active\nname: Default\n",
                               yaml_quote("file://" + fs::absolute(root + "/0").string())));
  if (!fs::exists(exp_dir + "/meta.yaml"))
    write_text(exp_dir + "/meta.yaml",
               fmt::format("artifact_location: {}\nexperiment_id: '{}'\nlifecycle_stage: "
                           "active\nname: {}\n",
                           yaml_quote("file://" + fs::absolute(exp_dir).string()), experiment_id_,
                           yaml_quote(experiment)));
  for (const auto& [k, v] : params) write_text(run_dir_ + "/params/" + key_name(k), v);
  const char* user = std::getenv("USER");
  write_text(run_dir_ + "/tags/mlflow.runName", run_name);
  write_text(run_dir_ + "/tags/mlflow.source.name", "ptrain");
  write_text(run_dir_ + "/tags/mlflow.source.type", "LOCAL");
  write_text(run_dir_ + "/tags/mlflow.user", user ? user : "unknown");
  write_meta(kRunning, 0);
}

void MlflowRun::write_meta(int status, int64_t end_ms) const {
  const char* user = std::getenv("USER");
  write_text(run_dir_ + "/meta.yaml",
             fmt::format("artifact_uri: {}\nend_time: {}\nentry_point_name: ''\nexperiment_id: "
                         "'{}'\nlifecycle_stage: active\nrun_id: {}\nrun_name: {}\nrun_uuid: {}\n"
                         "source_name: ''\nsource_type: 4\nsource_version: ''\nstart_time: {}\n"
                         "status: {}\ntags: []\nuser_id: {}\n",
                         yaml_quote("file://" + fs::absolute(run_dir_ + "/artifacts").string()),
                         end_ms > 0 ? std::to_string(end_ms) : "null", experiment_id_, run_id_,
                         yaml_quote(run_name_), run_id_, start_ms_, status,
                         yaml_quote(user ? user : "unknown")));
}

void MlflowRun::log_metrics(const std::string& json, int64_t unix_ms) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) return;
  const int64_t step = j["step"].get<int64_t>();
  for (const auto& [key, value] : j.items()) {
    if (key == "step" || key == "total_steps" || !value.is_number()) continue;
    std::ofstream out(run_dir_ + "/metrics/" + key_name(key), std::ios::app);
    out << unix_ms << " " << fmt::format("{}", value.get<double>()) << " " << step << "\n";
  }
}

void MlflowRun::finish(bool ok, int64_t end_ms) {
  write_meta(ok ? kFinished : kFailed, end_ms);
}

}  // namespace ptrain::launch
