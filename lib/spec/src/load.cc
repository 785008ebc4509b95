// The schema: reads every section of a job spec into JobSpec, resolves `auto`/`gpu`, paths and
// `${VAR}`, then runs the cross-field checks. Positions come from reader.h.
#include <dirent.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <sstream>

#include "input_guard.h"
#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/core/log.h"
#include "ptrain/spec/model_schema.h"
#include "ptrain/spec/spec.h"
#include "reader.h"

namespace ptrain::spec {

using detail::MapView;
using detail::Override;
using detail::Reader;

namespace {

const std::vector<std::string> kTopKeys = {
    "name",  "command", "env",   "nodes",      "rendezvous",      "parallel",
    "model", "data",    "train", "checkpoint", "fault_tolerance", "logging"};
// Variables every worker gets from ptrain itself (the torchrun set and ptrain's own); a spec's
// env: may not override them.
const std::vector<std::string> kReservedEnv = {"PTRAIN_COORDINATOR",
                                               "PTRAIN_TOKEN",
                                               "PTRAIN_RUN_DIR",
                                               "PTRAIN_NODE",
                                               "PTRAIN_RESTART",
                                               "PTRAIN_SERVER_INDEX",
                                               "PTRAIN_TLS_DIR",
                                               "RANK",
                                               "LOCAL_RANK",
                                               "WORLD_SIZE",
                                               "LOCAL_WORLD_SIZE",
                                               "GROUP_RANK",
                                               "NODE_RANK",
                                               "GROUP_WORLD_SIZE",
                                               "ROLE_RANK",
                                               "ROLE_WORLD_SIZE",
                                               "MASTER_ADDR",
                                               "MASTER_PORT",
                                               "TORCHELASTIC_RUN_ID",
                                               "TORCHELASTIC_RESTART_COUNT",
                                               "TORCHELASTIC_MAX_RESTARTS"};
// A run folder is <name>-<YYYYmmdd-HHMMSS>; file systems allow 255 bytes a name.
constexpr size_t kMaxNameLength = 100;
// The shortest timeout or interval a spec may set, in seconds.
constexpr double kMinSeconds = 0.1;

const std::vector<std::string> kAdamwKeys = {"type", "lr",           "betas",
                                             "eps",  "weight_decay", "grad_clip"};
const std::vector<std::string> kSgdKeys = {"type",     "lr",           "momentum",
                                           "nesterov", "weight_decay", "grad_clip"};

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::vector<std::string> merged(const std::vector<std::string>& a,
                                const std::vector<std::string>& b) {
  std::vector<std::string> out = a;
  for (const auto& s : b)
    if (!contains(out, s)) out.push_back(s);
  return out;
}

// GPUs visible to this process: CUDA_VISIBLE_DEVICES when set, else /dev/nvidiaN devices.
int visible_gpus() {
  if (auto cvd = env_get("CUDA_VISIBLE_DEVICES")) {
    if (cvd->empty() || *cvd == "-1") return 0;
    return static_cast<int>(std::count(cvd->begin(), cvd->end(), ',')) + 1;
  }
  int n = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/dev", ec)) {
    std::string name = entry.path().filename().string();
    if (name.size() > 6 && name.rfind("nvidia", 0) == 0 &&
        std::all_of(name.begin() + 6, name.end(), [](char c) { return std::isdigit(c); }))
      ++n;
  }
  return n;
}

std::string resolve_path(const std::string& base_dir, const std::string& p) {
  if (p.empty()) return p;
  std::filesystem::path path(p);
  if (path.is_absolute()) return path.lexically_normal().string();
  return (std::filesystem::path(base_dir) / path).lexically_normal().string();
}

bool path_exists(const std::string& p) {
  std::error_code ec;
  return std::filesystem::exists(p, ec);
}

// "host" or "host:slots" ("[::1]:4" for IPv6 addresses).
HostSlots parse_host(const Reader& r, const std::string& path, const YAML::Node& node,
                     const std::string& text) {
  HostSlots h;
  std::string slots;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos)
      r.fail(path, node, fmt::format("`{}` has no closing `]`", text), "write [ADDRESS]:SLOTS");
    h.host = text.substr(1, close - 1);
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':')
        r.fail(path, node, fmt::format("unexpected text after `]` in `{}`", text),
               "write [ADDRESS]:SLOTS");
      slots = text.substr(close + 2);
    }
  } else {
    auto colon = text.find(':');
    h.host = text.substr(0, colon);
    if (colon != std::string::npos) slots = text.substr(colon + 1);
  }
  if (h.host.empty() || h.host.find_first_of(" \t,") != std::string::npos)
    r.fail(path, node, fmt::format("`{}` is not a host name", text),
           "write one host per list item, as `name` or `name:slots`");
  if (!slots.empty() || text.back() == ':') {
    int value = 0;
    bool ok = !slots.empty() &&
              std::all_of(slots.begin(), slots.end(), [](char c) { return std::isdigit(c); });
    if (ok) value = slots.size() > 6 ? 1 << 30 : std::stoi(slots);
    if (!ok || value < 1 || value > 4096)
      r.fail(path, node, fmt::format("slots in `{}` must be a whole number from 1 to 4096", text),
             "write `host:slots`, e.g. `node1:4`");
    h.slots = value;
  }
  return h;
}

void read_nodes(Reader& r, const MapView& m, NodesSpec& nodes, const std::string& base_dir) {
  m.allow({"hosts", "hostfile", "procs_per_node", "device", "threads_per_proc", "ssh",
           "remote_ptrain", "ship_binary", "min_nodes"});
  if (m.has("hosts")) {
    auto items = r.as_string_list(m.path("hosts"), m.get("hosts"));
    if (items.empty())
      r.fail(m.path("hosts"), m.get("hosts"), "the host list is empty",
             "list at least one host, e.g. [localhost]");
    nodes.hosts.clear();
    for (size_t i = 0; i < items.size(); ++i) {
      std::string p = fmt::format("{}[{}]", m.path("hosts"), i);
      HostSlots h = parse_host(r, p, m.get("hosts")[i], items[i]);
      for (const auto& prev : nodes.hosts)
        if (prev.host == h.host)
          r.fail(p, m.get("hosts")[i], fmt::format("host `{}` is listed twice", h.host),
                 "list each host once; give it more workers with `host:slots`");
      nodes.hosts.push_back(h);
    }
  }
  if (m.has("hostfile")) {
    nodes.hostfile = resolve_path(base_dir, r.as_string(m.path("hostfile"), m.get("hostfile")));
    if (m.has("hosts"))
      r.fail(m.path("hostfile"), m.key_node("hostfile"), "both `hosts` and `hostfile` are given",
             "keep one of them");
    if (nodes.hostfile.empty())
      r.fail(m.path("hostfile"), m.get("hostfile"), "the hostfile path is empty",
             "name a file of `host slots=N` lines, or remove the key");
    std::error_code ec;
    if (!std::filesystem::is_regular_file(nodes.hostfile, ec))
      r.fail(m.path("hostfile"), m.get("hostfile"),
             fmt::format("hostfile `{}` does not exist or is not a file", nodes.hostfile),
             "relative paths are relative to the spec's folder");
  }
  if (m.has("procs_per_node")) {
    const YAML::Node& v = m.get("procs_per_node");
    std::string path = m.path("procs_per_node");
    if (v.IsScalar() && r.scalar(path, v) == "gpu") {
      nodes.procs_per_gpu = true;
      nodes.procs_per_node = visible_gpus();
      if (nodes.procs_per_node == 0)
        r.fail(path, v, "`gpu` means one worker per GPU, but this machine shows no GPU",
               "give a number of workers per node, or run where CUDA_VISIBLE_DEVICES or "
               "/dev/nvidiaN shows the GPUs");
    } else {
      if (v.IsScalar() && detail::closest(r.scalar(path, v), {"gpu"}))
        r.fail(path, v, fmt::format("expected a number or `gpu`, got `{}`", v.Scalar()),
               "did you mean `gpu`?");
      nodes.procs_per_node = static_cast<int>(r.as_int(path, v, 1, 4096));
    }
  }
  m.read_enum("device", nodes.device, {"auto", "cpu", "cuda"});
  if (nodes.procs_per_gpu && nodes.device == "cpu")
    r.fail_at({"nodes.procs_per_node"}, "`gpu` asks for one worker per GPU, but device is cpu",
              "give a number of workers per node");
  m.read("threads_per_proc", nodes.threads_per_proc, 0, 4096);
  if (m.has("ssh")) {
    MapView ssh(r, m.get("ssh"), m.path("ssh"));
    ssh.allow({"user", "port", "identity", "options", "config"});
    ssh.read("user", nodes.ssh.user);
    ssh.read("port", nodes.ssh.port, 0, 65535);
    ssh.read("identity", nodes.ssh.identity);
    if (ssh.has("options"))
      nodes.ssh.options = r.as_string_list(ssh.path("options"), ssh.get("options"));
    ssh.read("config", nodes.ssh.config);
  }
  m.read("remote_ptrain", nodes.remote_ptrain);
  m.read("ship_binary", nodes.ship_binary);
  m.read("min_nodes", nodes.min_nodes, 1, 1 << 20);
}

void read_parallel(Reader& r, const MapView& m, ParallelSpec& p) {
  m.allow({"data", "tensor", "pipeline", "data_mode", "staleness", "servers", "zero", "bucket_mb",
           "schedule", "microbatches", "stages", "comm", "embeddings", "server_hosts",
           "server_port"});
  p.data_auto = true;
  if (m.has("data")) {
    const YAML::Node& v = m.get("data");
    if (v.IsScalar() && r.scalar(m.path("data"), v) == "auto") {
      p.data_auto = true;
    } else {
      p.data_auto = false;
      p.data = static_cast<int>(r.as_int(m.path("data"), v, 1, 1 << 20));
    }
  }
  m.read("tensor", p.tensor, 1, 4096);
  m.read("pipeline", p.pipeline, 1, 4096);
  m.read_enum("data_mode", p.data_mode, {"sync", "async"});
  m.read("staleness", p.staleness, 0, 1 << 20);
  m.read("servers", p.servers, 1, 4096);
  if (m.has("zero")) {
    const YAML::Node& v = m.get("zero");
    p.zero = static_cast<int>(r.as_int(m.path("zero"), v, 0, INT32_MAX));
    if (p.zero > 1)
      r.fail(m.path("zero"), v, fmt::format("ZeRO stage {} is not supported", p.zero),
             "use 0 (off) or 1 (optimizer state sharded across data-parallel ranks)");
  }
  m.read("bucket_mb", p.bucket_mb, 0, 65536, /*lo_exclusive=*/true);
  m.read_enum("schedule", p.schedule, {"gpipe", "1f1b"});
  m.read("microbatches", p.microbatches, 1, 1 << 16);
  if (m.has("stages")) p.stages = r.as_int_list(m.path("stages"), m.get("stages"), 1, 1 << 20);
  m.read_enum("comm", p.comm, {"auto", "gloo", "nccl", "shm"});
  m.read_enum("embeddings", p.embeddings, {"replicated", "table", "row"});
  if (m.has("server_hosts"))
    p.server_hosts = r.as_string_list(m.path("server_hosts"), m.get("server_hosts"));
  m.read("server_port", p.server_port, 0, 65535);
}

// The `model:` section: `type` picks the family, whose schema (spec/model_schema.h) names the
// other keys; unset keys get the family's defaults.
void read_model(Reader& r, const MapView& m, ModelSpec& model, const std::string& base_dir) {
  std::vector<std::string> every{"type", "init_from"};
  for (const auto& type : model_types())
    for (const auto& k : model_schema(type).keys()) every.push_back(k.name);
  m.allow(every);
  if (m.has("type")) {
    std::string type = r.as_string(m.path("type"), m.get("type"));
    if (!find_model_schema(type)) {
      auto types = model_types();
      auto near = detail::closest(type, types);
      r.fail(
          m.path("type"), m.get("type"),
          fmt::format("`{}` is not a model family; registered: {}", type, fmt::join(types, ", ")),
          near ? fmt::format("did you mean `{}`?", *near) : "pick one of the registered families");
    }
    model.type = type;
  }
  const ModelSchema& schema = model_schema(model.type);
  std::vector<std::string> own;
  for (const auto& k : schema.keys()) own.push_back(k.name);
  own.push_back("init_from");
  for (const auto& key : m.keys())
    if (key != "type" && !contains(own, key))
      r.fail(m.path(key), m.key_node(key), fmt::format("not a key of model type {}", model.type),
             fmt::format("keys are {}", fmt::join(own, ", ")));
  model.values.clear();
  for (const auto& k : schema.keys()) {
    if (!m.has(k.name)) {
      if (k.default_value.index() == 0)
        r.fail_at({m.path()}, fmt::format("{} models need `{}`", model.type, k.name),
                  fmt::format("set model.{} ({})", k.name, k.help));
      model.values[k.name] = k.default_value;
      continue;
    }
    const std::string path = m.path(k.name);
    const YAML::Node& v = m.get(k.name);
    using Kind = ModelKey::Kind;
    switch (k.kind) {
      case Kind::kInt:
        model.values[k.name] = r.as_int(path, v, int64_t(k.lo), int64_t(k.hi));
        break;
      case Kind::kNumber:
        model.values[k.name] = r.as_double(path, v, k.lo, k.hi);
        break;
      case Kind::kBool:
        model.values[k.name] = r.as_bool(path, v);
        break;
      case Kind::kString:
        model.values[k.name] = r.as_string(path, v);
        break;
      case Kind::kChoice:
        model.values[k.name] = r.as_enum(path, v, k.choices);
        break;
      case Kind::kIntList: {
        auto list = r.as_int_list(path, v, int(k.lo), int(k.hi));
        model.values[k.name] = std::vector<int64_t>(list.begin(), list.end());
        break;
      }
    }
  }
  if (m.has("init_from")) {
    model.init_from = resolve_path(base_dir, r.as_string(m.path("init_from"), m.get("init_from")));
    if (!model.init_from.empty() && !path_exists(model.init_from))
      r.warn_at({m.path("init_from")},
                fmt::format("`{}` does not exist here (fine if it exists where the job runs)",
                            model.init_from));
  }
}

std::vector<double> read_number_list(Reader& r, const std::string& path, const YAML::Node& node,
                                     double lo, double hi, bool lo_exclusive) {
  if (!node.IsSequence() || node.size() == 0)
    r.fail(path, node, "expected a list of numbers",
           "write e.g. `[0.2860]` or `[0.49, 0.48, 0.45]`");
  std::vector<double> out;
  for (size_t i = 0; i < node.size(); ++i)
    out.push_back(r.as_double(fmt::format("{}[{}]", path, i), node[i], lo, hi, lo_exclusive));
  return out;
}

void read_data(Reader& r, const MapView& m, DataSpec& data, const std::string& base_dir) {
  m.allow({"type", "path", "labels", "eval_path", "eval_labels", "batch_size", "shuffle",
           "eval_fraction", "normalize", "augment", "mask_prob", "bad_lines", "tokenizer"});
  m.read_enum("bad_lines", data.bad_lines, {"error", "skip"});  // record readers (criteo)
  m.read_enum("tokenizer", data.tokenizer, {"bytes", "gpt2"});  // text and token data
  std::vector<std::string> data_types;
  for (const auto& type : model_types())
    for (const auto& d : model_schema(type).data_types())
      if (!contains(data_types, d)) data_types.push_back(d);
  m.read_enum("type", data.type, data_types);
  if (m.has("path")) data.path = resolve_path(base_dir, r.as_string(m.path("path"), m.get("path")));
  for (auto [key, out] :
       {std::pair{"labels", &data.labels}, std::pair{"eval_path", &data.eval_path},
        std::pair{"eval_labels", &data.eval_labels}}) {
    if (!m.has(key)) continue;
    *out = resolve_path(base_dir, r.as_string(m.path(key), m.get(key)));
    if (out->empty())
      r.fail(m.path(key), m.get(key), "the path is empty", "name a file, or remove the key");
    if (!path_exists(*out))
      r.warn_at(
          {m.path(key)},
          fmt::format("`{}` does not exist here (fine if it exists where the job runs)", *out));
  }
  if (m.has("normalize")) {
    MapView nm(r, m.get("normalize"), m.path("normalize"));
    nm.allow({"mean", "std"});
    if (!nm.has("mean") || !nm.has("std"))
      r.fail(m.path("normalize"), m.get("normalize"), "normalize needs both `mean` and `std`",
             "write e.g. `normalize: {mean: [0.2860], std: [0.3530]}` (per channel, on pixel/255)");
    data.normalize.mean = read_number_list(r, nm.path("mean"), nm.get("mean"), -1e6, 1e6, false);
    data.normalize.std = read_number_list(r, nm.path("std"), nm.get("std"), 0, 1e6, true);
    if (data.normalize.mean.size() != data.normalize.std.size())
      r.fail(nm.path("std"), nm.get("std"),
             fmt::format("{} std values for {} means", data.normalize.std.size(),
                         data.normalize.mean.size()),
             "give one mean and one std per image channel");
  }
  if (m.has("augment")) {
    MapView am(r, m.get("augment"), m.path("augment"));
    am.allow({"crop_padding", "hflip"});
    am.read("crop_padding", data.augment.crop_padding, 0, 1024);
    am.read("hflip", data.augment.hflip);
  }
  m.read("batch_size", data.batch_size, 1, 1 << 24);
  m.read("shuffle", data.shuffle);
  if (m.has("eval_fraction")) {
    data.eval_fraction = r.as_double(m.path("eval_fraction"), m.get("eval_fraction"), 0, 1);
    if (data.eval_fraction >= 1)
      r.fail(m.path("eval_fraction"), m.get("eval_fraction"),
             "must be below 1 (it is the share of the data held out for evaluation)",
             "use e.g. 0.05, or 0 for no evaluation");
  }
  if (!data.eval_path.empty() && data.eval_fraction > 0)
    r.fail_at({m.path("eval_fraction")}, "both eval_path and eval_fraction name an eval split",
              "keep one: eval_path for a separate test split, eval_fraction to hold out data");
  // --- masked-language-model data (model.type: bert) ---
  if (m.has("mask_prob")) {
    data.mask_prob = r.as_double(m.path("mask_prob"), m.get("mask_prob"), 0, 1);
    if (data.mask_prob <= 0 || data.mask_prob >= 1)
      r.fail(m.path("mask_prob"), m.get("mask_prob"), "must be inside (0, 1)",
             "BERT masks 0.15 of the positions");
  }
  // --- end masked-language-model data ---
  if (!data.tokenizer.empty() && data.type != "text" && data.type != "tokens")
    r.fail_at({m.path("tokenizer")},
              fmt::format("a tokenizer applies to text or token data, not {}", data.type),
              "remove data.tokenizer, or set data.type to text");
  // Generated data (`synthetic`, and a family's `synthetic-<name>` such as synthetic-criteo).
  if (data.type.rfind("synthetic", 0) == 0) {
    if (!data.path.empty())
      r.fail_at({m.path("path")}, "synthetic data takes no path",
                "remove data.path, or set data.type to tokens, text or csv");
  } else if (data.path.empty()) {
    r.fail_at({m.path("type"), m.path()}, fmt::format("{} data needs a `path`", data.type),
              "set data.path (relative to the spec's folder)");
  } else if (!path_exists(data.path)) {
    r.warn_at(
        {m.path("path")},
        fmt::format("`{}` does not exist here (fine if it exists where the job runs)", data.path));
  }
}

void read_train(Reader& r, const MapView& m, TrainSpec& t) {
  m.allow({"steps", "seed", "precision", "grad_accum", "log_every", "eval_every", "label_smoothing",
           "optimizer", "schedule"});
  m.read("steps", t.steps, 0, int64_t{1} << 40);
  m.read("seed", t.seed);
  m.read_enum("precision", t.precision, {"fp32", "bf16"});
  m.read("grad_accum", t.grad_accum, 1, 1 << 16);
  m.read("log_every", t.log_every, 1, INT32_MAX);
  m.read("eval_every", t.eval_every, 0, INT32_MAX);
  if (m.has("label_smoothing")) {
    t.label_smoothing = r.as_double(m.path("label_smoothing"), m.get("label_smoothing"), 0, 1);
    if (t.label_smoothing >= 1)
      r.fail(m.path("label_smoothing"), m.get("label_smoothing"), "must be below 1",
             "use e.g. 0.1, or 0 for plain cross-entropy");
  }
  OptimizerSpec& o = t.optimizer;
  if (m.has("optimizer")) {
    MapView om(r, m.get("optimizer"), m.path("optimizer"));
    om.allow(merged(merged(kAdamwKeys, kSgdKeys), {"embeddings"}));
    om.read_enum("type", o.type, {"adamw", "sgd"});
    const auto& own = o.type == "adamw" ? kAdamwKeys : kSgdKeys;
    for (const auto& key : om.keys())
      if (!contains(own, key) && key != "embeddings")
        r.fail(om.path(key), om.key_node(key),
               fmt::format("`{}` does not apply to the {} optimizer", key, o.type),
               fmt::format("remove it, or set optimizer.type to {}",
                           o.type == "adamw" ? "sgd" : "adamw"));
    om.read("lr", o.lr, 0, 10, /*lo_exclusive=*/true);
    if (om.has("betas")) {
      const YAML::Node& b = om.get("betas");
      std::string path = om.path("betas");
      if (!b.IsSequence() || b.size() != 2)
        r.fail(path, b, "expected a list of two numbers", "write e.g. `betas: [0.9, 0.95]`");
      o.beta1 = r.as_double(path + "[0]", b[0], 0, 1);
      o.beta2 = r.as_double(path + "[1]", b[1], 0, 1);
      if (o.beta1 >= 1 || o.beta2 >= 1)
        r.fail(path, b, "betas must be below 1", "write e.g. `betas: [0.9, 0.95]`");
    }
    om.read("eps", o.eps, 0, 1, /*lo_exclusive=*/true);
    om.read("weight_decay", o.weight_decay, 0, 10);
    if (om.has("momentum")) {
      o.momentum = r.as_double(om.path("momentum"), om.get("momentum"), 0, 1);
      if (o.momentum >= 1)
        r.fail(om.path("momentum"), om.get("momentum"), "momentum must be below 1", "use e.g. 0.9");
    }
    om.read("nesterov", o.nesterov);
    if (o.nesterov && o.momentum <= 0)
      r.fail_at({om.path("nesterov")}, "nesterov needs momentum > 0", "set optimizer.momentum");
    om.read("grad_clip", o.grad_clip, 0, 1e12);
    if (om.has("embeddings")) {
      MapView em(r, om.get("embeddings"), om.path("embeddings"));
      em.allow({"type", "lr", "eps"});
      em.read_enum("type", o.embeddings.type, {"sgd", "adagrad"});
      em.read("lr", o.embeddings.lr, 0, 10, /*lo_exclusive=*/true);
      em.read("eps", o.embeddings.eps, 0, 1, /*lo_exclusive=*/true);
    }
  }
  if (m.has("schedule")) {
    MapView sm(r, m.get("schedule"), m.path("schedule"));
    sm.allow({"warmup", "decay", "min_lr"});
    sm.read("warmup", t.schedule.warmup, 0, INT32_MAX);
    sm.read_enum("decay", t.schedule.decay, {"none", "cosine", "linear"});
    sm.read("min_lr", t.schedule.min_lr, 0, 10);
  }
  if (t.schedule.warmup > t.steps)
    r.fail_at(
        {"train.schedule.warmup"},
        fmt::format("warmup ({}) is longer than the run ({} steps)", t.schedule.warmup, t.steps),
        "shorten the warmup or raise train.steps");
  if (t.schedule.min_lr > o.lr)
    r.fail_at({"train.schedule.min_lr"},
              fmt::format("min_lr ({}) is above the optimizer's lr ({})", t.schedule.min_lr, o.lr),
              "min_lr is the floor the schedule decays to; make it at most lr");
}

void read_checkpoint(Reader& r, const MapView& m, CheckpointSpec& c, const std::string& base_dir) {
  m.allow({"every", "dir", "keep", "resume", "async"});
  m.read("async", c.async);
  m.read("every", c.every, 0, INT32_MAX);
  if (m.has("dir")) c.dir = resolve_path(base_dir, r.as_string(m.path("dir"), m.get("dir")));
  m.read("keep", c.keep, 0, 1 << 20);
  if (m.has("resume")) {
    c.resume = r.as_string(m.path("resume"), m.get("resume"));
    if (c.resume.empty())
      r.fail(m.path("resume"), m.get("resume"), "resume is empty",
             "use auto, never, force, or the path of a checkpoint");
    if (c.resume != "auto" && c.resume != "never" && c.resume != "force")
      c.resume = resolve_path(base_dir, c.resume);
  }
}

void read_fault_tolerance(Reader& r, const MapView& m, FaultToleranceSpec& f) {
  m.allow({"max_restarts", "heartbeat_s", "hang_timeout_s", "term_grace_s"});
  m.read("max_restarts", f.max_restarts, 0, 1000);
  m.read("heartbeat_s", f.heartbeat_s, kMinSeconds, 3600);
  m.read("hang_timeout_s", f.hang_timeout_s, kMinSeconds, 1e7);
  m.read("term_grace_s", f.term_grace_s, 0, 3600);
  if (f.hang_timeout_s <= f.heartbeat_s)
    r.fail_at({"fault_tolerance.hang_timeout_s", "fault_tolerance.heartbeat_s"},
              fmt::format("hang_timeout_s ({}) must be longer than heartbeat_s ({})",
                          f.hang_timeout_s, f.heartbeat_s),
              "a worker is declared hung after missing heartbeats for hang_timeout_s");
}

void read_logging(Reader& r, const MapView& m, LoggingSpec& l, const std::string& base_dir) {
  m.allow({"dir", "console", "level", "mode", "tensorboard", "mlflow"});
  if (m.has("dir")) {
    l.dir = r.as_string(m.path("dir"), m.get("dir"));
    if (l.dir.empty())
      r.fail(m.path("dir"), m.get("dir"), "the run folder is empty", "use e.g. `runs`");
  }
  l.dir = resolve_path(base_dir, l.dir);
  m.read_enum("console", l.console, {"rank0", "all", "none"});
  m.read_enum("level", l.level, {"trace", "debug", "info", "warn", "error", "off"});
  m.read_enum("mode", l.mode, {"private", "shared"});
  m.read("tensorboard", l.tensorboard);
  if (m.has("mlflow"))
    l.mlflow = resolve_path(base_dir, r.as_string(m.path("mlflow"), m.get("mlflow")));
}

std::string workers_phrase(const std::vector<HostSlots>& hosts, int ppn, int world) {
  bool uniform =
      std::all_of(hosts.begin(), hosts.end(), [](const HostSlots& h) { return h.slots == 0; });
  if (uniform)
    return fmt::format("{} host{} x {} procs_per_node = {} workers", hosts.size(),
                       hosts.size() == 1 ? "" : "s", ppn, world);
  return fmt::format("the hosts' slots add up to {} workers", world);
}

// Cross-field checks of the mesh, the model shape and the batch.
void check_mesh(Reader& r, JobSpec& s) {
  ParallelSpec& p = s.parallel;
  int world = 0;
  for (const auto& h : s.nodes.hosts) world += h.slots ? h.slots : s.nodes.procs_per_node;
  std::string workers = workers_phrase(s.nodes.hosts, s.nodes.procs_per_node, world);
  int tp_pp = p.tensor * p.pipeline;
  if (p.data_auto) {
    if (world % tp_pp != 0)
      r.fail_at({"parallel.tensor", "parallel.pipeline", "nodes.procs_per_node", "nodes.hosts"},
                fmt::format("tensor x pipeline = {} x {} = {} does not divide the {}", p.tensor,
                            p.pipeline, tp_pp, workers),
                "make the worker count a multiple of tensor x pipeline");
    p.data = world / tp_pp;
  } else if (p.data * tp_pp != world) {
    r.fail_at({"parallel.data", "parallel.tensor", "parallel.pipeline", "nodes.procs_per_node",
               "nodes.hosts"},
              fmt::format("data x tensor x pipeline = {} x {} x {} = {}, but {}", p.data, p.tensor,
                          p.pipeline, p.data * tp_pp, workers),
              "make them equal, or write `data: auto` to fill in the data degree");
  }
  if (p.servers > p.data && p.data_mode == "async")
    r.fail_at({"parallel.servers"},
              fmt::format("{} parameter servers for {} data-parallel ranks", p.servers, p.data),
              "use at most one server per data-parallel rank");
  if (p.data_mode == "async") {
    if (p.zero != 0)
      r.fail_at({"parallel.zero", "parallel.data_mode"}, "async data parallel excludes zero: 1",
                "in async mode the parameter servers own the optimizer state, so there is no "
                "replicated state for ZeRO to shard; set zero: 0");
    if (p.pipeline != 1)
      r.fail_at({"parallel.pipeline", "parallel.data_mode"},
                "async data parallel excludes pipeline parallelism",
                "a pipeline needs all its stages on the same weights version, which stale async "
                "updates break; set pipeline: 1 or data_mode: sync");
  }
  if (p.comm == "nccl" && s.nodes.device == "cpu")
    r.fail_at({"parallel.comm", "nodes.device"}, "nccl needs CUDA devices, but device is cpu",
              "use comm: gloo (or auto) on CPU");
  // A hostfile's hosts are not known here; `ptrain launch` loads the spec again with them.
  const int host_count = static_cast<int>(s.nodes.hosts.size());
  if (s.nodes.min_nodes > host_count && s.nodes.hostfile.empty())
    r.fail_at({"nodes.min_nodes", "nodes.hosts"},
              fmt::format("min_nodes = {} is more than the job's {} host{}", s.nodes.min_nodes,
                          host_count, host_count == 1 ? "" : "s"),
              fmt::format("use at most {} (the job shrinks to no fewer hosts than min_nodes)",
                          host_count));
  int min_slots = world;
  for (const auto& h : s.nodes.hosts)
    min_slots = std::min(min_slots, h.slots ? h.slots : s.nodes.procs_per_node);
  if (p.tensor > min_slots)
    r.warn_at({"parallel.tensor"},
              fmt::format("tensor = {} is more than the {} workers on a node, so tensor groups "
                          "span nodes and every layer talks over the network",
                          p.tensor, min_slots));
}

// Reports a family's check through the loader's reader (positions, `--set` sources).
class ReaderChecker : public SpecChecker {
 public:
  explicit ReaderChecker(const Reader& r) : r_(r) {}
  [[noreturn]] void fail_at(std::initializer_list<std::string> paths, const std::string& what,
                            const std::string& hint) const override {
    r_.fail_at(paths, what, hint);
  }
  void warn_at(std::initializer_list<std::string> paths, const std::string& what) const override {
    r_.warn_at(paths, what);
  }

 private:
  const Reader& r_;
};

void check_model(Reader& r, JobSpec& s) {
  const ParallelSpec& p = s.parallel;
  const ModelSpec& m = s.model;
  const ModelSchema& schema = model_schema(m.type);
  ReaderChecker checker(r);
  schema.resolve(s, checker);
  schema.check(s, checker);
  auto data_types = schema.data_types();
  if (!contains(data_types, s.data.type))
    r.fail_at({"data.type", "model.type"},
              fmt::format("{} models read {} data, not {}", m.type, fmt::join(data_types, ", "),
                          s.data.type),
              fmt::format("use data.type: {}", fmt::join(data_types, ", ")));
  if (p.embeddings != "replicated" && !schema.supports_sharded_embeddings())
    r.fail_at({"parallel.embeddings", "model.type"},
              fmt::format("model.type {} has no embedding tables to shard", m.type),
              "remove parallel.embeddings (it applies to the dlrm family)");
  if (s.train.optimizer.embeddings != EmbeddingOptimizerSpec{} && p.embeddings == "replicated")
    r.fail_at({"train.optimizer.embeddings", "parallel.embeddings"},
              "train.optimizer.embeddings applies to sharded tables only",
              "set parallel.embeddings: table or row (replicated tables use the job's optimizer)");
  if (p.pipeline > 1 && !schema.supports_pipeline())
    r.fail_at({"parallel.pipeline", "model.type"},
              fmt::format("model.type {} cannot be split into pipeline stages", m.type),
              "set parallel.pipeline: 1");
  const int layers = schema.pipeline_layers(m);
  const std::string layer_word = schema.layer_word();
  if (layers < p.pipeline)
    r.fail_at({"parallel.pipeline", schema.layers_key()},
              fmt::format("pipeline {} has more stages than the model's {} {}", p.pipeline, layers,
                          layer_word),
              "each stage needs at least one layer; lower parallel.pipeline");
  if (!p.stages.empty()) {
    if (static_cast<int>(p.stages.size()) != p.pipeline)
      r.fail_at({"parallel.stages"},
                fmt::format("{} stage sizes given for pipeline {}", p.stages.size(), p.pipeline),
                "give one layer count per pipeline stage");
    int sum = std::accumulate(p.stages.begin(), p.stages.end(), 0);
    if (sum != layers)
      r.fail_at(
          {"parallel.stages"},
          fmt::format("stages add up to {} {}, but the model has {}", sum, layer_word, layers),
          "the stage sizes must sum to the model's layers");
  }
  if (p.microbatches < p.pipeline)
    r.warn_at({"parallel.microbatches", "parallel.pipeline"},
              fmt::format("microbatches = {} is fewer than the {} pipeline stages; most stages "
                          "will sit idle (use at least {}, ideally 4x)",
                          p.microbatches, p.pipeline, p.pipeline));
  int64_t per_step = int64_t{p.data} * p.microbatches * s.train.grad_accum;
  if (s.data.batch_size % per_step != 0)
    r.fail_at({"data.batch_size", "parallel.microbatches", "train.grad_accum", "parallel.data"},
              fmt::format("batch_size {} is not divisible by data x microbatches x grad_accum = "
                          "{} x {} x {} = {}",
                          s.data.batch_size, p.data, p.microbatches, s.train.grad_accum, per_step),
              fmt::format("use a multiple of {}", per_step));
  if (s.train.eval_every > 0 && !s.data.has_eval())
    r.fail_at({"train.eval_every"}, "evaluation needs held-out data, but eval_fraction is 0",
              "set data.eval_fraction (e.g. 0.05), data.eval_path, or train.eval_every: 0");
  if (s.train.optimizer.type == "sgd" && p.zero == 1 && s.train.optimizer.momentum == 0)
    r.warn_at({"parallel.zero"}, "plain SGD keeps no optimizer state, so zero: 1 saves nothing");
}

JobSpec build(Reader& r, const YAML::Node& root, const std::string& base_dir) {
  if (root.IsNull())
    r.fail("", root, "the spec is empty",
           "start from an example in configs/ (e.g. configs/quickstart.yaml)");
  if (!root.IsMap())
    r.fail("", root, "a spec is a mapping of sections (name:, nodes:, parallel:, model:, ...)",
           "start from an example in configs/");
  JobSpec s;
  MapView top(r, root, "");
  top.allow(kTopKeys);
  top.read("name", s.name);
  if (s.name.empty() || s.name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU"
                                                 "VWXYZ0123456789._-") != std::string::npos)
    r.fail_at({"name"}, fmt::format("`{}` is not a usable job name", s.name),
              "use letters, digits, `.`, `_` and `-` (it names the run folder)");
  if (s.name.size() > kMaxNameLength || s.name == "." || s.name == "..")
    r.fail_at({"name"},
              fmt::format("the job name is {} characters long; at most {} fit a run folder's name",
                          s.name.size(), kMaxNameLength),
              "use a shorter name (it names the run folder with a timestamp after it)");
  if (top.has("command")) {
    s.command = r.as_string_list("command", top.get("command"));
    if (s.command.empty() || s.command[0].empty())
      r.fail("command", top.get("command"), "the command is empty",
             "write the program and its arguments, e.g. [python3, train.py], or remove `command` "
             "to run a built-in training loop");
  }
  if (top.has("env")) {
    MapView env(r, top.get("env"), "env");
    for (const auto& key : env.keys()) {
      bool ok = !key.empty() && !std::isdigit(static_cast<unsigned char>(key[0])) &&
                std::all_of(key.begin(), key.end(), [](char c) {
                  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                });
      if (!ok)
        r.fail(env.path(key), env.key_node(key), "not a valid environment variable name",
               "use letters, digits and _");
      if (contains(kReservedEnv, key))
        r.fail(env.path(key), env.key_node(key),
               "ptrain sets this variable for every worker itself",
               "remove it from env:; ptrain sets the torchrun variables (RANK, WORLD_SIZE, "
               "MASTER_ADDR, ...) and its own PTRAIN_* ones");
      s.env[key] = r.as_string(env.path(key), env.get(key));
    }
  }
  auto section = [&](const char* key) {
    return MapView(r, top.has(key) ? top.get(key) : YAML::Node(), key);
  };
  read_nodes(r, section("nodes"), s.nodes, base_dir);
  if (!s.nodes.hostfile.empty()) s.nodes.hosts = resolve_hosts(s);
  {
    MapView m = section("rendezvous");
    m.allow({"bind", "port", "timeout_s", "tls", "tree_fanout"});
    m.read("bind", s.rendezvous.bind);
    m.read("port", s.rendezvous.port, 0, 65535);
    m.read("timeout_s", s.rendezvous.timeout_s, kMinSeconds, 86400);
    m.read_enum("tls", s.rendezvous.tls, {"auto", "on", "off"});
    m.read("tree_fanout", s.rendezvous.tree_fanout, 0, 65536);
    if (s.rendezvous.tree_fanout == 1)
      r.fail_at({m.path("tree_fanout")}, "tree_fanout = 1 would chain every node behind the next",
                "use 0 (no relay tree) or at least 2");
  }
  read_parallel(r, section("parallel"), s.parallel);
  if (s.launcher_only()) {
    for (const char* key : {"model", "data", "train"})
      if (top.has(key))
        r.warn_at({key}, "ignored: with `command` ptrain only launches the program");
  } else {
    read_model(r, section("model"), s.model, base_dir);
    read_data(r, section("data"), s.data, base_dir);
    read_train(r, section("train"), s.train);
  }
  read_checkpoint(r, section("checkpoint"), s.checkpoint, base_dir);
  read_fault_tolerance(r, section("fault_tolerance"), s.fault_tolerance);
  read_logging(r, section("logging"), s.logging, base_dir);

  check_mesh(r, s);
  if (!s.launcher_only()) check_model(r, s);
  return s;
}

std::vector<Override> parse_overrides(const std::vector<std::string>& overrides) {
  std::vector<Override> out;
  for (const auto& text : overrides) {
    auto eq = text.find('=');
    std::string key = text.substr(0, eq);
    bool ok = eq != std::string::npos && !key.empty() && key.front() != '.' && key.back() != '.' &&
              key.find("..") == std::string::npos &&
              std::all_of(key.begin(), key.end(), [](char c) {
                return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.';
              });
    if (!ok)
      throw ConfigError(fmt::format("--set {}: expected key.path=value", text),
                        "e.g. --set parallel.data=2 or --set train.optimizer.lr=1e-3");
    out.push_back({key, text, {}});
  }
  return out;
}

YAML::Node load_yaml(const std::string& text, const std::string& display) {
  detail::check_text(text, display);
  detail::check_aliases(text, display, detail::kMaxAliasExpansion);
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}: invalid YAML: {}",
                                  detail::position(display, e.mark.line, e.mark.column), e.msg),
                      "check the syntax on this line and the one before it");
  }
}

void apply_overrides(YAML::Node& root, std::vector<Override>& overrides) {
  if (root.IsNull()) return;  // build() reports the empty spec first
  if (!root.IsMap()) return;  // and a spec that is not a mapping
  for (auto& o : overrides) {
    std::string value_text = o.text.substr(o.path.size() + 1);
    YAML::Node value = value_text.empty() ? YAML::Node(YAML::NodeType::Null)
                                          : load_yaml(value_text, "--set " + o.text);
    YAML::Node cur = root;
    std::stringstream parts(o.path);
    std::string part, walked;
    std::vector<std::string> keys;
    while (std::getline(parts, part, '.')) keys.push_back(part);
    for (size_t i = 0; i + 1 < keys.size(); ++i) {
      walked = detail::join_path(walked, keys[i]);
      YAML::Node next = cur[keys[i]];
      if (next.IsDefined() && !next.IsNull() && !next.IsMap())
        throw ConfigError(fmt::format("--set {}: {}: is a value, not a section", o.text, walked),
                          "set the value itself, e.g. --set " + walked + "=...");
      if (!next.IsDefined()) o.created.push_back(walked);
      if (!next.IsDefined() || next.IsNull()) cur[keys[i]] = YAML::Node(YAML::NodeType::Map);
      cur.reset(cur[keys[i]]);
    }
    cur[keys.back()] = value;
  }
}

}  // namespace

JobSpec load_string(const std::string& yaml, const std::string& display_name,
                    const std::vector<std::string>& overrides, const std::string& base_dir) {
  if (static_cast<int64_t>(yaml.size()) > kMaxSpecBytes)
    throw ConfigError(fmt::format("{}: the spec is {} bytes, over the {} byte limit", display_name,
                                  yaml.size(), kMaxSpecBytes),
                      "a job spec is a few KB; keep data in data files");
  std::vector<Override> parsed = parse_overrides(overrides);
  YAML::Node root = load_yaml(yaml, display_name);
  apply_overrides(root, parsed);
  Reader reader(display_name, parsed);
  return build(reader, root, base_dir);
}

JobSpec load_file(const std::string& path, const std::vector<std::string>& overrides) {
  std::string text = detail::read_spec_file(path, kMaxSpecBytes);
  std::filesystem::path abs = std::filesystem::absolute(path).lexically_normal();
  JobSpec s = load_string(text, path, overrides, abs.parent_path().string());
  s.source_path = abs.string();
  return s;
}

}  // namespace ptrain::spec
