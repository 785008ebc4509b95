// Slurm without a cluster: the srun command line, the sbatch script, bad input of `launch
// --slurm` and `submit`, and two `ptrain node`s started with the environment srun gives its
// tasks (SLURM_NODEID, SLURM_NNODES, SLURM_JOB_NODELIST, SLURM_JOB_ID).
#include "ptrain/launch/slurm.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "ptrain/core/error.h"
#include "ptrain/launch/launcher.h"
#include "ptrain/launch/ssh.h"
#include "support/ptrain_process.h"

using namespace ptrain;
using namespace ptrain::launch;
namespace fs = std::filesystem;
using ptrain::testing::contains;
using ptrain::testing::read_file;
using Ptrain = ptrain::testing::PtrainProcess;

TEST(Slurm, SrunArgv) {
  auto argv = srun_argv("/opt/ptrain", 3, "/r/job.yaml", {"train.steps=5"});
  std::vector<std::string> want = {"srun",
                                   "--nodes=3",
                                   "--ntasks=3",
                                   "--ntasks-per-node=1",
                                   "--kill-on-bad-exit=1",
                                   "/opt/ptrain",
                                   "node",
                                   "/r/job.yaml",
                                   "--set",
                                   "train.steps=5"};
  EXPECT_EQ(argv, want);
}

TEST(Slurm, SbatchScript) {
  SbatchOptions o;
  o.name = "gpt";
  o.nodes = 4;
  o.partition = "gpu";
  o.time = "1:00:00";
  o.program = "/opt/it's/ptrain";
  o.spec_path = "/runs/gpt-1/job.yaml";
  o.out_dir = "/runs/gpt-1";
  std::string s = sbatch_script(o);
  EXPECT_EQ(s.rfind("#!/bin/bash\n", 0), 0u) << s;
  for (const char* line :
       {"#SBATCH --job-name=gpt\n", "#SBATCH --nodes=4\n", "#SBATCH --ntasks-per-node=1\n",
        "#SBATCH --output=/runs/gpt-1/slurm-%j.out\n", "#SBATCH --partition=gpu\n",
        "#SBATCH --time=1:00:00\n", "export PTRAIN_TOKEN=\"$(od -An -N16 -tx1 /dev/urandom"})
    EXPECT_TRUE(contains(s, line)) << line << "\n" << s;
  EXPECT_TRUE(contains(s,
                       "exec 'srun' '--nodes=4' '--ntasks=4' '--ntasks-per-node=1' "
                       "'--kill-on-bad-exit=1' '/opt/it'\\''s/ptrain' 'node' "
                       "'/runs/gpt-1/job.yaml'\n"))
      << s;
  o.partition.clear();
  o.time.clear();
  s = sbatch_script(o);
  EXPECT_FALSE(contains(s, "--partition")) << s;
  EXPECT_FALSE(contains(s, "--time")) << s;
  o.nodes = 0;
  EXPECT_THROW(sbatch_script(o), ConfigError);
}

TEST(Slurm, LaunchOutsideAnAllocation) {
  EXPECT_THROW(slurm_launch("ptrain", "job.yaml", {}, {},
                            [](const char*) -> const char* { return nullptr; }),
               ConfigError);
}

class SlurmBinaryTest : public ::testing::Test {
 protected:
  std::string spec(const std::string& body, int port = 0) {
    std::string path = tmp_.path() + "/job.yaml";
    std::ofstream(path) << "name: s\nlogging: {dir: " << tmp_.path() << "/runs, console: all}\n"
                        << "rendezvous: {timeout_s: 20, port: " << port << "}\n"
                        << body;
    return path;
  }
  ptrain::testing::TempDir tmp_{"ptrain-slurm-test"};
};

TEST_F(SlurmBinaryTest, BadInputIsOneLineAndExitTwo) {
  std::string s = spec("parallel: {data: 2}\nnodes: {procs_per_node: 1}\ncommand: [true]\n");
  {
    Ptrain p({"launch", "--slurm", s});
    EXPECT_EQ(p.finish(), 2) << p.err;
    EXPECT_TRUE(contains(p.err, "not inside a Slurm allocation")) << p.err;
    EXPECT_EQ(ptrain::testing::count(p.err, "\n"), 1u) << p.err;
  }
  // sbatch and srun are looked up on the PATH: an empty one has neither.
  const std::string old_path = std::getenv("PATH");
  ::setenv("PATH", (tmp_.path() + "/no-bin").c_str(), 1);
  {
    Ptrain p({"launch", "--slurm", s}, {"SLURM_JOB_ID=5", "SLURM_JOB_NODELIST=n[1-2]"});
    EXPECT_EQ(p.finish(), 2) << p.err;
    EXPECT_TRUE(contains(p.err, "srun is not on the PATH")) << p.err;
  }
  {
    Ptrain p({"submit", s, "--nodes", "2"});
    EXPECT_EQ(p.finish(), 2) << p.err;
    EXPECT_TRUE(contains(p.err, "sbatch is not on the PATH")) << p.err;
    EXPECT_EQ(ptrain::testing::count(p.err, "\n"), 1u) << p.err;
  }
  ::setenv("PATH", old_path.c_str(), 1);
  EXPECT_FALSE(fs::exists(tmp_.path() + "/runs")) << "a run folder was made for bad input";
}

TEST_F(SlurmBinaryTest, NodesFromTheSrunEnvironment) {
  const int port = free_tcp_port("127.0.0.1");
  std::string s = spec(
      "parallel: {data: 2}\nnodes: {procs_per_node: 1}\n"
      "command: [sh, -c, 'echo rank=$RANK world=$WORLD_SIZE master=$MASTER_ADDR']\n",
      port);
  auto task = [&](int node) {
    return std::vector<std::string>{"PTRAIN_TOKEN=slurm-test-token-0123456789", "SLURM_JOB_ID=4242",
                                    "SLURM_NNODES=2", fmt::format("SLURM_NODEID={}", node),
                                    "SLURM_JOB_NODELIST=127.0.0.1"};
  };
  Ptrain t1({"node", s}, task(1));
  Ptrain t0({"node", s}, task(0));
  ASSERT_EQ(t0.finish(), 0) << t0.out << t0.err;
  ASSERT_EQ(t1.finish(), 0) << t1.out << t1.err;
  EXPECT_TRUE(contains(t0.out, fmt::format("coordinator 127.0.0.1:{}", port))) << t0.out;
  std::string runs = tmp_.path() + "/runs";
  std::string dir;
  for (const auto& e : fs::directory_iterator(runs)) dir = e.path().string();
  EXPECT_TRUE(contains(read_file(dir + "/rank-1.log"), "rank=1 world=2 master=127.0.0.1"))
      << read_file(dir + "/rank-1.log");
}

// `ptrain submit` keeps env: values out of job.yaml and the batch script: job.yaml holds ${KEY}
// references, the values are in a 0600 .env the script sources before srun. sbatch is a stand-in
// here that only answers a job id (the real one runs in test_slurm_cluster).
TEST_F(SlurmBinaryTest, SubmitKeepsEnvValuesInAPrivateFileOnly) {
  const std::string bin = tmp_.path() + "/bin";
  fs::create_directories(bin);
  std::ofstream(bin + "/sbatch") << "#!/bin/sh\necho '4242;cluster'\n";
  fs::permissions(bin + "/sbatch", fs::perms::owner_all);
  const std::string value = "s3cret 'quoted' $HOME \"v\"";
  std::string s = spec(
      "parallel: {data: 2}\nnodes: {procs_per_node: 1, device: cpu}\n"
      "train: {steps: 0}\nenv: {API_KEY: '" +
      std::string("s3cret ''quoted'' $HOME \"v\"") + "'}\n");
  const std::string old_path = std::getenv("PATH");
  ::setenv("PATH", (bin + ":" + old_path).c_str(), 1);
  Ptrain p({"submit", s, "--nodes", "2", "--set", "logging.mode=shared"});
  int code = p.finish();
  ::setenv("PATH", old_path.c_str(), 1);
  ASSERT_EQ(code, 0) << p.err;
  EXPECT_TRUE(contains(p.out, "4242")) << p.out;
  std::string dir;
  for (const auto& e : fs::directory_iterator(tmp_.path() + "/runs")) dir = e.path().string();
  ASSERT_FALSE(dir.empty());
  const std::string job = read_file(dir + "/job.yaml"), script = read_file(dir + "/submit.sbatch");
  EXPECT_FALSE(contains(job, "s3cret")) << job;
  EXPECT_TRUE(contains(job, "API_KEY: ${API_KEY}")) << job;
  EXPECT_FALSE(contains(script, "s3cret")) << script;
  EXPECT_TRUE(contains(script, ". '" + dir + "/.env'")) << script;
  // Private even though logging.mode is shared; sourcing it gives the value back exactly.
  EXPECT_EQ(fs::status(dir + "/.env").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  CommandResult r = run_command(
      {"/bin/bash", "-c", ". \"$0\" && printf %s \"$API_KEY\"", dir + "/.env"}, "", Millis(10000));
  EXPECT_EQ(r.out, value);
}

TEST_F(SlurmBinaryTest, SubmitWritesAPrivateCertificateForItsNodes) {
  std::string s = spec("parallel: {data: 2}\nnodes: {procs_per_node: 1}\ncommand: [true]\n");
  // A stand-in sbatch: submit only needs it to answer with a job id.
  fs::create_directories(tmp_.path() + "/bin");
  const std::string sbatch = tmp_.path() + "/bin/sbatch";
  std::ofstream(sbatch) << "#!/bin/sh\necho '4242;cluster'\n";
  fs::permissions(sbatch, fs::perms::owner_all);
  const std::string old_path = std::getenv("PATH");
  ::setenv("PATH", (tmp_.path() + "/bin:" + old_path).c_str(), 1);
  Ptrain p({"submit", s, "--nodes", "2"});
  const int code = p.finish();
  ::setenv("PATH", old_path.c_str(), 1);
  ASSERT_EQ(code, 0) << p.out << p.err;
  EXPECT_TRUE(contains(p.out, "4242")) << p.out;
  std::string dir;
  for (const auto& e : fs::directory_iterator(tmp_.path() + "/runs")) dir = e.path().string();
  ASSERT_FALSE(dir.empty());
  // rendezvous.tls auto: the nodes get the job certificate from the run folder's private part.
  const std::string tls = dir + "/.tls";
  EXPECT_EQ(fs::status(tls).permissions() & fs::perms::all, fs::perms::owner_all);
  for (const char* f : {"ca.pem", "cert.pem", "key.pem"}) {
    EXPECT_EQ(fs::status(tls + "/" + f).permissions() & fs::perms::all,
              fs::perms::owner_read | fs::perms::owner_write)
        << f;
  }
  const std::string script = read_file(dir + "/submit.sbatch");
  EXPECT_TRUE(contains(script, "'--tls-dir' '" + tls + "'\n")) << script;
  EXPECT_TRUE(contains(script, "tls_dir='" + tls + "'\ntrap 'rm -rf \"$tls_dir\"' EXIT\n"))
      << script;
}
