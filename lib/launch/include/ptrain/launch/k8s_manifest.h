// `ptrain k8s`: the Kubernetes manifest of a job, one pod per node running `ptrain node` (the
// JobSet API, jobset.x-k8s.io/v1alpha2): a headless Service for the pods' DNS names, a ConfigMap
// with job.yaml, and the JobSet whose indexed pods get torchrun's PET_* environment and the
// token from a Secret the user creates (never in the manifest).
#pragma once

#include <string>
#include <vector>

namespace ptrain::launch {

struct K8sOptions {
  std::string name;  // the job's name (made a DNS label)
  int nodes = 1;     // pods
  int procs_per_node = 1;
  int port = 29500;       // the coordinator's port on pod 0
  std::string image;      // a container image with ptrain on its PATH
  std::string spec_yaml;  // job.yaml, mounted at /etc/ptrain/job.yaml (env: as ${KEY} references)
  // The spec's env: keys: each pod gets them from the Secret <name>-env, never from the manifest.
  std::vector<std::string> env_keys;
  std::string program = "ptrain";
  // rendezvous.tls (not off): every pod mounts the job certificate from the Secret <name>-tls
  // (ca.pem, cert.pem, key.pem of `ptrain tls init`) and finds it through PTRAIN_TLS_DIR.
  bool tls = false;
};

// A DNS-1035 label from a job name: lower case, [a-z0-9-], starts with a letter, at most 40
// characters (room for the pods' suffixes).
std::string k8s_name(const std::string& name);

// The multi-document YAML (Service, ConfigMap, JobSet). Throws ConfigError for nodes < 1 or an
// empty image.
std::string jobset_manifest(const K8sOptions& options);

}  // namespace ptrain::launch
