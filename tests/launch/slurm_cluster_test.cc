// `ptrain launch --slurm` and `ptrain submit` against a real Slurm: Debian's munged, slurmctld and
// slurmd started here (one node `localhost`, state, spool, logs and ports of this test's own),
// running a 2-worker job to completion, a failing job (its exit code and root cause), and a
// scancel that leaves no process behind.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include "ptrain/launch/launcher.h"
#include "ptrain/launch/process.h"
#include "ptrain/launch/ssh.h"
#include "support/ptrain_process.h"

using namespace ptrain;
using namespace ptrain::launch;
namespace fs = std::filesystem;
using ptrain::testing::contains;

namespace {

std::string which(const std::string& prog) {
  const char* p = std::getenv("PATH");
  std::string path = std::string(p ? p : "") + ":/usr/sbin:/sbin";
  return find_in_path(prog, path);
}

class SlurmCluster : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (const char* prog : {"munged", "mungekey", "slurmctld", "slurmd", "salloc", "sbatch"})
      if (which(prog).empty()) missing_ += std::string(missing_.empty() ? "" : ", ") + prog;
    if (!missing_.empty() || ::geteuid() != 0) return;
    tmp_ = std::make_unique<ptrain::testing::TempDir>("ptrain-slurm");
    const std::string d = tmp_->path();
    fs::create_directories(d + "/state");
    fs::create_directories(d + "/spool");
    CommandResult k =
        run_command({which("mungekey"), "-c", "-k", d + "/munge.key"}, "", Millis(10000));
    ASSERT_EQ(k.status.shell_code(), 0) << k.err;
    fs::permissions(d + "/munge.key", fs::perms::owner_read | fs::perms::owner_write);
    const int ctld_port = free_tcp_port("127.0.0.1");
    const int slurmd_port = free_tcp_port("127.0.0.1");
    std::ofstream(d + "/slurm.conf") << fmt::format(
        "ClusterName=ptraintest\nSlurmctldHost=localhost\nSlurmUser=root\nSlurmdUser=root\n"
        "SlurmctldPort={}\nSlurmdPort={}\nAuthType=auth/munge\nAuthInfo=socket={}/munge.sock\n"
        "CredType=cred/munge\nStateSaveLocation={}/state\nSlurmdSpoolDir={}/spool\n"
        "SlurmctldPidFile={}/slurmctld.pid\nSlurmdPidFile={}/slurmd.pid\n"
        "SlurmctldLogFile={}/slurmctld.log\nSlurmdLogFile={}/slurmd.log\n"
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n"
        "SchedulerType=sched/builtin\nReturnToService=2\nMpiDefault=none\n"
        "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n"
        "NodeName=localhost CPUs={} State=UNKNOWN\n"
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
        ctld_port, slurmd_port, d, d, d, d, d, d, d, ::sysconf(_SC_NPROCESSORS_ONLN));
    ::setenv("SLURM_CONF", (d + "/slurm.conf").c_str(), 1);
    auto daemon = [&](const std::string& cmd) {
      ProcessOptions po;
      po.argv = {"sh", "-c", cmd};
      po.env = ptrain::testing::our_env();
      po.pipe_output = false;
      daemons_.push_back(std::make_unique<ChildProcess>(ChildProcess::spawn(po)));
    };
    daemon(
        fmt::format("exec {} -F -f --key-file={d}/munge.key --socket={d}/munge.sock "
                    "--pid-file={d}/munged.pid --log-file={d}/munged.log "
                    "--seed-file={d}/munge.seed >/dev/null 2>&1",
                    which("munged"), fmt::arg("d", d)));
    ::usleep(300 * 1000);
    daemon(fmt::format("exec {} -D -i -f {}/slurm.conf >/dev/null 2>&1", which("slurmctld"), d));
    daemon(fmt::format("exec {} -D -f {}/slurm.conf >/dev/null 2>&1", which("slurmd"), d));
    // Up when the node is idle.
    Deadline up(Millis(30000));
    while (!up.expired()) {
      CommandResult r = run_command({which("sinfo"), "-h", "-o", "%T"}, "", Millis(5000));
      if (contains(r.out, "idle")) return;
      ::usleep(200 * 1000);
    }
    FAIL() << "slurm did not come up; see " << d << "/slurmctld.log and slurmd.log";
  }
  static void TearDownTestSuite() {
    if (tmp_ && !daemons_.empty()) {
      // Jobs end (their slurmstepd reports to slurmctld) before the daemons stop.
      Deadline idle(Millis(30000));
      while (!idle.expired()) {
        CommandResult q = run_command({which("squeue"), "-h"}, "", Millis(5000));
        if (q.status.shell_code() == 0 && q.out.empty()) break;
        ::usleep(200 * 1000);
      }
    }
    for (auto& p : daemons_) p->signal_group(SIGTERM);
    for (auto& p : daemons_)
      if (!p->wait(Millis(5000))) p->signal_group(SIGKILL);
    daemons_.clear();
    if (tmp_) {
      // A step daemon of this cluster still there now would outlive the test: it is killed.
      const std::string conf = "SLURM_CONF=" + tmp_->path() + "/slurm.conf";
      auto ours = [&] {
        return ptrain::testing::find_processes([&](pid_t pid) {
          if (!contains(ptrain::testing::cmdline(pid), "slurmstepd")) return false;
          for (const auto& kv : ptrain::testing::environ_of(pid))
            if (kv == conf) return true;
          return false;
        });
      };
      for (pid_t p : ptrain::testing::wait_all_gone(ours, Millis(5000))) ::kill(p, SIGKILL);
    }
    tmp_.reset();
  }
  void SetUp() override {
    // No skip: a machine that cannot run the daemons fails here with the reason.
    ASSERT_TRUE(missing_.empty()) << "Slurm is not installed (" << missing_
                                  << "); scripts/setup.sh installs slurm-wlm and munge";
    ASSERT_EQ(::geteuid(), 0u) << "slurmd must run as root (the test starts its own daemons)";
    ASSERT_TRUE(tmp_);
  }
  std::string spec(const std::string& name, const std::string& body) {
    std::string path = tmp_->path() + "/" + name + ".yaml";
    std::ofstream(path) << "name: " << name << "\nlogging: {dir: " << tmp_->path() << "/runs-"
                        << name << ", console: rank0}\nrendezvous: {timeout_s: 30}\n"
                        << body;
    return path;
  }
  // Processes of a job: workers (PTRAIN_RUN_DIR) and `ptrain node`s (their spec under tmp).
  std::vector<pid_t> job_processes(const std::string& name) {
    const std::string runs = tmp_->path() + "/runs-" + name;
    const std::string spec_file = tmp_->path() + "/" + name + ".yaml";
    auto a = ptrain::testing::processes_with_run_dir(runs);
    auto b = ptrain::testing::find_processes([&](pid_t pid) {
      std::string c = ptrain::testing::cmdline(pid);
      return contains(c, spec_file) || contains(c, runs + "/");
    });
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
  static inline std::unique_ptr<ptrain::testing::TempDir> tmp_;
  static inline std::vector<std::unique_ptr<ChildProcess>> daemons_;
  static inline std::string missing_;
};

const std::string kGpt =
    "nodes: {procs_per_node: 2, device: cpu}\nparallel: {data: 2}\n"
    "model: {type: gpt, layers: 1, heads: 2, dim: 32, seq_len: 16, vocab: 64}\n"
    "data: {type: synthetic, batch_size: 8}\ntrain: {steps: 6}\n";

}  // namespace

TEST_F(SlurmCluster, TwoWorkerJobUnderSrun) {
  std::string s = spec("ok", kGpt);
  CommandResult r = run_command({which("salloc"), "-N1", PTRAIN_BINARY, "launch", "--slurm", s}, "",
                                Millis(120000));
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.status.shell_code(), 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "step 6/6")) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "done: 6 steps")) << r.out;
  EXPECT_TRUE(
      ptrain::testing::wait_all_gone([&] { return job_processes("ok"); }, Millis(10000)).empty());
  // rendezvous.tls auto is on under Slurm: every node used the job certificate, gone now.
  const std::string runs = tmp_->path() + "/runs-ok";
  std::string log;
  for (const auto& e : fs::directory_iterator(runs)) {
    EXPECT_NE(e.path().filename().string().rfind(".tls", 0), 0u) << e.path() << " was left";
    if (fs::exists(e.path() / "launcher.log"))
      log = ptrain::testing::read_file((e.path() / "launcher.log").string());
  }
  EXPECT_TRUE(contains(log, "rendezvous.tls: mutual TLS on every gRPC channel")) << log;
}

TEST_F(SlurmCluster, FailingJobGivesItsExitCodeAndRootCause) {
  std::string s = spec("fail",
                       "nodes: {procs_per_node: 2}\nparallel: {data: 2}\n"
                       "command: [sh, -c, 'if [ \"$RANK\" = 1 ]; then echo broken >&2; exit 7; "
                       "fi; sleep 30']\n");
  CommandResult r = run_command({which("salloc"), "-N1", PTRAIN_BINARY, "launch", "--slurm", s}, "",
                                Millis(120000));
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.status.shell_code(), 7) << r.out << r.err;
  EXPECT_TRUE(contains(r.out + r.err, "rank 1")) << r.out << r.err;
  EXPECT_TRUE(contains(r.out + r.err, "broken")) << r.out << r.err;
  EXPECT_TRUE(
      ptrain::testing::wait_all_gone([&] { return job_processes("fail"); }, Millis(10000)).empty());
}

TEST_F(SlurmCluster, SubmitThenScancelLeavesNothing) {
  std::string s = spec("cancel",
                       "nodes: {procs_per_node: 2}\nparallel: {data: 2}\n"
                       "command: [sleep, '120']\n");
  CommandResult sub =
      run_command({PTRAIN_BINARY, "submit", s, "--nodes", "1", "--time", "5"}, "", Millis(30000));
  ASSERT_EQ(sub.status.shell_code(), 0) << sub.out << sub.err;
  std::string id = sub.out.substr(0, sub.out.find('\n'));
  ASSERT_FALSE(id.empty());
  ASSERT_TRUE(std::all_of(id.begin(), id.end(), ::isdigit)) << id;
  // Running once both workers are up.
  const std::string runs = tmp_->path() + "/runs-cancel";
  Deadline d(Millis(60000));
  while (!d.expired() && ptrain::testing::processes_with_run_dir(runs).size() < 2)
    ::usleep(100 * 1000);
  ASSERT_GE(ptrain::testing::processes_with_run_dir(runs).size(), 2u);
  CommandResult c = run_command({which("scancel"), id}, "", Millis(10000));
  EXPECT_EQ(c.status.shell_code(), 0) << c.err;
  auto left =
      ptrain::testing::wait_all_gone([&] { return job_processes("cancel"); }, Millis(30000));
  EXPECT_TRUE(left.empty()) << left.size() << " process(es) left, e.g. "
                            << (left.empty() ? "" : ptrain::testing::cmdline(left[0]));
  for (pid_t p : left) ::kill(p, SIGKILL);
  // The job leaves the queue (its batch step has reported its end).
  Deadline gone(Millis(30000));
  std::string queue = "?";
  while (!gone.expired() && !queue.empty()) {
    queue = run_command({which("squeue"), "-h", "-j", id}, "", Millis(5000)).out;
    if (!queue.empty()) ::usleep(200 * 1000);
  }
  EXPECT_TRUE(queue.empty()) << queue;
  // The script and the resolved spec are in the submit folder; the job certificate is gone.
  bool script = false;
  for (const auto& e : fs::directory_iterator(runs))
    if (fs::exists(e.path() / "submit.sbatch")) {
      script = true;
      EXPECT_FALSE(fs::exists(e.path() / ".tls")) << "scancel left " << e.path() / ".tls";
    }
  EXPECT_TRUE(script);
}
