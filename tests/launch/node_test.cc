// `ptrain node`: N nodes as local processes on 127.0.0.1 (flags, and the Kubernetes
// environment), bad input, and the scheduler environment parsing.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>

#include "ptrain/core/error.h"
#include "ptrain/launch/launcher.h"
#include "ptrain/launch/node_launcher.h"
#include "support/ptrain_process.h"

using namespace ptrain;
using namespace ptrain::launch;
namespace fs = std::filesystem;

namespace {

using ptrain::testing::contains;
using ptrain::testing::read_file;
using ptrain::testing::TempDir;
using Ptrain = ptrain::testing::PtrainProcess;

const std::string kToken = "PTRAIN_TOKEN=node-test-token-0123456789";

class NodeTest : public ::testing::Test {
 protected:
  std::string runs() const { return tmp_.path() + "/runs"; }
  std::string spec(const std::string& body) {
    std::string path = tmp_.path() + "/job.yaml";
    std::ofstream(path) << "name: n\nlogging: {dir: " << runs() << ", console: all}\n"
                        << "rendezvous: {timeout_s: 20}\n"
                        << body;
    return path;
  }
  std::string run_dir() const {
    if (!fs::exists(runs())) return {};
    for (const auto& e : fs::directory_iterator(runs())) return e.path().string();
    return {};
  }
  std::vector<std::string> node(const std::string& spec_path, int nnodes, int rank) {
    return {"node",          spec_path,
            "--nnodes",      std::to_string(nnodes),
            "--node-rank",   std::to_string(rank),
            "--coordinator", fmt::format("127.0.0.1:{}", port_)};
  }
  void TearDown() override {
    auto scan = [&] {
      return ptrain::testing::find_processes([&](pid_t pid) {
        const std::string c = ptrain::testing::cmdline(pid);
        return contains(c, tmp_.path()) ||
               !ptrain::testing::processes_with_run_dir(tmp_.path()).empty();
      });
    };
    auto left = ptrain::testing::wait_all_gone(scan, Millis(10000));
    EXPECT_TRUE(left.empty()) << left.size() << " process(es) left, e.g. "
                              << (left.empty() ? "" : ptrain::testing::cmdline(left[0]));
    for (pid_t p : left) ::kill(p, SIGKILL);
  }
  void shrink_and_join(int procs, const std::string& parallel);
  TempDir tmp_{"ptrain-node-test"};
  int port_ = free_tcp_port("127.0.0.1");
};

const std::string kGpt =
    "nodes: {procs_per_node: 1, device: cpu}\nparallel: {data: 2}\n"
    "model: {type: gpt, layers: 1, heads: 2, dim: 32, seq_len: 16, vocab: 64}\n"
    "data: {type: synthetic, batch_size: 8}\ntrain: {steps: 6}\n";

std::vector<std::string> tls_on(std::vector<std::string> argv) {
  argv.insert(argv.end(), {"--set", "rendezvous.tls=on"});
  return argv;
}

}  // namespace

TEST_F(NodeTest, TwoNodesTrainToCompletion) {
  std::string s = spec(kGpt);
  // Node 1 starts first: it retries until node 0's coordinator is up.
  Ptrain n1(node(s, 2, 1), {kToken});
  ::usleep(500 * 1000);
  Ptrain n0(node(s, 2, 0), {kToken});
  ASSERT_EQ(n0.finish(), 0) << n0.out << n0.err;
  ASSERT_EQ(n1.finish(), 0) << n1.out << n1.err;
  std::string dir = run_dir();
  std::string summary = read_file(dir + "/summary.json");
  EXPECT_TRUE(contains(summary, "\"status\": \"succeeded\"")) << summary;
  EXPECT_TRUE(contains(summary, "\"exit_codes\": [0, 0]")) << summary;
  // Each node's relay joined once for its rank; no rank joined the coordinator itself.
  EXPECT_TRUE(contains(summary, "\"rendezvous\": {\"rank_joins\": 0, \"node_joins\": 2}"))
      << summary;
  EXPECT_TRUE(fs::exists(dir + "/hosts/node-1/rank-1.log"));
  EXPECT_FALSE(fs::exists(dir + "/hosts/node-0/rank-1.log"));
  EXPECT_TRUE(contains(read_file(dir + "/rank-1.log"), "rank 1/2 joined on node-1"))
      << read_file(dir + "/rank-1.log");
  EXPECT_TRUE(contains(n0.out, "step 6")) << n0.out;
  EXPECT_TRUE(contains(n1.out, "node 1 of 2 joined")) << n1.out;
  // The token never reaches a command line or the launcher log.
  EXPECT_FALSE(contains(read_file(dir + "/launcher.log"), "node-test-token"));
}

// The losses of metrics.jsonl, one per logged step.
std::vector<std::string> losses(const std::string& metrics) {
  std::vector<std::string> out;
  for (size_t at = metrics.find("\"loss\": "); at != std::string::npos;
       at = metrics.find("\"loss\": ", at + 1)) {
    size_t from = at + 8, to = metrics.find_first_of(",}", from);
    out.push_back(metrics.substr(from, to - from));
  }
  return out;
}

TEST_F(NodeTest, ThreeNodesInARelayTreeTrainLikeTheFlatJobAndOnlyTheTopNodesJoinTheCoordinator) {
  // tree_fanout 2 with 3 nodes: nodes 0 and 1 talk to the coordinator, node 2 to node 0's relay.
  const std::string three =
      "nodes: {procs_per_node: 1, device: cpu}\nparallel: {data: 3}\n"
      "model: {type: gpt, layers: 1, heads: 2, dim: 32, seq_len: 16, vocab: 64}\n"
      "data: {type: synthetic, batch_size: 6}\ntrain: {steps: 6}\n";
  std::string s = spec(three);
  auto run = [&](int fanout, const std::string& logs) {
    std::vector<std::unique_ptr<Ptrain>> nodes;
    for (int r = 2; r >= 0; --r) {
      auto argv = node(s, 3, r);
      argv.insert(argv.end(), {"--set", fmt::format("rendezvous.tree_fanout={}", fanout), "--set",
                               "logging.dir=" + logs});
      nodes.push_back(std::make_unique<Ptrain>(argv, std::vector<std::string>{kToken}));
    }
    for (auto& n : nodes) EXPECT_EQ(n->finish(), 0) << n->out << n->err;
    for (const auto& e : fs::directory_iterator(logs)) return e.path().string();
    return std::string();
  };
  std::string tree = run(2, tmp_.path() + "/tree");
  ASSERT_FALSE(tree.empty());
  std::string summary = read_file(tree + "/summary.json");
  EXPECT_TRUE(contains(summary, "\"status\": \"succeeded\"")) << summary;
  EXPECT_TRUE(contains(summary, "\"rendezvous\": {\"rank_joins\": 0, \"node_joins\": 2}"))
      << summary;
  EXPECT_TRUE(contains(read_file(tree + "/job.yaml"), "tree_fanout: 2"));
  port_ = free_tcp_port("127.0.0.1");
  std::string flat = run(0, tmp_.path() + "/flat");
  ASSERT_FALSE(flat.empty());
  EXPECT_TRUE(contains(read_file(flat + "/summary.json"),
                       "\"rendezvous\": {\"rank_joins\": 0, \"node_joins\": 3}"));
  auto a = losses(read_file(tree + "/metrics.jsonl"));
  EXPECT_EQ(a.size(), 6u);
  EXPECT_EQ(a, losses(read_file(flat + "/metrics.jsonl")));
}

TEST_F(NodeTest, AFailingRankOnNodeOneFailsTheJobOnEveryNode) {
  std::string s = spec(
      "nodes: {procs_per_node: 1}\nparallel: {data: 2}\n"
      "command: [sh, -c, 'if [ \"$RANK\" = 1 ]; then echo boom >&2; exit 7; fi; sleep 30']\n");
  Ptrain n0(node(s, 2, 0), {kToken});
  Ptrain n1(node(s, 2, 1), {kToken});
  EXPECT_EQ(n0.finish(), 7) << n0.out << n0.err;
  EXPECT_EQ(n1.finish(), 7) << n1.out << n1.err;
  EXPECT_TRUE(contains(n0.out + n0.err, "rank 1")) << n0.out << n0.err;
  EXPECT_TRUE(contains(n0.out + n0.err, "boom")) << n0.out << n0.err;
}

TEST_F(NodeTest, KubernetesEnvironmentWithoutFlags) {
  std::string s = spec(
      "nodes: {procs_per_node: 1}\nparallel: {data: 2}\n"
      "command: [sh, -c, 'echo rank=$RANK world=$WORLD_SIZE group=$GROUP_RANK "
      "master=$MASTER_ADDR']\n");
  auto pod = [&](int index) {
    // PyTorchJob's RANK/WORLD_SIZE count pods; PET_* are torchrun's.
    return std::vector<std::string>{kToken,
                                    "PET_NNODES=2",
                                    fmt::format("PET_NODE_RANK={}", index),
                                    "PET_NPROC_PER_NODE=1",
                                    "MASTER_ADDR=127.0.0.1",
                                    fmt::format("MASTER_PORT={}", port_),
                                    fmt::format("RANK={}", index),
                                    "WORLD_SIZE=2"};
  };
  Ptrain p0({"node", s}, pod(0));
  Ptrain p1({"node", s}, pod(1));
  ASSERT_EQ(p0.finish(), 0) << p0.out << p0.err;
  ASSERT_EQ(p1.finish(), 0) << p1.out << p1.err;
  std::string dir = run_dir();
  // Inside the workers RANK and WORLD_SIZE are processes again (torchrun's meaning).
  EXPECT_TRUE(contains(read_file(dir + "/rank-1.log"), "rank=1 world=2 group=1 master=127.0.0.1"))
      << read_file(dir + "/rank-1.log");
}

TEST_F(NodeTest, KubernetesPodsWithTheCertificateOfTheirSecretTrainOverTls) {
  // What `ptrain k8s` gives each pod when rendezvous.tls is on: the Secret's files in a folder
  // (here written by `ptrain tls init`) and PTRAIN_TLS_DIR naming it.
  const std::string certs = tmp_.path() + "/k-tls";
  Ptrain init({"tls", "init", certs});
  ASSERT_EQ(init.finish(), 0) << init.err;
  std::string s = spec(kGpt);
  auto pod = [&](int index) {
    return std::vector<std::string>{kToken,
                                    "PET_NNODES=2",
                                    fmt::format("PET_NODE_RANK={}", index),
                                    "PET_NPROC_PER_NODE=1",
                                    "MASTER_ADDR=127.0.0.1",
                                    fmt::format("MASTER_PORT={}", port_),
                                    "PTRAIN_TLS_DIR=" + certs};
  };
  Ptrain p0(tls_on({"node", s}), pod(0));
  Ptrain p1(tls_on({"node", s}), pod(1));
  ASSERT_EQ(p0.finish(), 0) << p0.out << p0.err;
  ASSERT_EQ(p1.finish(), 0) << p1.out << p1.err;
  const std::string dir = run_dir();
  EXPECT_TRUE(contains(read_file(dir + "/launcher.log"),
                       "rendezvous.tls: mutual TLS on every gRPC channel (the certificate of "
                       "--tls-dir)"))
      << read_file(dir + "/launcher.log");
  EXPECT_TRUE(contains(read_file(dir + "/summary.json"), "\"status\": \"succeeded\""));
}

TEST_F(NodeTest, BadInputIsOneLineAndExitTwo) {
  std::string s = spec(kGpt);
  {
    Ptrain p(node(s, 2, 2), {kToken});
    EXPECT_EQ(p.finish(), 2);
    EXPECT_TRUE(contains(p.err, "--node-rank 2 is outside 0..1")) << p.err;
    EXPECT_EQ(ptrain::testing::count(p.err, "\n"), 1u) << p.err;
  }
  {
    Ptrain p(node(s, 2, 0), {"PTRAIN_TOKEN="});
    EXPECT_EQ(p.finish(), 2);
    EXPECT_TRUE(contains(p.err, "no job token")) << p.err;
  }
  EXPECT_TRUE(run_dir().empty()) << "a run folder was made for bad input";
}

TEST_F(NodeTest, TwoNodesClaimingTheSameRank) {
  std::string s =
      spec("nodes: {procs_per_node: 1}\nparallel: {data: 2}\ncommand: [sh, -c, 'sleep 5']\n");
  Ptrain n0(node(s, 2, 0), {kToken});
  Ptrain n1(node(s, 2, 1), {kToken});
  ASSERT_TRUE(n1.wait_for([&] { return contains(n1.out, "joined"); })) << n1.out << n1.err;
  Ptrain dup(node(s, 2, 1), {kToken});
  EXPECT_EQ(dup.finish(), 2) << dup.out << dup.err;
  EXPECT_TRUE(contains(dup.err, "node rank 1 is already taken")) << dup.err;
  Ptrain wrong(node(s, 2, 1), {"PTRAIN_TOKEN=not-the-job-token-0123"});
  EXPECT_EQ(wrong.finish(), 2) << wrong.out << wrong.err;
  EXPECT_TRUE(contains(wrong.err, "wrong or missing job token")) << wrong.err;
  Ptrain dup0(node(s, 2, 0), {kToken});
  EXPECT_EQ(dup0.finish(), 2) << dup0.out << dup0.err;
  EXPECT_TRUE(contains(dup0.err, "node 0: cannot listen")) << dup0.err;
  EXPECT_EQ(n0.finish(), 0) << n0.out << n0.err;
  EXPECT_EQ(n1.finish(), 0) << n1.out << n1.err;
}

TEST_F(NodeTest, TlsNodesShareTheCertificateOfTlsInitAndRefuseOthers) {
  std::string s = spec(kGpt);
  const std::string job = tmp_.path() + "/job-tls", other = tmp_.path() + "/other-tls";
  for (const auto& d : {job, other}) {
    Ptrain init({"tls", "init", d}, {});
    ASSERT_EQ(init.finish(), 0) << init.out << init.err;
  }
  EXPECT_EQ(fs::status(job).permissions() & fs::perms::all, fs::perms::owner_all);
  EXPECT_EQ(fs::status(job + "/key.pem").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  {
    // A job's identity is never overwritten.
    Ptrain again({"tls", "init", job}, {});
    EXPECT_EQ(again.finish(), 2) << again.out << again.err;
    EXPECT_TRUE(contains(again.err, "already holds a job certificate")) << again.err;
  }
  auto with_tls = [&](std::vector<std::string> argv, const std::string& dir) {
    argv.insert(argv.end(), {"--tls-dir", dir});
    return argv;
  };
  Ptrain n0(with_tls(tls_on(node(s, 2, 0)), job), {kToken});
  // Without the certificate, and with another job's, node 1 never gets past the handshake.
  auto intruder = node(s, 2, 1);
  intruder.insert(intruder.end(), {"--set", "rendezvous.timeout_s=3"});
  Ptrain plain(intruder, {kToken});
  Ptrain foreign(with_tls(intruder, other), {kToken});
  EXPECT_NE(plain.finish(), 0) << plain.out << plain.err;
  EXPECT_NE(foreign.finish(), 0) << foreign.out << foreign.err;
  for (const Ptrain* p : {&plain, &foreign}) {
    EXPECT_TRUE(contains(p->err, "did not answer within 3 s")) << p->out << p->err;
    EXPECT_FALSE(contains(p->out, "joined")) << p->out;
  }
  // The node with the job's certificate (through PTRAIN_TLS_DIR) joins and the job trains.
  Ptrain n1(tls_on(node(s, 2, 1)), {kToken, "PTRAIN_TLS_DIR=" + job});
  ASSERT_EQ(n0.finish(), 0) << n0.out << n0.err;
  ASSERT_EQ(n1.finish(), 0) << n1.out << n1.err;
  std::string dir = run_dir();
  EXPECT_TRUE(contains(read_file(dir + "/summary.json"), "\"status\": \"succeeded\""));
  EXPECT_TRUE(contains(read_file(dir + "/launcher.log"), "rendezvous.tls: mutual TLS"))
      << read_file(dir + "/launcher.log");
  EXPECT_TRUE(contains(n0.out, "step 6")) << n0.out;
  // The agents' copies of the key go with them; the folder of `tls init` stays.
  for (const char* host : {"node-0", "node-1"})
    EXPECT_FALSE(fs::exists(dir + "/hosts/" + host + "/.tls")) << host;
  EXPECT_TRUE(fs::exists(job + "/key.pem"));
}

TEST_F(NodeTest, TlsOnWithoutACertificateIsOneLineAndExitTwo) {
  std::string s = spec(kGpt);
  Ptrain p(tls_on(node(s, 2, 0)), {kToken});
  EXPECT_EQ(p.finish(), 2) << p.out << p.err;
  EXPECT_TRUE(contains(p.err, "rendezvous.tls: on, but this node was given no job certificate"))
      << p.err;
  EXPECT_TRUE(contains(p.err, "ptrain tls init DIR")) << p.err;
  EXPECT_EQ(ptrain::testing::count(p.err, "\n"), 1u) << p.err;
  Ptrain missing(tls_on(node(s, 2, 0)), {kToken, "PTRAIN_TLS_DIR=" + tmp_.path() + "/nothing"});
  EXPECT_EQ(missing.finish(), 2) << missing.out << missing.err;
  EXPECT_TRUE(contains(missing.err, "cannot read the job certificate file")) << missing.err;
  EXPECT_TRUE(run_dir().empty()) << "a run folder was made for bad input";
}

TEST(NodeEnvironment, KubernetesAndSlurm) {
  NodeEnvironment k = node_environment({{"PET_NNODES", "4"},
                                        {"PET_NODE_RANK", "3"},
                                        {"PET_NPROC_PER_NODE", "2"},
                                        {"MASTER_ADDR", "job-0.svc"},
                                        {"MASTER_PORT", "29500"}});
  EXPECT_EQ(k.source, "kubernetes");
  EXPECT_EQ(k.nnodes, 4);
  EXPECT_EQ(k.node_rank, 3);
  EXPECT_EQ(k.procs_per_node, 2);
  EXPECT_EQ(k.coordinator, "job-0.svc:29500");
  // PyTorchJob without PET_*: RANK is the pod index, WORLD_SIZE the pod count.
  NodeEnvironment p =
      node_environment({{"MASTER_ADDR", "m"}, {"RANK", "1"}, {"WORLD_SIZE", "3"}}, 1234);
  EXPECT_EQ(p.nnodes, 3);
  EXPECT_EQ(p.node_rank, 1);
  EXPECT_EQ(p.coordinator, "m:1234");
  // Elastic ranges take their maximum.
  EXPECT_EQ(node_environment({{"PET_NNODES", "1:5"}, {"MASTER_ADDR", "m"}}).nnodes, 5);
  NodeEnvironment s = node_environment({{"SLURM_NODEID", "1"},
                                        {"SLURM_NNODES", "3"},
                                        {"SLURM_JOB_NODELIST", "gpu[07-09]"},
                                        {"SLURM_JOB_ID", "123456"}});
  EXPECT_EQ(s.source, "slurm");
  EXPECT_EQ(s.nnodes, 3);
  EXPECT_EQ(s.node_rank, 1);
  EXPECT_EQ(s.coordinator, fmt::format("gpu07:{}", 15000 + 123456 % 20000));
  // A port set in the spec wins over the job id.
  EXPECT_EQ(
      node_environment({{"SLURM_JOB_NODELIST", "a,b"}, {"SLURM_JOB_ID", "9"}}, 777).coordinator,
      "a:777");
  EXPECT_THROW(node_environment({{"PET_NNODES", "two"}, {"MASTER_ADDR", "m"}}), ConfigError);
  EXPECT_THROW(node_environment({{"SLURM_JOB_NODELIST", "n[1-"}}), ConfigError);
  EXPECT_TRUE(node_environment({}).source.empty());
}

TEST_F(NodeTest, AnElasticJobShrinksWhenANodeDiesAndTakesInANodeThatJoinsWithTheSameLosses) {
  // 2 nodes x 1 worker, data parallel.
  shrink_and_join(1, "{data: 2}");
}

TEST_F(NodeTest, AnElasticTensorParallelJobShrinksAndGrowsByWholeTensorGroups) {
  // 2 nodes x 2 workers, data 2 x tensor 2: each node holds one tensor-parallel pair, so the
  // job re-forms as data 1 x tensor 2 on node 0 and back.
  shrink_and_join(2, "{data: 2, tensor: 2}");
}

TEST_F(NodeTest, JoiningAJobThatIsNotElasticIsOneLineAndExitTwo) {
  std::string s =
      spec("nodes: {procs_per_node: 1}\nparallel: {data: 2}\ncommand: [sh, -c, 'sleep 4']\n");
  Ptrain n0(node(s, 2, 0), {kToken});
  Ptrain n1(node(s, 2, 1), {kToken});
  ASSERT_TRUE(n1.wait_for([&] { return contains(n1.out, "joined"); })) << n1.out << n1.err;
  std::vector<std::string> argv = node(s, 2, 0);
  argv.erase(argv.begin() + 4, argv.begin() + 6);
  argv.push_back("--join");
  Ptrain j(argv, {kToken});
  EXPECT_EQ(j.finish(), 2) << j.out << j.err;
  EXPECT_TRUE(contains(j.err, "--join: the job at 127.0.0.1:")) << j.err;
  EXPECT_TRUE(contains(j.err, "is not elastic, so it takes no node that joins")) << j.err;
  EXPECT_EQ(ptrain::testing::count(j.err, "\n"), 1u) << j.err;
  std::vector<std::string> b = node(s, 2, 1);  // --node-rank and --join together
  b.push_back("--join");
  Ptrain bad(b, {kToken});
  EXPECT_EQ(bad.finish(), 2) << bad.out << bad.err;
  EXPECT_TRUE(contains(bad.err, "--join with --node-rank 1")) << bad.err;
  EXPECT_EQ(n0.finish(), 0) << n0.out << n0.err;
  EXPECT_EQ(n1.finish(), 0) << n1.out << n1.err;
}

// Elastic `ptrain node`: node 1 dies for good, the job shrinks to node 0, a node that joins is
// taken back; `procs` workers per node, `parallel` the mesh of the whole job (data 2).
void NodeTest::shrink_and_join(int procs, const std::string& parallel) {
  // 2 nodes x 1 worker, nodes.min_nodes 1, a checkpoint every 4 steps, steps of 100 ms. Node 1
  // is killed after step 10: once its relay stops beating the job re-forms on node 0 alone (data
  // 1 x grad_accum 2 from the step-8 checkpoint). Then a third `ptrain node --join` joins: at the
  // next complete checkpoint the job re-forms on node 0 and it (data 2 x grad_accum 1). The
  // global batch never changes, so every step's loss equals the uninterrupted 2-node run's.
  constexpr int kSteps = 48;
  auto job = [&](const std::string& name, const std::string& extra) {
    std::string path = tmp_.path() + "/" + name + ".yaml";
    std::ofstream(path) << "name: " << name << "\nlogging: {dir: " << tmp_.path() << "/" << name
                        << ", console: rank0}\nrendezvous: {timeout_s: 20}\n"
                        << "nodes: {procs_per_node: " << procs
                        << ", device: cpu, threads_per_proc: 1, min_nodes: 1}\nparallel: "
                        << parallel
                        << "\n"
                           "model: {type: gpt, layers: 2, heads: 2, dim: 32, seq_len: 16, "
                           "vocab: 64}\ndata: {type: synthetic, batch_size: 8}\n"
                        << "train: {steps: " << kSteps
                        << ", seed: 7, log_every: 1}\ncheckpoint: {every: 4, keep: 2}\n"
                           "fault_tolerance: {max_restarts: 3, heartbeat_s: 0.2, "
                           "hang_timeout_s: 60, term_grace_s: 2}\n"
                        << extra;
    return path;
  };
  auto only_dir = [&](const std::string& name) {
    const std::string d = tmp_.path() + "/" + name;
    if (!fs::exists(d)) return std::string();
    for (const auto& e : fs::directory_iterator(d)) return e.path().string();
    return std::string();
  };
  auto step_losses = [](const std::string& dir) {
    std::vector<std::pair<int, double>> out;
    std::ifstream in(dir + "/metrics.jsonl");
    std::string line;
    std::regex re(R"re("step": (\d+),.*"loss": ([^,}]+))re");
    std::smatch m;
    while (std::getline(in, line))
      if (std::regex_search(line, m, re)) out.emplace_back(std::stoi(m[1]), std::stod(m[2]));
    return out;
  };
  std::map<int, double> expected;
  {
    const std::string ref = job("ref", "");
    Ptrain n1(node(ref, 2, 1), {kToken});
    Ptrain n0(node(ref, 2, 0), {kToken});
    ASSERT_EQ(n0.finish(), 0) << n0.out << n0.err;
    ASSERT_EQ(n1.finish(), 0) << n1.out << n1.err;
    for (const auto& [step, loss] : step_losses(only_dir("ref"))) expected[step] = loss;
    ASSERT_EQ(expected.size(), static_cast<size_t>(kSteps));
  }

  const std::string s = job("elastic", "env: {PTRAIN_TEST_SLOW_RANK: \"-1:100\"}\n");
  Ptrain n0(node(s, 2, 0), {kToken});
  Ptrain n1(node(s, 2, 1), {kToken});
  ASSERT_TRUE(n0.wait_for([&] {
    const std::string dir = only_dir("elastic");
    if (dir.empty()) return false;
    for (const auto& [step, loss] : step_losses(dir))
      if (step == 10) return true;
    return false;
  })) << n0.out
      << n0.err;
  // Node 1 dies with its agent and worker (they follow their parent with PR_SET_PDEATHSIG).
  ::kill(n1.proc().pid(), SIGKILL);
  n1.finish();
  const std::string dir = only_dir("elastic");
  ASSERT_TRUE(n0.wait_for([&] {
    return contains(read_file(dir + "/launcher.log"), "shrinking to 1 host");
  })) << n0.out
      << n0.err << read_file(dir + "/launcher.log");
  std::vector<std::string> join_argv = node(s, 2, 0);
  join_argv.erase(join_argv.begin() + 4, join_argv.begin() + 6);  // no --node-rank
  join_argv.push_back("--join");
  Ptrain joiner(join_argv, {kToken});
  ASSERT_EQ(n0.finish(), 0) << n0.out << n0.err << read_file(dir + "/launcher.log");
  ASSERT_EQ(joiner.finish(), 0) << joiner.out << joiner.err;

  const std::string launcher = read_file(dir + "/launcher.log");
  std::istringstream lines(launcher);
  for (std::string line; std::getline(lines, line);)
    if (contains(line, "shrinking") || contains(line, "restart ") || contains(line, "join") ||
        contains(line, "elastic:") || contains(line, "growing") || contains(line, "training again"))
      std::printf("[ launcher ] %s\n", line.c_str());
  EXPECT_TRUE(contains(joiner.out, "joined the job at 127.0.0.1:")) << joiner.out;
  EXPECT_TRUE(contains(joiner.out, " as node-2;")) << joiner.out;
  EXPECT_TRUE(contains(launcher, "shrinking to 1 host: host node-1 lost (")) << launcher;
  EXPECT_TRUE(contains(launcher, fmt::format("elastic: {} worker(s) on 1 node(s), data 1 x "
                                             "grad_accum 2",
                                             procs)))
      << launcher;
  EXPECT_TRUE(contains(launcher,
                       "host node-2 can join: re-forming the job at the next "
                       "checkpoint"))
      << launcher;
  EXPECT_TRUE(
      contains(launcher, fmt::format("growing to 2 hosts (node-2 joins), {} worker(s)", 2 * procs)))
      << launcher;
  EXPECT_TRUE(contains(launcher, fmt::format("elastic: {} worker(s) on 2 node(s), data 2 x "
                                             "grad_accum 1",
                                             2 * procs)))
      << launcher;
  EXPECT_TRUE(fs::exists(fmt::format("{}/hosts/node-2/rank-{}.log", dir, procs)));
  const std::string summary = read_file(dir + "/summary.json");
  EXPECT_TRUE(contains(summary, R"("status": "succeeded")")) << summary;
  EXPECT_TRUE(contains(summary, fmt::format("\"world_size\": {}", 2 * procs))) << summary;
  EXPECT_TRUE(contains(summary, R"("hosts": ["node-0", "node-2"])")) << summary;
  EXPECT_TRUE(contains(summary, R"("grows": [{"round": )")) << summary;
  std::map<int, int> seen;
  for (const auto& [step, loss] : step_losses(dir)) {
    ++seen[step];
    ASSERT_TRUE(expected.count(step)) << "step " << step;
    EXPECT_NEAR(loss, expected.at(step), 1e-5 * std::abs(expected.at(step))) << "step " << step;
  }
  for (int k = 1; k <= kSteps; ++k) EXPECT_GE(seen[k], 1) << "step " << k << " missing";
}
