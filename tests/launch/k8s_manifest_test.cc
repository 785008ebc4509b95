// The manifest of `ptrain k8s`: parsed back with yaml-cpp, its kinds, replicas, environment and
// command; and through the binary for a real spec.
#include "ptrain/launch/k8s_manifest.h"

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <fstream>

#include "ptrain/core/error.h"
#include "support/ptrain_process.h"

using namespace ptrain;
using namespace ptrain::launch;

namespace {

std::map<std::string, YAML::Node> by_kind(const std::string& text) {
  std::map<std::string, YAML::Node> out;
  for (const auto& doc : YAML::LoadAll(text)) out[doc["kind"].as<std::string>()] = doc;
  return out;
}

void check_manifest(const std::string& text, const std::string& name, int nodes, int procs,
                    int port, const std::string& image) {
  auto docs = by_kind(text);
  ASSERT_EQ(docs.size(), 3u) << text;
  const YAML::Node svc = docs["Service"];
  EXPECT_EQ(svc["spec"]["clusterIP"].as<std::string>(), "None");
  EXPECT_EQ(svc["metadata"]["name"].as<std::string>(), name);
  EXPECT_EQ(svc["spec"]["ports"][0]["port"].as<int>(), port);
  const YAML::Node js = docs["JobSet"];
  EXPECT_EQ(js["apiVersion"].as<std::string>(), "jobset.x-k8s.io/v1alpha2");
  EXPECT_EQ(js["spec"]["network"]["subdomain"].as<std::string>(), name);
  const YAML::Node rj = js["spec"]["replicatedJobs"];
  ASSERT_EQ(rj.size(), 1u);
  EXPECT_EQ(rj[0]["replicas"].as<int>(), 1);
  const YAML::Node job = rj[0]["template"]["spec"];
  EXPECT_EQ(job["parallelism"].as<int>(), nodes);
  EXPECT_EQ(job["completions"].as<int>(), nodes);
  EXPECT_EQ(job["completionMode"].as<std::string>(), "Indexed");
  const YAML::Node c = job["template"]["spec"]["containers"][0];
  EXPECT_EQ(c["image"].as<std::string>(), image);
  ASSERT_EQ(c["command"].size(), 3u);
  EXPECT_EQ(c["command"][1].as<std::string>(), "node");
  EXPECT_EQ(c["command"][2].as<std::string>(), "/etc/ptrain/job.yaml");
  std::map<std::string, YAML::Node> env;
  for (size_t i = 0; i < c["env"].size(); ++i)
    env[c["env"][i]["name"].as<std::string>()] = c["env"][i];
  EXPECT_EQ(env["PET_NNODES"]["value"].as<std::string>(), std::to_string(nodes));
  EXPECT_EQ(env["PET_NPROC_PER_NODE"]["value"].as<std::string>(), std::to_string(procs));
  EXPECT_EQ(env["MASTER_ADDR"]["value"].as<std::string>(), name + "-node-0-0." + name);
  EXPECT_EQ(env["MASTER_PORT"]["value"].as<std::string>(), std::to_string(port));
  EXPECT_EQ(env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"].as<std::string>(),
            "metadata.annotations['batch.kubernetes.io/job-completion-index']");
  // The token comes from a Secret, never from the manifest itself.
  EXPECT_EQ(env["PTRAIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"].as<std::string>(),
            name + "-token");
  EXPECT_FALSE(env["PTRAIN_TOKEN"]["value"]);
  const YAML::Node cm = docs["ConfigMap"];
  EXPECT_EQ(job["template"]["spec"]["volumes"][0]["configMap"]["name"].as<std::string>(),
            cm["metadata"]["name"].as<std::string>());
  EXPECT_FALSE(cm["data"]["job.yaml"].as<std::string>().empty());
}

}  // namespace

TEST(K8sManifest, Structure) {
  K8sOptions o;
  o.name = "My_Job.v2";
  o.nodes = 3;
  o.procs_per_node = 2;
  o.port = 29400;
  o.image = "registry.local/ptrain:1";
  o.spec_yaml = "name: My_Job.v2\ntrain: {steps: 3}\n";
  std::string text = jobset_manifest(o);
  check_manifest(text, "my-job-v2", 3, 2, 29400, "registry.local/ptrain:1");
  EXPECT_EQ(by_kind(text)["ConfigMap"]["data"]["job.yaml"].as<std::string>(), o.spec_yaml);
}

TEST(K8sManifest, Names) {
  EXPECT_EQ(k8s_name("GPT small"), "gpt-small");
  EXPECT_EQ(k8s_name("7b"), "job-7b");
  EXPECT_LE(k8s_name(std::string(100, 'a')).size(), 40u);
}

TEST(K8sManifest, BadInput) {
  K8sOptions o;
  o.name = "x";
  o.image = "img";
  o.nodes = 0;
  EXPECT_THROW(jobset_manifest(o), ConfigError);
  o.nodes = 1;
  o.image.clear();
  EXPECT_THROW(jobset_manifest(o), ConfigError);
}

TEST(K8sManifest, FromTheBinary) {
  ptrain::testing::TempDir tmp("ptrain-k8s-test");
  std::string path = tmp.path() + "/job.yaml";
  std::ofstream(path) << "name: k\nnodes: {procs_per_node: 2, device: cpu}\nparallel: {data: 4}\n"
                         "train: {steps: 0}\n";
  ptrain::testing::PtrainProcess p({"k8s", path, "--nodes", "2", "--image", "img:1"});
  ASSERT_EQ(p.finish(), 0) << p.err;
  check_manifest(p.out, "k", 2, 2, 29500, "img:1");
  // A node count that does not fit the mesh is refused: one line, exit 2.
  ptrain::testing::PtrainProcess bad({"k8s", path, "--nodes", "3", "--image", "img:1"});
  EXPECT_EQ(bad.finish(), 2);
  EXPECT_EQ(ptrain::testing::count(bad.err, "\n"), 1u) << bad.err;
}

// env: values never appear in the manifest: job.yaml keeps ${KEY} references and each pod takes
// the value from the Secret <name>-env, which the header says how to create.
TEST(K8sManifest, EnvValuesComeFromASecretNotTheManifest) {
  ptrain::testing::TempDir tmp("ptrain-k8s-test");
  std::string path = tmp.path() + "/job.yaml";
  std::ofstream(path) << "name: k\nnodes: {procs_per_node: 1, device: cpu}\nparallel: {data: 2}\n"
                         "train: {steps: 0}\nenv: {API_KEY: s3cret-value-9, OTHER: x-y-z-42}\n";
  ptrain::testing::PtrainProcess p({"k8s", path, "--nodes", "2", "--image", "img:1"});
  ASSERT_EQ(p.finish(), 0) << p.err;
  check_manifest(p.out, "k", 2, 1, 29500, "img:1");
  EXPECT_FALSE(ptrain::testing::contains(p.out, "s3cret-value-9")) << p.out;
  EXPECT_FALSE(ptrain::testing::contains(p.out, "x-y-z-42")) << p.out;
  EXPECT_TRUE(
      ptrain::testing::contains(p.out,
                                "kubectl create secret generic k-env --from-literal=API_KEY=... "
                                "--from-literal=OTHER=..."))
      << p.out;
  auto docs = by_kind(p.out);
  std::string job = docs["ConfigMap"]["data"]["job.yaml"].as<std::string>();
  EXPECT_TRUE(ptrain::testing::contains(job, "API_KEY: ${API_KEY}")) << job;
  auto c = docs["JobSet"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
               ["containers"][0];
  std::map<std::string, YAML::Node> env;
  for (size_t i = 0; i < c["env"].size(); ++i)
    env[c["env"][i]["name"].as<std::string>()] = c["env"][i];
  for (const char* key : {"API_KEY", "OTHER"}) {
    ASSERT_TRUE(env.count(key)) << key;
    EXPECT_EQ(env[key]["valueFrom"]["secretKeyRef"]["name"].as<std::string>(), "k-env");
    EXPECT_EQ(env[key]["valueFrom"]["secretKeyRef"]["key"].as<std::string>(), key);
    EXPECT_FALSE(env[key]["value"]) << key;
  }
}

// rendezvous.tls (auto means on for pods): the job certificate comes from the Secret <name>-tls,
// mounted read-only with mode 0400, and PTRAIN_TLS_DIR points `ptrain node` at it; off: none.
TEST(K8sManifest, TlsCertificateComesFromASecret) {
  ptrain::testing::TempDir tmp("ptrain-k8s-test");
  std::string path = tmp.path() + "/job.yaml";
  std::ofstream(path) << "name: k\nnodes: {procs_per_node: 1, device: cpu}\nparallel: {data: 2}\n"
                         "train: {steps: 0}\n";
  ptrain::testing::PtrainProcess p({"k8s", path, "--nodes", "2", "--image", "img:1"});
  ASSERT_EQ(p.finish(), 0) << p.err;
  check_manifest(p.out, "k", 2, 1, 29500, "img:1");
  EXPECT_TRUE(ptrain::testing::contains(
      p.out, "ptrain tls init k-tls && kubectl create secret generic k-tls --from-file=k-tls"))
      << p.out;
  const YAML::Node pod =
      by_kind(p.out)["JobSet"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"];
  const YAML::Node c = pod["containers"][0];
  std::string tls_dir;
  for (size_t i = 0; i < c["env"].size(); ++i)
    if (c["env"][i]["name"].as<std::string>() == "PTRAIN_TLS_DIR")
      tls_dir = c["env"][i]["value"].as<std::string>();
  EXPECT_EQ(tls_dir, "/etc/ptrain-tls");
  ASSERT_EQ(c["volumeMounts"].size(), 2u);
  EXPECT_EQ(c["volumeMounts"][1]["mountPath"].as<std::string>(), "/etc/ptrain-tls");
  EXPECT_TRUE(c["volumeMounts"][1]["readOnly"].as<bool>());
  ASSERT_EQ(pod["volumes"].size(), 2u);
  EXPECT_EQ(pod["volumes"][1]["secret"]["secretName"].as<std::string>(), "k-tls");
  EXPECT_EQ(pod["volumes"][1]["secret"]["defaultMode"].as<int>(), 0400);
  // No key material in the manifest.
  EXPECT_FALSE(ptrain::testing::contains(p.out, "PRIVATE KEY")) << p.out;

  ptrain::testing::PtrainProcess off(
      {"k8s", path, "--nodes", "2", "--image", "img:1", "--set", "rendezvous.tls=off"});
  ASSERT_EQ(off.finish(), 0) << off.err;
  EXPECT_FALSE(ptrain::testing::contains(off.out, "PTRAIN_TLS_DIR")) << off.out;
  EXPECT_FALSE(ptrain::testing::contains(off.out, "k-tls")) << off.out;
}
