// JobSpec -> YAML (round-trips through load_string) and JSON, from one intermediate tree so that
// both carry the same keys.
#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "ptrain/core/strings.h"
#include "ptrain/spec/model_schema.h"
#include "ptrain/spec/spec.h"

namespace ptrain::spec {
namespace {

struct Value {
  enum Kind { kBool, kNumber, kString, kList, kMap } kind = kString;
  std::string text;                                   // scalars
  std::vector<Value> list;                            // kList
  std::vector<std::pair<std::string, Value>> fields;  // kMap, in schema order

  static Value str(std::string s) { return {kString, std::move(s), {}, {}}; }
  static Value num(double d) { return {kNumber, fmt::format("{}", d), {}, {}}; }
  static Value num(int64_t i) { return {kNumber, std::to_string(i), {}, {}}; }
  static Value num(int i) { return num(static_cast<int64_t>(i)); }
  static Value num(uint64_t u) { return {kNumber, std::to_string(u), {}, {}}; }
  static Value boolean(bool b) { return {kBool, b ? "true" : "false", {}, {}}; }
  static Value map() { return {kMap, {}, {}, {}}; }
  static Value strings(const std::vector<std::string>& v) {
    Value out{kList, {}, {}, {}};
    for (const auto& s : v) out.list.push_back(str(s));
    return out;
  }
  static Value ints(const std::vector<int>& v) {
    Value out{kList, {}, {}, {}};
    for (int i : v) out.list.push_back(num(i));
    return out;
  }
  Value& add(const std::string& key, Value v) {
    fields.emplace_back(key, std::move(v));
    return fields.back().second;
  }
};

Value value_of(const ModelValue& v) {
  if (auto* i = std::get_if<int64_t>(&v)) return Value::num(*i);
  if (auto* d = std::get_if<double>(&v)) return Value::num(*d);
  if (auto* b = std::get_if<bool>(&v)) return Value::boolean(*b);
  if (auto* t = std::get_if<std::string>(&v)) return Value::str(*t);
  Value out{Value::kList, {}, {}, {}};
  for (int64_t i : std::get<std::vector<int64_t>>(v)) out.list.push_back(Value::num(i));
  return out;
}

Value tree(const JobSpec& s) {
  Value root = Value::map();
  root.add("name", Value::str(s.name));
  if (s.launcher_only()) root.add("command", Value::strings(s.command));
  Value& env = root.add("env", Value::map());
  for (const auto& [k, v] : s.env) env.add(k, Value::str(v));

  Value& nodes = root.add("nodes", Value::map());
  if (!s.nodes.hostfile.empty()) {
    nodes.add("hostfile", Value::str(s.nodes.hostfile));
  } else {
    std::vector<std::string> hosts;
    for (const auto& h : s.nodes.hosts) {
      std::string name = h.host.find(':') != std::string::npos ? "[" + h.host + "]" : h.host;
      hosts.push_back(h.slots ? fmt::format("{}:{}", name, h.slots) : name);
    }
    nodes.add("hosts", Value::strings(hosts));
  }
  nodes.add("procs_per_node",
            s.nodes.procs_per_gpu ? Value::str("gpu") : Value::num(s.nodes.procs_per_node));
  nodes.add("device", Value::str(s.nodes.device));
  nodes.add("threads_per_proc", Value::num(s.nodes.threads_per_proc));
  Value& ssh = nodes.add("ssh", Value::map());
  ssh.add("user", Value::str(s.nodes.ssh.user));
  ssh.add("port", Value::num(s.nodes.ssh.port));
  ssh.add("identity", Value::str(s.nodes.ssh.identity));
  ssh.add("options", Value::strings(s.nodes.ssh.options));
  ssh.add("config", Value::str(s.nodes.ssh.config));
  nodes.add("remote_ptrain", Value::str(s.nodes.remote_ptrain));
  nodes.add("ship_binary", Value::boolean(s.nodes.ship_binary));
  if (s.nodes.min_nodes) nodes.add("min_nodes", Value::num(s.nodes.min_nodes));

  Value& rdzv = root.add("rendezvous", Value::map());
  rdzv.add("bind", Value::str(s.rendezvous.bind));
  rdzv.add("port", Value::num(s.rendezvous.port));
  rdzv.add("timeout_s", Value::num(s.rendezvous.timeout_s));
  rdzv.add("tls", Value::str(s.rendezvous.tls));
  rdzv.add("tree_fanout", Value::num(s.rendezvous.tree_fanout));

  const ParallelSpec& p = s.parallel;
  Value& par = root.add("parallel", Value::map());
  par.add("data", p.data_auto ? Value::str("auto") : Value::num(p.data));
  par.add("tensor", Value::num(p.tensor));
  par.add("pipeline", Value::num(p.pipeline));
  par.add("data_mode", Value::str(p.data_mode));
  par.add("staleness", Value::num(p.staleness));
  par.add("servers", Value::num(p.servers));
  if (!p.server_hosts.empty()) par.add("server_hosts", Value::strings(p.server_hosts));
  if (p.server_port) par.add("server_port", Value::num(p.server_port));
  par.add("zero", Value::num(p.zero));
  par.add("bucket_mb", Value::num(p.bucket_mb));
  par.add("schedule", Value::str(p.schedule));
  par.add("microbatches", Value::num(p.microbatches));
  par.add("stages", Value::ints(p.stages));
  par.add("comm", Value::str(p.comm));
  if (p.embeddings != "replicated") par.add("embeddings", Value::str(p.embeddings));

  if (!s.launcher_only()) {
    const ModelSpec& m = s.model;
    Value& model = root.add("model", Value::map());
    model.add("type", Value::str(m.type));
    for (const auto& k : model_schema(m.type).keys()) {
      const ModelValue& v = m.values.count(k.name) ? m.values.at(k.name) : k.default_value;
      if (v.index() == 0) continue;  // a required key the spec left unset (in-memory specs)
      model.add(k.name, value_of(v));
    }
    model.add("init_from", Value::str(m.init_from));

    Value& data = root.add("data", Value::map());
    data.add("type", Value::str(s.data.type));
    if (!s.data.path.empty()) data.add("path", Value::str(s.data.path));
    if (!s.data.labels.empty()) data.add("labels", Value::str(s.data.labels));
    if (!s.data.eval_path.empty()) data.add("eval_path", Value::str(s.data.eval_path));
    if (!s.data.eval_labels.empty()) data.add("eval_labels", Value::str(s.data.eval_labels));
    data.add("batch_size", Value::num(s.data.batch_size));
    data.add("shuffle", Value::boolean(s.data.shuffle));
    data.add("eval_fraction", Value::num(s.data.eval_fraction));
    data.add("mask_prob", Value::num(s.data.mask_prob));  // masked-language-model data (bert)
    if (!s.data.tokenizer.empty()) data.add("tokenizer", Value::str(s.data.tokenizer));
    if (!s.data.normalize.mean.empty()) {
      Value& norm = data.add("normalize", Value::map());
      Value mean{Value::kList, {}, {}, {}}, stdv{Value::kList, {}, {}, {}};
      for (double v : s.data.normalize.mean) mean.list.push_back(Value::num(v));
      for (double v : s.data.normalize.std) stdv.list.push_back(Value::num(v));
      norm.add("mean", mean);
      norm.add("std", stdv);
    }
    if (s.data.augment.enabled()) {
      Value& aug = data.add("augment", Value::map());
      aug.add("crop_padding", Value::num(s.data.augment.crop_padding));
      aug.add("hflip", Value::boolean(s.data.augment.hflip));
    }
    // Record readers (criteo): written when not the default.
    if (s.data.bad_lines != "error") data.add("bad_lines", Value::str(s.data.bad_lines));

    const TrainSpec& t = s.train;
    Value& train = root.add("train", Value::map());
    train.add("steps", Value::num(t.steps));
    train.add("seed", Value::num(t.seed));
    train.add("precision", Value::str(t.precision));
    train.add("grad_accum", Value::num(t.grad_accum));
    train.add("log_every", Value::num(t.log_every));
    train.add("eval_every", Value::num(t.eval_every));
    if (t.label_smoothing > 0) train.add("label_smoothing", Value::num(t.label_smoothing));
    const OptimizerSpec& o = t.optimizer;
    Value& opt = train.add("optimizer", Value::map());
    opt.add("type", Value::str(o.type));
    opt.add("lr", Value::num(o.lr));
    if (o.type == "adamw") {
      Value betas{Value::kList, {}, {Value::num(o.beta1), Value::num(o.beta2)}, {}};
      opt.add("betas", betas);
      opt.add("eps", Value::num(o.eps));
    } else {
      opt.add("momentum", Value::num(o.momentum));
      opt.add("nesterov", Value::boolean(o.nesterov));
    }
    opt.add("weight_decay", Value::num(o.weight_decay));
    opt.add("grad_clip", Value::num(o.grad_clip));
    if (o.embeddings != EmbeddingOptimizerSpec{}) {
      Value& emb = opt.add("embeddings", Value::map());
      emb.add("type", Value::str(o.embeddings.type));
      if (o.embeddings.lr > 0) emb.add("lr", Value::num(o.embeddings.lr));  // 0: the job's
      emb.add("eps", Value::num(o.embeddings.eps));
    }
    Value& sched = train.add("schedule", Value::map());
    sched.add("warmup", Value::num(t.schedule.warmup));
    sched.add("decay", Value::str(t.schedule.decay));
    sched.add("min_lr", Value::num(t.schedule.min_lr));
  }

  Value& ckpt = root.add("checkpoint", Value::map());
  ckpt.add("every", Value::num(s.checkpoint.every));
  ckpt.add("dir", Value::str(s.checkpoint.dir));
  ckpt.add("keep", Value::num(s.checkpoint.keep));
  ckpt.add("resume", Value::str(s.checkpoint.resume));
  ckpt.add("async", Value::boolean(s.checkpoint.async));

  Value& ft = root.add("fault_tolerance", Value::map());
  ft.add("max_restarts", Value::num(s.fault_tolerance.max_restarts));
  ft.add("heartbeat_s", Value::num(s.fault_tolerance.heartbeat_s));
  ft.add("hang_timeout_s", Value::num(s.fault_tolerance.hang_timeout_s));
  ft.add("term_grace_s", Value::num(s.fault_tolerance.term_grace_s));

  Value& log = root.add("logging", Value::map());
  log.add("dir", Value::str(s.logging.dir));
  log.add("console", Value::str(s.logging.console));
  log.add("level", Value::str(s.logging.level));
  log.add("mode", Value::str(s.logging.mode));
  log.add("tensorboard", Value::boolean(s.logging.tensorboard));
  log.add("mlflow", Value::str(s.logging.mlflow));
  return root;
}

// `${` in a resolved string is literal; the loader reads `$${` as a literal `${`.
std::string escape_dollars(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s.compare(i, 2, "${") == 0) out += '$';
    out += s[i];
  }
  return out;
}

void emit_yaml(YAML::Emitter& out, const Value& v) {
  switch (v.kind) {
    case Value::kBool:
    case Value::kNumber:
      out << v.text;
      break;
    case Value::kString:
      out << escape_dollars(v.text);
      break;
    case Value::kList: {
      bool flat = std::all_of(v.list.begin(), v.list.end(),
                              [](const Value& e) { return e.kind != Value::kMap; });
      if (flat) out << YAML::Flow;
      out << YAML::BeginSeq;
      for (const auto& e : v.list) emit_yaml(out, e);
      out << YAML::EndSeq;
      break;
    }
    case Value::kMap:
      if (v.fields.empty()) out << YAML::Flow;
      out << YAML::BeginMap;
      for (const auto& [k, e] : v.fields) {
        out << YAML::Key << k << YAML::Value;
        emit_yaml(out, e);
      }
      out << YAML::EndMap;
      break;
  }
}

std::string json_string(const std::string& s) {
  return ::ptrain::json_quote(s);
}

void emit_json(std::string& out, const Value& v, int indent) {
  std::string pad(static_cast<size_t>(indent + 2), ' ');
  std::string close_pad(static_cast<size_t>(indent), ' ');
  switch (v.kind) {
    case Value::kBool:
    case Value::kNumber:
      out += v.text;
      break;
    case Value::kString:
      out += json_string(v.text);
      break;
    case Value::kList:
      out += "[";
      for (size_t i = 0; i < v.list.size(); ++i) {
        out += i ? ", " : "";
        emit_json(out, v.list[i], indent);
      }
      out += "]";
      break;
    case Value::kMap:
      if (v.fields.empty()) {
        out += "{}";
        break;
      }
      out += "{\n";
      for (size_t i = 0; i < v.fields.size(); ++i) {
        out += pad + json_string(v.fields[i].first) + ": ";
        emit_json(out, v.fields[i].second, indent + 2);
        out += i + 1 < v.fields.size() ? ",\n" : "\n";
      }
      out += close_pad + "}";
      break;
  }
}

}  // namespace

std::string to_yaml(const JobSpec& spec) {
  YAML::Emitter out;
  emit_yaml(out, tree(spec));
  return std::string(out.c_str()) + "\n";
}

std::string to_yaml_redacted(const JobSpec& spec) {
  Value root = tree(spec);
  for (auto& [key, v] : root.fields) {
    if (key != "env") continue;
    // kNumber: written verbatim, so the loader resolves the reference (strings escape `${`).
    for (auto& [name, value] : v.fields) value = Value{Value::kNumber, "${" + name + "}", {}, {}};
  }
  YAML::Emitter out;
  emit_yaml(out, root);
  return std::string(out.c_str()) + "\n";
}

JobSpec redact_env(JobSpec spec) {
  for (auto& [name, value] : spec.env) value = "<redacted>";
  return spec;
}

std::string to_json(const JobSpec& spec) {
  std::string out;
  emit_json(out, tree(spec), 0);
  return out + "\n";
}

}  // namespace ptrain::spec
