// `ptrain k8s job.yaml --nodes N --image IMG`: prints the Kubernetes manifest of the job (a
// headless Service, a ConfigMap with job.yaml, a JobSet of N pods running `ptrain node`; the token
// from the Secret <name>-token). Apply it with `kubectl apply -f -`.
#include <fmt/format.h>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/launch/k8s_manifest.h"
#include "ptrain/spec/spec.h"

namespace ptrain::cli {
namespace {

struct K8sArgs {
  std::string spec_path;
  std::vector<std::string> overrides;
  int nodes = 0;
  std::string image;
  std::string program = "ptrain";
};

Action setup_k8s(CLI::App& sub) {
  auto args = std::make_shared<K8sArgs>();
  sub.add_option("spec", args->spec_path, "Job spec (YAML)")->required();
  sub.add_option("--set", args->overrides, "Override a spec key: --set train.steps=10")
      ->allow_extra_args(false);
  sub.add_option("--nodes", args->nodes, "Pods (one per node)")->required();
  sub.add_option("--image", args->image, "Container image with ptrain on its PATH")->required();
  sub.add_option("--program", args->program, "ptrain inside the image")->capture_default_str();
  return [args] {
    if (args->nodes < 1)
      throw ConfigError(fmt::format("--nodes {}: a job needs at least one node", args->nodes),
                        "give --nodes N (one pod per node)");
    // The spec is checked against N nodes of procs_per_node workers, as `ptrain node` checks it.
    std::vector<std::string> overrides = args->overrides;
    std::string list;
    for (int i = 0; i < args->nodes; ++i) list += fmt::format("{}\"node-{}\"", i ? ", " : "", i);
    overrides.push_back("nodes.hosts=[" + list + "]");
    spec::JobSpec spec = spec::load_file(args->spec_path, overrides);
    launch::K8sOptions o;
    o.name = spec.name;
    o.nodes = args->nodes;
    o.procs_per_node = spec.nodes.procs_per_node;
    o.port = spec.rendezvous.port > 0 ? spec.rendezvous.port : 29500;
    o.image = args->image;
    o.program = args->program;
    o.spec_yaml = spec::to_yaml_redacted(spec);
    for (const auto& [key, value] : spec.env) o.env_keys.push_back(key);
    // Pods talk across the cluster network: rendezvous.tls auto means on, as for `ptrain submit`.
    o.tls = spec.rendezvous.tls != "off";
    fmt::print("{}", launch::jobset_manifest(o));
    return 0;
  };
}

}  // namespace

PTRAIN_COMMAND({"k8s", "Print a Kubernetes JobSet manifest running the job (one pod per node)",
                false, 13, setup_k8s})

}  // namespace ptrain::cli
