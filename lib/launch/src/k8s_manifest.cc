#include "ptrain/launch/k8s_manifest.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "ptrain/core/error.h"

namespace ptrain::launch {

std::string k8s_name(const std::string& name) {
  std::string out;
  for (char c : name) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (ok)
      out += c;
    else if (!out.empty() && out.back() != '-')
      out += '-';
  }
  if (out.empty() || !(out[0] >= 'a' && out[0] <= 'z')) out = "job-" + out;
  if (out.size() > 40) out.resize(40);
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out;
}

namespace {

constexpr const char* kTlsMount = "/etc/ptrain-tls";

void env_value(YAML::Emitter& y, const std::string& name, const std::string& value) {
  y << YAML::BeginMap << YAML::Key << "name" << YAML::Value << name << YAML::Key << "value"
    << YAML::Value << YAML::DoubleQuoted << value << YAML::EndMap;
}

// An environment variable from key `key` of Secret `secret`.
void env_secret(YAML::Emitter& y, const std::string& name, const std::string& secret,
                const std::string& key) {
  y << YAML::BeginMap << YAML::Key << "name" << YAML::Value << name << YAML::Key << "valueFrom"
    << YAML::Value << YAML::BeginMap << YAML::Key << "secretKeyRef" << YAML::Value << YAML::BeginMap
    << YAML::Key << "name" << YAML::Value << secret << YAML::Key << "key" << YAML::Value << key
    << YAML::EndMap << YAML::EndMap << YAML::EndMap;
}

}  // namespace

std::string jobset_manifest(const K8sOptions& o) {
  if (o.nodes < 1)
    throw ConfigError(fmt::format("--nodes {}: a job needs at least one node", o.nodes),
                      "give --nodes N (one pod per node)");
  if (o.image.empty())
    throw ConfigError("no container image", "give --image IMG (an image with ptrain on its PATH)");
  const std::string name = k8s_name(o.name);
  const std::string port = std::to_string(o.port);
  const std::string selector = "jobset.sigs.k8s.io/jobset-name";
  YAML::Emitter y;
  // The headless Service: pod i is <name>-node-0-i.<name>.
  y << YAML::BeginDoc << YAML::BeginMap;
  y << YAML::Key << "apiVersion" << YAML::Value << "v1";
  y << YAML::Key << "kind" << YAML::Value << "Service";
  y << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap << YAML::Key << "name"
    << YAML::Value << name << YAML::EndMap;
  y << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "clusterIP" << YAML::Value << "None";
  y << YAML::Key << "selector" << YAML::Value << YAML::BeginMap << YAML::Key << selector
    << YAML::Value << name << YAML::EndMap;
  y << YAML::Key << "ports" << YAML::Value << YAML::BeginSeq << YAML::BeginMap << YAML::Key
    << "name" << YAML::Value << "rendezvous" << YAML::Key << "port" << YAML::Value << o.port
    << YAML::EndMap << YAML::EndSeq;
  y << YAML::EndMap << YAML::EndMap;
  // job.yaml for every pod.
  y << YAML::BeginDoc << YAML::BeginMap;
  y << YAML::Key << "apiVersion" << YAML::Value << "v1";
  y << YAML::Key << "kind" << YAML::Value << "ConfigMap";
  y << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap << YAML::Key << "name"
    << YAML::Value << name + "-job" << YAML::EndMap;
  y << YAML::Key << "data" << YAML::Value << YAML::BeginMap << YAML::Key << "job.yaml"
    << YAML::Value << YAML::Literal << o.spec_yaml << YAML::EndMap;
  y << YAML::EndMap;
  // The JobSet: one replicated job of N indexed pods.
  y << YAML::BeginDoc << YAML::BeginMap;
  y << YAML::Key << "apiVersion" << YAML::Value << "jobset.x-k8s.io/v1alpha2";
  y << YAML::Key << "kind" << YAML::Value << "JobSet";
  y << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap << YAML::Key << "name"
    << YAML::Value << name << YAML::EndMap;
  y << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "network" << YAML::Value << YAML::BeginMap << YAML::Key << "enableDNSHostnames"
    << YAML::Value << true << YAML::Key << "subdomain" << YAML::Value << name << YAML::EndMap;
  // ptrain's own supervisor restarts rounds (fault_tolerance.max_restarts); a failed pod ends it.
  y << YAML::Key << "failurePolicy" << YAML::Value << YAML::BeginMap << YAML::Key << "maxRestarts"
    << YAML::Value << 0 << YAML::EndMap;
  y << YAML::Key << "replicatedJobs" << YAML::Value << YAML::BeginSeq << YAML::BeginMap;
  y << YAML::Key << "name" << YAML::Value << "node";
  y << YAML::Key << "replicas" << YAML::Value << 1;
  y << YAML::Key << "template" << YAML::Value << YAML::BeginMap << YAML::Key << "spec"
    << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "parallelism" << YAML::Value << o.nodes;
  y << YAML::Key << "completions" << YAML::Value << o.nodes;
  y << YAML::Key << "completionMode" << YAML::Value << "Indexed";
  y << YAML::Key << "backoffLimit" << YAML::Value << 0;
  y << YAML::Key << "template" << YAML::Value << YAML::BeginMap << YAML::Key << "spec"
    << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "restartPolicy" << YAML::Value << "Never";
  y << YAML::Key << "subdomain" << YAML::Value << name;
  y << YAML::Key << "containers" << YAML::Value << YAML::BeginSeq << YAML::BeginMap;
  y << YAML::Key << "name" << YAML::Value << "ptrain";
  y << YAML::Key << "image" << YAML::Value << o.image;
  y << YAML::Key << "command" << YAML::Value << YAML::Flow << YAML::BeginSeq << o.program << "node"
    << "/etc/ptrain/job.yaml" << YAML::EndSeq;
  y << YAML::Key << "env" << YAML::Value << YAML::BeginSeq;
  env_value(y, "PET_NNODES", std::to_string(o.nodes));
  env_value(y, "PET_NPROC_PER_NODE", std::to_string(o.procs_per_node));
  y << YAML::BeginMap << YAML::Key << "name" << YAML::Value << "PET_NODE_RANK" << YAML::Key
    << "valueFrom" << YAML::Value << YAML::BeginMap << YAML::Key << "fieldRef" << YAML::Value
    << YAML::BeginMap << YAML::Key << "fieldPath" << YAML::Value
    << "metadata.annotations['batch.kubernetes.io/job-completion-index']" << YAML::EndMap
    << YAML::EndMap << YAML::EndMap;
  env_value(y, "MASTER_ADDR", fmt::format("{}-node-0-0.{}", name, name));
  env_value(y, "MASTER_PORT", port);
  env_secret(y, "PTRAIN_TOKEN", name + "-token", "token");
  // job.yaml refers to its env: values as ${KEY}; ptrain node resolves them from these.
  for (const auto& key : o.env_keys) env_secret(y, key, name + "-env", key);
  if (o.tls) env_value(y, "PTRAIN_TLS_DIR", kTlsMount);
  y << YAML::EndSeq;
  y << YAML::Key << "ports" << YAML::Value << YAML::BeginSeq << YAML::BeginMap << YAML::Key
    << "containerPort" << YAML::Value << o.port << YAML::EndMap << YAML::EndSeq;
  y << YAML::Key << "volumeMounts" << YAML::Value << YAML::BeginSeq << YAML::BeginMap << YAML::Key
    << "name" << YAML::Value << "job" << YAML::Key << "mountPath" << YAML::Value << "/etc/ptrain"
    << YAML::EndMap;
  if (o.tls)
    y << YAML::BeginMap << YAML::Key << "name" << YAML::Value << "tls" << YAML::Key << "mountPath"
      << YAML::Value << kTlsMount << YAML::Key << "readOnly" << YAML::Value << true << YAML::EndMap;
  y << YAML::EndSeq;
  y << YAML::EndMap << YAML::EndSeq;  // containers
  y << YAML::Key << "volumes" << YAML::Value << YAML::BeginSeq << YAML::BeginMap << YAML::Key
    << "name" << YAML::Value << "job" << YAML::Key << "configMap" << YAML::Value << YAML::BeginMap
    << YAML::Key << "name" << YAML::Value << name + "-job" << YAML::EndMap << YAML::EndMap;
  if (o.tls)  // the key readable by the pod's user only (0400)
    y << YAML::BeginMap << YAML::Key << "name" << YAML::Value << "tls" << YAML::Key << "secret"
      << YAML::Value << YAML::BeginMap << YAML::Key << "secretName" << YAML::Value << name + "-tls"
      << YAML::Key << "defaultMode" << YAML::Value << 0400 << YAML::EndMap << YAML::EndMap;
  y << YAML::EndSeq;
  y << YAML::EndMap << YAML::EndMap;  // pod template
  y << YAML::EndMap << YAML::EndMap;  // job template
  y << YAML::EndMap << YAML::EndSeq;  // replicatedJobs
  y << YAML::EndMap << YAML::EndMap;
  if (!y.good()) throw InternalError("cannot emit the manifest: " + y.GetLastError());
  std::string env_secret_line;
  if (!o.env_keys.empty()) {
    env_secret_line = fmt::format("#   kubectl create secret generic {}-env", name);
    for (const auto& key : o.env_keys)
      env_secret_line += fmt::format(" --from-literal={}=...", key);
    env_secret_line += "\n#   (the values of job.yaml's env:, which this manifest does not hold)\n";
  }
  std::string tls_line;
  if (o.tls)
    tls_line = fmt::format(
        "#   ptrain tls init {0}-tls && kubectl create secret generic {0}-tls --from-file={0}-tls\n"
        "#   (the job certificate, rendezvous.tls; keep the folder private or delete it)\n",
        name);
  return fmt::format(
      "# ptrain k8s: {} pod(s) x {} worker(s). Create the Secrets first:\n"
      "#   kubectl create secret generic {}-token --from-literal=token=$(openssl rand -hex 16)\n"
      "{}{}{}\n",
      o.nodes, o.procs_per_node, name, env_secret_line, tls_line, y.c_str());
}

}  // namespace ptrain::launch
