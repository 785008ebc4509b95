// `ptrain launch` over real SSH: Debian's sshd on loopback aliases (127.0.0.2, 127.0.0.3) with
// generated keys and a private ssh_config; 2 hosts x 2 processes, kill tests checked in /proc,
// and bad input. Skips with a message where sshd cannot run.
#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "ptrain/launch/process.h"
#include "support/ptrain_process.h"

using namespace ptrain;
using namespace ptrain::launch;
namespace fs = std::filesystem;

namespace {

using ptrain::testing::cmdline;
using ptrain::testing::contains;
using ptrain::testing::our_env;
using ptrain::testing::read_file;

int run_quiet(const std::vector<std::string>& argv) {
  ProcessOptions o;
  o.argv = argv;
  o.env = our_env();
  try {
    auto p = ChildProcess::spawn(o);
    auto st = p.wait(Millis(30000));
    return st ? st->shell_code() : -1;
  } catch (const Error&) {
    return 127;
  }
}

// A port free on `addr` now (sshd cannot bind port 0).
int free_port(const std::string& addr) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  ::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    socklen_t len = sizeof sa;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    port = ntohs(sa.sin_port);
  }
  ::close(fd);
  return port;
}

bool accepts(const std::string& addr, int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
  ::close(fd);
  return ok;
}

pid_t parent_of(pid_t pid) {
  std::string stat = read_file(fmt::format("/proc/{}/stat", pid));
  auto close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(stat.substr(close + 2));
  char state;
  pid_t ppid = -1;
  rest >> state >> ppid;
  return ppid;
}

// Processes of the job: workers (PTRAIN_RUN_DIR under dir) and `ptrain agent`s of our binary.
std::vector<pid_t> processes_of(const std::string& dir) {
  const std::string tag = "PTRAIN_RUN_DIR=" + dir;
  const std::string agent = std::string(PTRAIN_BINARY) + " --log-level";
  return ptrain::testing::find_processes([&](pid_t pid) {
    std::string cmd = ptrain::testing::cmdline(pid);
    if (cmd.rfind(agent, 0) == 0 && contains(cmd, " agent")) return true;
    for (const auto& kv : ptrain::testing::environ_of(pid))
      if (kv.compare(0, tag.size(), tag) == 0) return true;
    return false;
  });
}

std::vector<pid_t> wait_all_gone(const std::string& dir, Millis timeout = Millis(30000)) {
  return ptrain::testing::wait_all_gone([&] { return processes_of(dir); }, timeout);
}

// `ptrain` with the longer bounds that jobs over ssh need.
class Ptrain : public ptrain::testing::PtrainProcess {
 public:
  explicit Ptrain(std::vector<std::string> args)
      : PtrainProcess(std::move(args), {}, Bounds{Millis(60000), Millis(120000)}) {}
};

// Two sshd on 127.0.0.2 and 127.0.0.3 for the whole suite.
struct SshdFarm {
  std::string dir;
  std::string skip_reason;
  std::vector<ChildProcess> daemons;
  std::string ssh_config, wrong_config;

  SshdFarm() {
    if (::geteuid() != 0) {
      skip_reason = "sshd needs root here (privilege separation)";
      return;
    }
    if (!fs::exists("/usr/sbin/sshd") || run_quiet({"ssh-keygen", "-q", "-?"}) == 127) {
      skip_reason = "/usr/sbin/sshd or ssh-keygen is missing (scripts/setup.sh installs them)";
      return;
    }
    char tmpl[] = "/tmp/ptrain-ssh-test-XXXXXX";
    dir = ::mkdtemp(tmpl);
    std::error_code ec;
    fs::create_directories("/run/sshd", ec);
    for (const char* key : {"host_key", "user_key", "wrong_key"})
      if (run_quiet({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir + "/" + key}) != 0) {
        skip_reason = "ssh-keygen failed";
        return;
      }
    fs::copy_file(dir + "/user_key.pub", dir + "/authorized_keys");
    std::string hosts_cfg;
    for (const char* addr : {"127.0.0.2", "127.0.0.3"}) {
      int port = free_port(addr);
      std::string cfg = fmt::format("{}/sshd-{}.conf", dir, addr);
      std::ofstream(cfg) << "ListenAddress " << addr << ":" << port << "\nHostKey " << dir
                         << "/host_key\nPidFile " << dir << "/sshd-" << addr
                         << ".pid\nAuthorizedKeysFile " << dir
                         << "/authorized_keys\nStrictModes no\nUsePAM no\n"
                            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                            "PermitRootLogin yes\nLogLevel QUIET\nMaxStartups 100\n";
      ProcessOptions o;
      o.argv = {"/usr/sbin/sshd", "-D", "-e", "-f", cfg};
      o.env = our_env();
      o.pipe_output = false;
      daemons.push_back(ChildProcess::spawn(o));
      Deadline d(Millis(10000));
      while (!accepts(addr, port) && !d.expired() && !daemons.back().try_wait()) ::usleep(20000);
      if (!accepts(addr, port)) {
        skip_reason = fmt::format("sshd did not start on {}:{}", addr, port);
        return;
      }
      hosts_cfg += fmt::format("Host {}\n  Port {}\n", addr, port);
    }
    // No sshd listens there: the unreachable host.
    hosts_cfg += fmt::format("Host 127.0.0.9\n  Port {}\n", free_port("127.0.0.9"));
    std::string common = fmt::format(
        "Host *\n  User root\n  IdentitiesOnly yes\n  UserKnownHostsFile {0}/known_hosts\n"
        "  StrictHostKeyChecking accept-new\n  LogLevel ERROR\n",
        dir);
    ssh_config = dir + "/ssh_config";
    std::ofstream(ssh_config) << hosts_cfg << common << "  IdentityFile " << dir << "/user_key\n";
    wrong_config = dir + "/ssh_config_wrong";
    std::ofstream(wrong_config) << hosts_cfg << common << "  IdentityFile " << dir
                                << "/wrong_key\n";
  }
  ~SshdFarm() {
    daemons.clear();  // SIGKILL to each sshd's group, reaped
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

// One farm for the whole suite; destroyed at exit (sshd killed, keys removed).
std::unique_ptr<SshdFarm> farm;

class SshLaunchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!farm) farm = std::make_unique<SshdFarm>();
  }
  void SetUp() override {
    // sshd is installed by scripts/setup.sh: a farm that cannot start is a failure, not a skip.
    if (!farm->skip_reason.empty()) FAIL() << "the sshd farm did not start: " << farm->skip_reason;
    char tmpl[] = "/tmp/ptrain-ssh-job-XXXXXX";
    tmp_ = ::mkdtemp(tmpl);
  }
  void TearDown() override {
    if (tmp_.empty()) return;
    auto left = wait_all_gone(tmp_);
    EXPECT_TRUE(left.empty()) << left.size() << " process(es) left, e.g. pid "
                              << (left.empty() ? 0 : left[0]) << ": "
                              << (left.empty() ? "" : cmdline(left[0]));
    for (pid_t p : left) ::kill(p, SIGKILL);
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
  std::string spec(const std::string& body, const std::string& nodes_extra = "") {
    std::string path = tmp_ + "/job.yaml";
    std::ofstream(path) << "name: t\nlogging: {dir: " << tmp_
                        << "/runs, console: all}\nnodes: {procs_per_node: 2, device: cpu, "
                           "threads_per_proc: 1"
                        << nodes_extra << "}\n"
                        << body;
    return path;
  }
  std::string run_dir() const {
    for (const auto& e : fs::directory_iterator(tmp_ + "/runs")) return e.path().string();
    return {};
  }
  std::vector<std::string> launch(const std::string& spec_path,
                                  const std::string& hosts = "127.0.0.2:2,127.0.0.3:2") {
    return {"launch", spec_path, "--hosts", hosts, "--ssh-config", farm->ssh_config};
  }
  std::string tmp_;
};

const std::string kGpt =
    "parallel: {data: 4}\nmodel: {type: gpt, layers: 1, heads: 2, dim: 32, seq_len: 16, vocab: "
    "64}\ndata: {type: synthetic, batch_size: 8}\n";

}  // namespace

TEST_F(SshLaunchTest, TwoHostsTwoProcessesJoinAndExitWithStepsZero) {
  Ptrain p(launch(spec("parallel: {data: 4}\ntrain: {steps: 0}\n")));
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string dir = run_dir();
  std::string summary = read_file(dir + "/summary.json");
  EXPECT_TRUE(contains(summary, "\"status\": \"succeeded\"")) << summary;
  EXPECT_TRUE(contains(summary, "\"exit_codes\": [0, 0, 0, 0]")) << summary;
  // Each host ran its own ranks and kept their logs; the launcher got every line too.
  EXPECT_TRUE(fs::exists(dir + "/hosts/127.0.0.3/rank-3.log"));
  EXPECT_FALSE(fs::exists(dir + "/hosts/127.0.0.2/rank-3.log"));
  EXPECT_TRUE(contains(read_file(dir + "/rank-3.log"), "rank 3/4 joined on 127.0.0.3"));
  EXPECT_TRUE(contains(p.out, "[127.0.0.3:3]")) << p.out;
  std::string launcher_log = read_file(dir + "/launcher.log");
  EXPECT_TRUE(contains(launcher_log, "rank 2 started on 127.0.0.3")) << launcher_log;
  // The token never appears on a command line.
  EXPECT_FALSE(contains(launcher_log, "token ")) << launcher_log;
}

TEST_F(SshLaunchTest, DataParallelGptTrainsAcrossHostsAndLogsWork) {
  Ptrain p(launch(spec(kGpt + "train: {steps: 4, log_every: 1}\n")));
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string dir = run_dir();
  std::string metrics = read_file(dir + "/metrics.jsonl");
  EXPECT_TRUE(contains(metrics, "\"step\": 4") || contains(metrics, "\"step\":4")) << metrics;
  Ptrain logs({"logs", dir, "--rank", "2"});
  ASSERT_EQ(logs.finish(), 0) << logs.err;
  EXPECT_TRUE(contains(logs.out, "[127.0.0.3:2]")) << logs.out;
}

TEST_F(SshLaunchTest, TlsJobTrainsAcrossHostsAndRemovesEveryKey) {
  Ptrain p(launch(spec(kGpt + "train: {steps: 3, log_every: 1}\nrendezvous: {tls: on}\n")));
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string dir = run_dir();
  EXPECT_TRUE(contains(read_file(dir + "/launcher.log"), "mutual TLS on every gRPC channel"));
  std::string metrics = read_file(dir + "/metrics.jsonl");
  EXPECT_TRUE(contains(metrics, "\"step\": 3") || contains(metrics, "\"step\":3")) << metrics;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    EXPECT_NE(e.path().filename(), ".tls") << e.path() << " outlived the job";
}

TEST_F(SshLaunchTest, PipelineAcrossHostsTrains) {
  // dp 2 x pp 2: ranks 0-1 (stage 0) on 127.0.0.2, ranks 2-3 (stage 1) on 127.0.0.3, so every
  // activation and gradient crosses hosts.
  Ptrain p(
      launch(spec("parallel: {data: 2, pipeline: 2, microbatches: 2}\nmodel: {type: gpt, "
                  "layers: 2, heads: 2, dim: 32, seq_len: 16, vocab: 64}\ndata: {type: "
                  "synthetic, batch_size: 8}\ntrain: {steps: 3, log_every: 1}\n")));
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string summary = read_file(run_dir() + "/summary.json");
  EXPECT_TRUE(contains(summary, "\"steps\": 3")) << summary;
}

TEST_F(SshLaunchTest, TimeToFirstStepIsReported) {
  auto start = Clock::now();
  Ptrain p(launch(spec(kGpt + "train: {steps: 3, log_every: 1}\n")));
  // The run folder appears once every host passed the preflight.
  ASSERT_TRUE(p.wait_for([&] { return fs::exists(tmp_ + "/runs"); })) << p.err;
  double preflight_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "step 1/"); })) << p.out << p.err;
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  std::printf("[ figure ] preflight of 2 hosts done after %.0f ms\n", preflight_ms);
  ASSERT_EQ(p.finish(), 0) << p.err;
  std::printf(
      "[ figure ] ptrain launch, 2 hosts x 2 procs over loopback ssh: first step after "
      "%.0f ms\n",
      ms);
  RecordProperty("first_step_ms", static_cast<int>(ms));
}

TEST_F(SshLaunchTest, KilledLauncherLeavesNoProcessOnAnyHost) {
  // SIGKILL: no cleanup code runs; the ssh clients die with the launcher (PDEATHSIG), every
  // agent sees its stdin end and stops its workers. TearDown checks /proc.
  Ptrain p(launch(spec(kGpt + "train: {steps: 100000, log_every: 1}\n")));
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "step"); })) << p.out << p.err;
  ASSERT_FALSE(processes_of(tmp_).empty());
  ::kill(p.proc().pid(), SIGKILL);
  EXPECT_EQ(p.finish(), 137);
}

TEST_F(SshLaunchTest, SigintOnTheLauncherStopsEveryRemoteWorker) {
  Ptrain p(launch(spec(kGpt + "train: {steps: 100000, log_every: 1}\n")));
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "step"); })) << p.out << p.err;
  // The agents got the token on stdin: neither their command line nor their environment has it.
  int agents = 0;
  for (pid_t pid : processes_of(tmp_)) {
    std::string cmd = cmdline(pid);
    if (!contains(cmd, " agent")) continue;
    ++agents;
    EXPECT_EQ(cmd, std::string(PTRAIN_BINARY) + " --log-level info agent ");
    EXPECT_FALSE(contains(read_file(fmt::format("/proc/{}/environ", pid)), "PTRAIN_TOKEN"));
  }
  EXPECT_EQ(agents, 2);
  ::kill(p.proc().pid(), SIGINT);
  EXPECT_EQ(p.finish(), 130) << p.err;
  EXPECT_TRUE(contains(read_file(run_dir() + "/summary.json"), "interrupted"));
}

TEST_F(SshLaunchTest, KilledSshSessionEndsTheJobNamingTheHost) {
  Ptrain p(launch(spec(kGpt + "train: {steps: 100000, log_every: 1}\n")));
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "step"); })) << p.out << p.err;
  // The ssh client of the second host: a child of the launcher whose command names 127.0.0.3.
  pid_t ssh_pid = -1;
  for (const auto& e : fs::directory_iterator("/proc")) {
    pid_t pid = static_cast<pid_t>(std::atoi(e.path().filename().c_str()));
    if (pid <= 0) continue;
    std::string stat = read_file(fmt::format("/proc/{}/stat", pid));
    auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    char state;
    pid_t ppid;
    rest >> state >> ppid;
    std::string cmd = cmdline(pid);
    if (ppid == p.proc().pid() && cmd.rfind("ssh ", 0) == 0 && contains(cmd, "127.0.0.3 --"))
      ssh_pid = pid;
  }
  ASSERT_GT(ssh_pid, 0);
  ::kill(ssh_pid, SIGKILL);
  EXPECT_EQ(p.finish(), 4) << p.err;
  EXPECT_TRUE(contains(p.err, "on host 127.0.0.3")) << p.err;
  EXPECT_TRUE(contains(p.err, "ssh session to 127.0.0.3 ended")) << p.err;
}

TEST_F(SshLaunchTest, KilledRemoteWorkerFailsTheJobWithRootCause) {
  Ptrain p(launch(spec(kGpt + "train: {steps: 100000, log_every: 1}\n")));
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "step"); })) << p.out << p.err;
  std::string launcher_log;
  pid_t victim = -1;
  ASSERT_TRUE(p.wait_for([&] {
    launcher_log = read_file(run_dir() + "/launcher.log");
    const std::string tag = "rank 3 started on 127.0.0.3: pid ";
    auto at = launcher_log.find(tag);
    if (at == std::string::npos) return false;
    victim = std::atoi(launcher_log.c_str() + at + tag.size());
    return victim > 0;
  }));
  ::kill(victim, SIGKILL);
  EXPECT_EQ(p.finish(), 137) << p.err;
  EXPECT_TRUE(contains(p.err, fmt::format("rank 3 on host 127.0.0.3 (pid {}) was killed", victim)))
      << p.err;
}

TEST_F(SshLaunchTest, UnreachableHostIsNamedAndNothingStarts) {
  Ptrain p(launch(spec("parallel: {data: 4}\ntrain: {steps: 0}\n"), "127.0.0.2:2,127.0.0.9:2"));
  EXPECT_EQ(p.finish(), 4);
  EXPECT_TRUE(contains(p.err, "host 127.0.0.9: unreachable")) << p.err;
  EXPECT_FALSE(contains(p.err, "host 127.0.0.2:")) << p.err;
  EXPECT_FALSE(fs::exists(tmp_ + "/runs"));
}

TEST_F(SshLaunchTest, RefusedAuthenticationIsNamed) {
  Ptrain p({"launch", spec("parallel: {data: 4}\ntrain: {steps: 0}\n"), "--hosts",
            "127.0.0.2:2,127.0.0.3:2", "--ssh-config", farm->wrong_config});
  EXPECT_EQ(p.finish(), 4);
  EXPECT_TRUE(contains(p.err, "host 127.0.0.2: authentication refused")) << p.err;
  EXPECT_TRUE(contains(p.err, "host 127.0.0.3: authentication refused")) << p.err;
}

TEST_F(SshLaunchTest, MissingRemotePtrainIsNamed) {
  Ptrain p(launch(
      spec("parallel: {data: 4}\ntrain: {steps: 0}\n", ", remote_ptrain: /nonexistent/ptrain")));
  EXPECT_EQ(p.finish(), 4);
  EXPECT_TRUE(contains(p.err, "host 127.0.0.2: ptrain missing at `/nonexistent/ptrain`")) << p.err;
}

TEST_F(SshLaunchTest, BadHostListsAreConfigErrors) {
  std::string s = spec("parallel: {data: 4}\ntrain: {steps: 0}\n");
  Ptrain dup(launch(s, "127.0.0.2:2,127.0.0.2:2"));
  EXPECT_EQ(dup.finish(), 2);
  EXPECT_TRUE(contains(dup.err, "host `127.0.0.2` is listed twice")) << dup.err;
  Ptrain zero(launch(s, "127.0.0.2:0,127.0.0.3:2"));
  EXPECT_EQ(zero.finish(), 2);
  EXPECT_TRUE(contains(zero.err, "zero slots")) << zero.err;
  Ptrain many(launch(s, "127.0.0.2:1,127.0.0.3:2"));
  EXPECT_EQ(many.finish(), 2);
  EXPECT_TRUE(contains(many.err, "the hosts' slots add up to 3 workers")) << many.err;
  std::string hostfile = tmp_ + "/hosts";
  std::ofstream(hostfile) << "127.0.0.2 slots=2\n# comment\n127.0.0.3 slot=2\n";
  Ptrain bad({"launch", s, "--hostfile", hostfile, "--ssh-config", farm->ssh_config});
  EXPECT_EQ(bad.finish(), 2);
  EXPECT_TRUE(contains(bad.err, hostfile + ":3:")) << bad.err;
}

TEST_F(SshLaunchTest, ShipBinaryCopiesPtrainToTheHostCacheAndRunsItFromThere) {
  Ptrain p(launch(spec("parallel: {data: 4}\ntrain: {steps: 0}\n",
                       ", ship_binary: true, remote_ptrain: /nonexistent/ptrain")));
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  // remote_ptrain does not exist, so the job could only run from the shipped copy.
  std::string home = std::getenv("HOME") ? std::getenv("HOME") : "/root";
  bool found = false;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(home + "/.cache/ptrain", ec)) {
    if (e.path().filename().string().size() != 64) continue;
    if (fs::exists(e.path() / "ptrain")) {
      found = true;
      fs::remove_all(e.path(), ec);  // the test's copy
    }
  }
  EXPECT_TRUE(found) << "no ~/.cache/ptrain/<sha256>/ptrain after the job";
}

TEST_F(SshLaunchTest, AgentsStopTheirWorkersWhenTheCoordinatorStopsAnswering) {
  // The launcher (and its coordinator) is frozen while the ssh sessions stay up: the agents'
  // heartbeats go unanswered for 3 x heartbeat_s and they stop their workers, then exit.
  Ptrain p(launch(spec(kGpt + "train: {steps: 100000, log_every: 1}\n"
                              "fault_tolerance: {heartbeat_s: 1, term_grace_s: 1}\n")));
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "step"); })) << p.out << p.err;
  ASSERT_FALSE(processes_of(tmp_).empty());
  ::kill(p.proc().pid(), SIGSTOP);
  auto left = wait_all_gone(tmp_, Millis(30000));
  EXPECT_TRUE(left.empty()) << left.size() << " process(es) still running, e.g. "
                            << (left.empty() ? "" : cmdline(left[0]));
  ::kill(p.proc().pid(), SIGKILL);
  ::kill(p.proc().pid(), SIGCONT);
  p.finish();
}

TEST_F(SshLaunchTest, KilledWorkerRestartsEveryHostAndTheLossCurveEqualsTheUninterruptedRun) {
  // 2 hosts x 1 process, data parallel: rank 1 (on 127.0.0.3) is killed once after step 6, the
  // group restarts from the step-4 checkpoint.
  auto job = [&](const std::string& name, const std::string& env) {
    std::string path = tmp_ + "/" + name + ".yaml";
    std::ofstream(path)
        << "name: " << name << "\nlogging: {dir: " << tmp_ << "/" << name
        << ", console: rank0}\nnodes: {procs_per_node: 1, device: cpu, threads_per_proc: 1}\n"
        << "parallel: {data: 2}\nmodel: {type: gpt, layers: 2, heads: 2, dim: 32, seq_len: 16, "
           "vocab: 64}\ndata: {type: synthetic, batch_size: 8}\n"
           "train: {steps: 12, seed: 7, log_every: 1}\ncheckpoint: {every: 4, keep: 2}\n"
           "fault_tolerance: {max_restarts: 1, heartbeat_s: 0.2, hang_timeout_s: 5, "
           "term_grace_s: 2}\n"
        << env;
    return path;
  };
  auto only_dir = [&](const std::string& name) {
    for (const auto& e : fs::directory_iterator(tmp_ + "/" + name)) return e.path().string();
    return std::string();
  };
  auto losses = [](const std::string& dir) {
    std::vector<std::pair<int, std::string>> out;
    std::ifstream in(dir + "/metrics.jsonl");
    std::string line;
    std::regex re(R"re("step": (\d+),.*"loss": ([^,}]+))re");
    std::smatch m;
    while (std::getline(in, line))
      if (std::regex_search(line, m, re)) out.emplace_back(std::stoi(m[1]), m[2]);
    return out;
  };
  const std::string hosts = "127.0.0.2:1,127.0.0.3:1";

  Ptrain ref({"launch", job("ref", ""), "--hosts", hosts, "--ssh-config", farm->ssh_config});
  ASSERT_EQ(ref.finish(), 0) << ref.out << ref.err;
  std::map<int, std::string> expected;
  for (const auto& [step, loss] : losses(only_dir("ref"))) expected[step] = loss;
  ASSERT_EQ(expected.size(), 12u);

  Ptrain p({"launch", job("ft", "env: {PTRAIN_TEST_FAIL_AT_STEP: \"1:6\"}\n"), "--hosts", hosts,
            "--ssh-config", farm->ssh_config});
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string dir = only_dir("ft");
  std::map<int, int> seen;
  for (const auto& [step, loss] : losses(dir)) {
    ++seen[step];
    ASSERT_TRUE(expected.count(step)) << "step " << step;
    EXPECT_EQ(loss, expected.at(step)) << "step " << step;
  }
  for (int s = 1; s <= 12; ++s) EXPECT_GE(seen[s], 1) << "step " << s << " missing";
  std::string summary = read_file(dir + "/summary.json");
  EXPECT_TRUE(contains(summary, R"("status": "succeeded")")) << summary;
  EXPECT_TRUE(contains(summary, R"("restarts": [{"round": 1, "rank": 1, "reason": "was killed by)"))
      << summary;
  EXPECT_FALSE(contains(summary, R"("round": 2)")) << summary;
  std::string launcher = read_file(dir + "/launcher.log");
  EXPECT_TRUE(contains(launcher, "restart 1/1: rank 1 on 127.0.0.3 was killed")) << launcher;
}

// Elastic jobs: 2 hosts x 1 worker, nodes.min_nodes 1, a checkpoint every 4 steps.
class ElasticTest : public SshLaunchTest {
 protected:
  std::string job(const std::string& name, int steps, const std::string& extra) {
    std::string path = tmp_ + "/" + name + ".yaml";
    std::ofstream(path)
        << "name: " << name << "\nlogging: {dir: " << tmp_ << "/" << name
        << ", console: rank0}\nnodes: {procs_per_node: 1, device: cpu, threads_per_proc: 1, "
           "min_nodes: 1}\n"
        << "model: {type: gpt, layers: 2, heads: 2, dim: 32, seq_len: 16, vocab: 64}\n"
           "data: {type: synthetic, batch_size: 8}\n"
           "train: {steps: "
        << steps
        << ", seed: 7, log_every: 1}\ncheckpoint: {every: 4, keep: 2}\n"
           "rendezvous: {timeout_s: 20}\n"
           "fault_tolerance: {max_restarts: 3, heartbeat_s: 0.2, hang_timeout_s: 60, "
           "term_grace_s: 2}\n"
        << extra;
    return path;
  }
  std::string only_dir(const std::string& name) {
    if (!fs::exists(tmp_ + "/" + name)) return {};
    for (const auto& e : fs::directory_iterator(tmp_ + "/" + name)) return e.path().string();
    return {};
  }
  static std::vector<std::pair<int, double>> losses(const std::string& dir) {
    std::vector<std::pair<int, double>> out;
    std::ifstream in(dir + "/metrics.jsonl");
    std::string line;
    std::regex re(R"re("step": (\d+),.*"loss": ([^,}]+))re");
    std::smatch m;
    while (std::getline(in, line))
      if (std::regex_search(line, m, re)) out.emplace_back(std::stoi(m[1]), std::stod(m[2]));
    return out;
  }
  // The uninterrupted 2-host run's loss of every step.
  std::map<int, double> reference(int steps) {
    Ptrain ref(
        {"launch", job("ref", steps, ""), "--hosts", kHosts, "--ssh-config", farm->ssh_config});
    EXPECT_EQ(ref.finish(), 0) << ref.out << ref.err;
    std::map<int, double> expected;
    for (const auto& [step, loss] : losses(only_dir("ref"))) expected[step] = loss;
    EXPECT_EQ(expected.size(), static_cast<size_t>(steps));
    return expected;
  }
  // An ssh_config where 127.0.0.3 points at a closed port while `marker` exists.
  std::string config_with_marker(const std::string& marker) {
    const std::string config = tmp_ + "/ssh_config";
    std::ofstream(config) << "Match host 127.0.0.3 exec \"test -e " << marker << "\"\n  Port "
                          << free_port("127.0.0.3") << "\n"
                          << read_file(farm->ssh_config);
    return config;
  }
  // Once `name`'s run logged step `step`, makes 127.0.0.3 unreachable and kills its session.
  void lose_host_after(Ptrain& p, const std::string& name, int step, const std::string& marker) {
    ASSERT_TRUE(p.wait_for([&] {
      auto dir = only_dir(name);
      if (dir.empty()) return false;
      for (const auto& [s, loss] : losses(dir))
        if (s == step) return true;
      return false;
    })) << p.out
        << p.err;
    std::ofstream(marker) << "gone\n";
    pid_t ssh_pid = -1;
    for (pid_t pid : ptrain::testing::find_processes([&](pid_t pid) {
           std::string cmd = cmdline(pid);
           return cmd.rfind("ssh ", 0) == 0 && contains(cmd, "127.0.0.3 --") &&
                  parent_of(pid) == p.proc().pid();
         }))
      ssh_pid = pid;
    ASSERT_GT(ssh_pid, 0) << "no ssh session to 127.0.0.3 under the launcher";
    ::kill(ssh_pid, SIGKILL);
  }
  static void print_elastic_lines(const std::string& launcher) {
    std::istringstream lines(launcher);
    for (std::string line; std::getline(lines, line);)
      if (contains(line, "shrinking") || contains(line, "restart ") ||
          contains(line, "training again") || contains(line, "elastic:") ||
          contains(line, "join") || contains(line, "growing"))
        std::printf("[ launcher ] %s\n", line.c_str());
  }
  // Every step's loss equals the uninterrupted run's (1e-5 relative); returns how often each
  // step ran.
  static std::map<int, int> check_losses(const std::string& dir,
                                         const std::map<int, double>& expected) {
    std::map<int, int> seen;
    for (const auto& [step, loss] : losses(dir)) {
      ++seen[step];
      if (!expected.count(step)) {
        ADD_FAILURE() << "step " << step << " is not in the reference run";
        continue;
      }
      EXPECT_NEAR(loss, expected.at(step), 1e-5 * std::abs(expected.at(step))) << "step " << step;
    }
    for (const auto& [step, loss] : expected)
      EXPECT_GE(seen[step], 1) << "step " << step << " missing";
    return seen;
  }
  static constexpr const char* kHosts = "127.0.0.2:1,127.0.0.3:1";
};

TEST_F(ElasticTest, JobLosesAHostForGoodAndFinishesOnTheOtherWithTheSameLosses) {
  // Rank 1 (on 127.0.0.3) stops itself after step 10; the test then makes 127.0.0.3 unreachable
  // (its ssh_config entry points at a closed port once a marker file exists) and kills its ssh
  // session. Round 1 cannot reach the host, so round 2 runs on 127.0.0.2 alone: data 1 x
  // grad_accum 2 from the step-8 checkpoint, the same global batch, so the same losses as an
  // uninterrupted 2-host run.
  const auto expected = reference(20);
  ASSERT_EQ(expected.size(), 20u);
  const std::string marker = tmp_ + "/127.0.0.3-is-gone";
  Ptrain p({"launch", job("elastic", 20, "env: {PTRAIN_TEST_FAIL_AT_STEP: \"1:10:0:stop\"}\n"),
            "--hosts", kHosts, "--ssh-config", config_with_marker(marker)});
  lose_host_after(p, "elastic", 10, marker);
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;

  std::string dir = only_dir("elastic");
  std::string launcher = read_file(dir + "/launcher.log");
  print_elastic_lines(launcher);
  EXPECT_TRUE(contains(launcher, "shrinking to 1 host: host 127.0.0.3 lost (")) << launcher;
  EXPECT_TRUE(contains(launcher, "elastic: 1 worker(s) on 1 host(s), data 1 x grad_accum 2"))
      << launcher;
  EXPECT_TRUE(contains(p.err + p.out, "ptrain: shrinking to 1 host: host 127.0.0.3 lost"))
      << p.out << p.err;
  EXPECT_TRUE(contains(read_file(dir + "/rank-0.log"), "at step 8"))
      << read_file(dir + "/rank-0.log");
  std::string summary = read_file(dir + "/summary.json");
  EXPECT_TRUE(contains(summary, R"("status": "succeeded")")) << summary;
  EXPECT_TRUE(contains(summary, R"("world_size": 1)")) << summary;
  EXPECT_TRUE(contains(summary, R"("round": 2)")) << summary;
  // Steps 9 and 10 ran twice: on 2 hosts, then again on one after the step-8 checkpoint.
  auto seen = check_losses(dir, expected);
  EXPECT_GE(seen[9], 2);
}

TEST_F(ElasticTest, ALostHostThatAnswersAgainIsTakenBackAtTheNextCheckpointWithTheSameLosses) {
  // As above, but 127.0.0.3 answers again once the job runs on one host: its probe passes, the
  // round stops after the next complete checkpoint and the job re-forms on both hosts (data 2 x
  // grad_accum 1) from it. Steps take 100 ms so that the one-host round outlasts the probe.
  constexpr int kSteps = 48;
  const auto expected = reference(kSteps);
  ASSERT_EQ(expected.size(), static_cast<size_t>(kSteps));
  const std::string marker = tmp_ + "/127.0.0.3-is-gone";
  Ptrain p({"launch",
            job("grow", kSteps,
                "env: {PTRAIN_TEST_FAIL_AT_STEP: \"1:10:0:stop\", PTRAIN_TEST_SLOW_RANK: "
                "\"-1:100\"}\n"),
            "--hosts", kHosts, "--ssh-config", config_with_marker(marker)});
  lose_host_after(p, "grow", 10, marker);
  ASSERT_TRUE(p.wait_for([&] {
    return contains(read_file(only_dir("grow") + "/launcher.log"), "shrinking to 1 host");
  })) << p.out
      << p.err;
  fs::remove(marker);  // 127.0.0.3 is back
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;

  std::string dir = only_dir("grow");
  std::string launcher = read_file(dir + "/launcher.log");
  print_elastic_lines(launcher);
  EXPECT_TRUE(contains(launcher, "shrinking to 1 host: host 127.0.0.3 lost (")) << launcher;
  EXPECT_TRUE(contains(launcher,
                       "host 127.0.0.3 can join: re-forming the job at the next "
                       "checkpoint"))
      << launcher;
  EXPECT_TRUE(contains(launcher, "growing to 2 hosts (127.0.0.3 joins), 2 worker(s)")) << launcher;
  EXPECT_TRUE(contains(launcher, "elastic: 2 worker(s) on 2 host(s), data 2 x grad_accum 1"))
      << launcher;
  EXPECT_TRUE(contains(p.err + p.out,
                       "ptrain: host 127.0.0.3 joins: re-forming the job from the "
                       "checkpoint of step"))
      << p.out << p.err;
  std::string summary = read_file(dir + "/summary.json");
  EXPECT_TRUE(contains(summary, R"("status": "succeeded")")) << summary;
  EXPECT_TRUE(contains(summary, R"("world_size": 2)")) << summary;
  EXPECT_TRUE(contains(summary, R"("grows": [{"round": 3, "hosts": ["127.0.0.3"])")) << summary;
  // The re-admitted rank resumed from the checkpoint the round stopped at.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(summary, m, std::regex(R"re("checkpoint_step": (\d+))re")))
      << summary;
  const int at = std::stoi(m[1]);
  EXPECT_GT(at, 8);
  EXPECT_LT(at, kSteps);
  EXPECT_EQ(at % 4, 0);
  EXPECT_TRUE(contains(read_file(dir + "/rank-0.log"), " at step " + std::to_string(at)))
      << read_file(dir + "/rank-0.log");
  check_losses(dir, expected);
}

TEST_F(SshLaunchTest, MinNodesAboveTheHostCountExitsTwoBeforeAnythingStarts) {
  std::string path = spec("train: {steps: 2}\n", ", min_nodes: 3");
  Ptrain p(launch(path, "127.0.0.2:1,127.0.0.3:1"));
  EXPECT_EQ(p.finish(), 2) << p.out << p.err;
  EXPECT_TRUE(contains(p.err, path + ":")) << p.err;
  EXPECT_TRUE(contains(p.err, "nodes.min_nodes: min_nodes = 3 is more than the job's 2 hosts"))
      << p.err;
  EXPECT_FALSE(fs::exists(tmp_ + "/runs"));
}

// ---- The same behaviour as `ptrain run` (one supervision engine; tests/launch/run_test.cc) ----

TEST_F(SshLaunchTest, MasterPortIsOneCheckedFreePortOnTheFirstHost) {
  // The old fixed guess (29500) is taken on the first host: every rank still gets one port,
  // the same everywhere, free on 127.0.0.2 when the agent chose it.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(29500);
  ::inet_pton(AF_INET, "127.0.0.2", &sa.sin_addr);
  const bool held =
      ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 && ::listen(fd, 1) == 0;
  Ptrain p(launch(spec("command: [sh, -c, 'echo master=$MASTER_ADDR:$MASTER_PORT']\n")));
  int code = p.finish();
  ::close(fd);
  ASSERT_EQ(code, 0) << p.out << p.err;
  std::regex re(R"(master=([0-9.]+):(\d+))");
  std::set<std::string> seen;
  for (std::sregex_iterator it(p.out.begin(), p.out.end(), re), end; it != end; ++it)
    seen.insert((*it)[1].str() + ":" + (*it)[2].str());
  ASSERT_EQ(seen.size(), 1u) << p.out;
  const std::string got = *seen.begin();
  EXPECT_EQ(got.substr(0, got.find(':')), "127.0.0.2") << got;
  if (held) {
    EXPECT_NE(got, "127.0.0.2:29500") << "MASTER_PORT is a port that was taken";
  }
}

TEST_F(SshLaunchTest, ARankThatNeverJoinsIsNamedWithItsHost) {
  Ptrain p(
      launch(spec("rendezvous: {timeout_s: 1}\ncommand: [sh, -c, 'if [ $RANK = 3 ]; then exec "
                  "sleep 60; fi; exec \"$0\" worker', " +
                  std::string(PTRAIN_BINARY) + "]\n")));
  EXPECT_EQ(p.finish(), kExitTimeout) << p.err;
  EXPECT_TRUE(contains(p.err, "rendezvous incomplete: rank(s) 3 on 127.0.0.3 never joined"))
      << p.err;
}

TEST_F(SshLaunchTest, LeavingRanksAreLoggedAsWithRun) {
  Ptrain p(launch(spec("parallel: {data: 4}\ntrain: {steps: 0}\n")));
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string log = read_file(run_dir() + "/launcher.log");
  for (int r = 0; r < 4; ++r)
    EXPECT_TRUE(contains(log, fmt::format("rank {} left with exit code 0", r))) << log;
  EXPECT_TRUE(
      contains(read_file(run_dir() + "/summary.json"), R"("hosts": ["127.0.0.2", "127.0.0.3"])"));
}

TEST_F(SshLaunchTest, ACoordinatorThatCannotStartStillWritesSummaryJson) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  const int port = ntohs(sa.sin_port);
  Ptrain p(launch(spec(fmt::format("rendezvous: {{bind: 127.0.0.1, port: {}}}\n", port) +
                       "parallel: {data: 4}\ntrain: {steps: 0}\n")));
  int code = p.finish();
  ::close(fd);
  EXPECT_NE(code, 0);
  EXPECT_TRUE(contains(p.err, fmt::format("127.0.0.1:{}", port))) << p.err;
  std::string summary = read_file(run_dir() + "/summary.json");
  EXPECT_TRUE(contains(summary, R"("status": "failed")")) << summary;
  EXPECT_TRUE(contains(summary, "cannot start the coordinator")) << summary;
}

TEST_F(SshLaunchTest, ResumeContinuesAFinishedRunWithMoreSteps) {
  std::string s = spec(kGpt + "train: {steps: 4, log_every: 1}\ncheckpoint: {every: 2}\n");
  Ptrain first(launch(s));
  ASSERT_EQ(first.finish(), 0) << first.out << first.err;
  const std::string dir = run_dir();
  Ptrain again(
      {"launch", "--resume", dir, "--set", "train.steps=6", "--ssh-config", farm->ssh_config});
  ASSERT_EQ(again.finish(), 0) << again.out << again.err;
  EXPECT_TRUE(contains(read_file(dir + "/launcher.log"), "resuming this run")) << dir;
  EXPECT_TRUE(contains(read_file(dir + "/summary.json"), R"("steps": 6)"))
      << read_file(dir + "/summary.json");
  // Rank 0 continued from the checkpoint of step 4, and so did every host: steps 1..4 were
  // reported once (by the first run), 5 and 6 by the second.
  std::string log0 = read_file(dir + "/rank-0.log");
  EXPECT_TRUE(contains(log0, "step-4.safetensors at step 4")) << log0;
  std::string metrics = read_file(dir + "/metrics.jsonl");
  std::map<int, int> seen;
  std::regex re(R"("step": (\d+))");
  for (std::sregex_iterator it(metrics.begin(), metrics.end(), re), end; it != end; ++it)
    ++seen[std::stoi((*it)[1].str())];
  for (int step = 1; step <= 6; ++step) EXPECT_EQ(seen[step], 1) << "step " << step << metrics;
  int dirs = 0;
  for (const auto& e : fs::directory_iterator(tmp_ + "/runs")) dirs += e.is_directory();
  EXPECT_EQ(dirs, 1);
}

// ---- Asynchronous data parallelism across hosts: parameter servers on the hosts ----

const std::string kAsync =
    "parallel: {data: 2, data_mode: async, servers: 2, staleness: 2}\nmodel: {type: gpt, "
    "layers: 1, heads: 2, dim: 32, seq_len: 16, vocab: 64}\ndata: {type: synthetic, batch_size: "
    "8}\nfault_tolerance: {hang_timeout_s: 20, term_grace_s: 2}\n";

// A spec with `procs` processes per host.
std::string spec_procs(const std::string& tmp, int procs, const std::string& body) {
  std::string path = tmp + "/job.yaml";
  std::ofstream(path) << "name: t\nlogging: {dir: " << tmp
                      << "/runs, console: all}\nnodes: {procs_per_node: " << procs
                      << ", device: cpu, threads_per_proc: 1}\n"
                      << body;
  return path;
}

TEST_F(SshLaunchTest, AsyncJobPlacesOneServerPerHostAndTrains) {
  auto start = Clock::now();
  Ptrain p(launch(spec_procs(tmp_, 1, kAsync + "train: {steps: 12, log_every: 1}\n"),
                  "127.0.0.2:1,127.0.0.3:1"));
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "step 1/"); })) << p.out << p.err;
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::printf(
      "[ figure ] ptrain launch, async, 2 hosts x 1 proc + 2 servers over loopback ssh: first "
      "step after %.0f ms\n",
      ms);
  RecordProperty("async_first_step_ms", static_cast<int>(ms));
  const std::string dir = run_dir();
  std::string log = read_file(dir + "/launcher.log");
  EXPECT_TRUE(contains(log,
                       "parameter server 0 (rank 2) placed on 127.0.0.2, listening on "
                       "127.0.0.2"))
      << log;
  EXPECT_TRUE(contains(log,
                       "parameter server 1 (rank 3) placed on 127.0.0.3, listening on "
                       "127.0.0.3"))
      << log;
  EXPECT_TRUE(contains(log, "parameter server 1 (rank 3) started on 127.0.0.3: pid ")) << log;
  // The servers' logs were streamed here like the ranks' (and stay on their hosts too).
  for (int i = 0; i < 2; ++i)
    EXPECT_TRUE(contains(read_file(fmt::format("{}/server-{}.log", dir, i)), "done,"))
        << "server " << i;
  EXPECT_TRUE(fs::exists(dir + "/hosts/127.0.0.3/server-1.log"));
  // Each server listens on its host's address (PTRAIN_SERVER_BIND), not on loopback 127.0.0.1.
  EXPECT_TRUE(contains(read_file(dir + "/server-0.log"), "worker(s) on 127.0.0.2:"));
  EXPECT_TRUE(contains(read_file(dir + "/server-1.log"), "worker(s) on 127.0.0.3:"))
      << read_file(dir + "/server-1.log");
  std::string metrics = read_file(dir + "/metrics.jsonl");
  EXPECT_TRUE(contains(metrics, "\"step\": 12")) << metrics;
  EXPECT_TRUE(contains(metrics, "\"server_updates_per_s\"")) << metrics;
}

TEST_F(SshLaunchTest, AsyncJobOnTwoHostsIsKilledRestartsFromItsCheckpointAndResumes) {
  // Worker 1 (on 127.0.0.3) is killed once after step 10; the servers (one per host) resume the
  // newest checkpoint server 0 wrote, and `launch --resume` later continues the finished run.
  const std::string body =
      "parallel: {data: 2, data_mode: async, servers: 2, staleness: 0}\nmodel: {type: gpt, "
      "layers: 1, heads: 2, dim: 32, seq_len: 16, vocab: 64}\ndata: {type: synthetic, "
      "batch_size: 8}\ntrain: {steps: 20, seed: 7, log_every: 1}\ncheckpoint: {every: 8, "
      "keep: 2, async: false}\nfault_tolerance: {max_restarts: 1, heartbeat_s: 0.2, "
      "hang_timeout_s: 20, term_grace_s: 2}\nenv: {PTRAIN_TEST_FAIL_AT_STEP: \"1:10\"}\n";
  Ptrain p(launch(spec_procs(tmp_, 1, body), "127.0.0.2:1,127.0.0.3:1"));
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  const std::string dir = run_dir();
  EXPECT_TRUE(contains(read_file(dir + "/launcher.log"), "restart 1/1")) << dir;
  // Round 1's server 0 resumed a checkpoint of round 0 (8 updates = 4 steps of 2 workers each).
  std::string server_log = read_file(dir + "/server-0.log");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(server_log, m, std::regex(R"(step-(\d+)\.safetensors at step)")))
      << server_log;
  const int resumed = std::stoi(m[1].str());
  EXPECT_GT(resumed, 0);
  EXPECT_LE(resumed, 10);
  std::vector<std::pair<int, double>> curve;
  {
    std::ifstream in(dir + "/metrics.jsonl");
    std::string line;
    std::regex re(R"re("step": (\d+),.*"loss": ([^,}]+))re");
    while (std::getline(in, line))
      if (std::regex_search(line, m, re)) curve.emplace_back(std::stoi(m[1]), std::stod(m[2]));
  }
  ASSERT_FALSE(curve.empty());
  const double initial = curve.front().second;
  // The first loss of round 1 (the step after the resumed one) is near where round 0 was at that
  // step, not back at the initial weights.
  double before = NAN, after = NAN;
  for (const auto& [step, loss] : curve)
    if (step == resumed + 1) (std::isnan(before) ? before : after) = loss;
  ASSERT_FALSE(std::isnan(after)) << "step " << resumed + 1 << " was not repeated";
  std::printf("async over ssh: loss step 1 %.4f, step %d before the kill %.4f, after resume %.4f\n",
              initial, resumed + 1, before, after);
  EXPECT_LT(after, before + 0.5 * (initial - before));
  EXPECT_EQ(curve.back().first, 20);

  // job.yaml keeps env: values as ${KEY} references: the resume needs the variable exported
  // (steps 21-24 are past the injected failure at step 10).
  ptrain::testing::PtrainProcess again(
      {"launch", "--resume", dir, "--set", "train.steps=24", "--ssh-config", farm->ssh_config},
      {"PTRAIN_TEST_FAIL_AT_STEP=1:10"},
      ptrain::testing::PtrainProcess::Bounds{Millis(60000), Millis(120000)});
  const int again_code = again.finish();
  ASSERT_EQ(again_code, 0) << again.out << again.err;
  EXPECT_TRUE(contains(read_file(dir + "/launcher.log"), "resuming this run"));
  EXPECT_TRUE(contains(read_file(dir + "/metrics.jsonl"), "\"step\": 24"));
}

TEST_F(SshLaunchTest, ADeadParameterServerOnAHostFailsTheJobNamingIt) {
  Ptrain p(launch(spec_procs(tmp_, 1, kAsync + "train: {steps: 100000, log_every: 1}\n"),
                  "127.0.0.2:1,127.0.0.3:1"));
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "step"); })) << p.out << p.err;
  pid_t victim = -1;
  ASSERT_TRUE(p.wait_for([&] {
    std::string log = read_file(run_dir() + "/launcher.log");
    const std::string tag = "parameter server 1 (rank 3) started on 127.0.0.3: pid ";
    auto at = log.find(tag);
    if (at != std::string::npos) victim = std::atoi(log.c_str() + at + tag.size());
    return victim > 0;
  }));
  ::kill(victim, SIGKILL);
  EXPECT_EQ(p.finish(), 137) << p.err;
  EXPECT_TRUE(contains(p.err, fmt::format("job failed: parameter server 1 (rank 3) on host "
                                          "127.0.0.3 (pid {}) was killed",
                                          victim)))
      << p.err;
}

TEST_F(SshLaunchTest, MoreServersThanAHostRunsRanksIsRefusedBeforeAnythingStarts) {
  // Round-robin puts servers 1 and 3 on 127.0.0.3, which runs one rank.
  Ptrain p(launch(spec_procs(tmp_, 3,
                             "parallel: {data: 4, data_mode: async, servers: 4}\nmodel: {type: "
                             "gpt, layers: 1, heads: 2, dim: 32, seq_len: 16, vocab: 64}\n"
                             "data: {type: synthetic, batch_size: 8}\ntrain: {steps: 2}\n"),
                  "127.0.0.2:3,127.0.0.3:1"));
  EXPECT_EQ(p.finish(), 2) << p.err;
  EXPECT_TRUE(contains(p.err, "2 parameter server(s) on host 127.0.0.3, which runs 1 rank(s)"))
      << p.err;
  EXPECT_FALSE(fs::exists(tmp_ + "/runs"));
}

TEST_F(SshLaunchTest, ServerHostsPlacesTheServersAndAFixedPortIsUsed) {
  // The only server runs on the second host, on a fixed port: the worker of the first host
  // reaches it across hosts.
  const int port = free_port("127.0.0.3");
  Ptrain p(launch(spec_procs(tmp_, 1,
                             fmt::format("parallel: {{data: 2, data_mode: async, servers: 1, "
                                         "server_hosts: [127.0.0.3], server_port: {}}}\n",
                                         port) +
                                 "model: {type: gpt, layers: 1, heads: 2, dim: 32, seq_len: 16, "
                                 "vocab: 64}\ndata: {type: synthetic, batch_size: 8}\n"
                                 "train: {steps: 6, log_every: 1}\n"),
                  "127.0.0.2:1,127.0.0.3:1"));
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string log = read_file(run_dir() + "/launcher.log");
  EXPECT_TRUE(contains(log,
                       "parameter server 0 (rank 2) placed on 127.0.0.3, listening on "
                       "127.0.0.3"))
      << log;
  EXPECT_TRUE(contains(read_file(run_dir() + "/metrics.jsonl"), "\"step\": 6"));
}

TEST_F(SshLaunchTest, BadServerPlacementIsRefusedBeforeAnythingStarts) {
  const std::string body =
      "model: {type: gpt, layers: 1, heads: 2, dim: 32, seq_len: 16, vocab: 64}\n"
      "data: {type: synthetic, batch_size: 8}\ntrain: {steps: 2}\n";
  Ptrain unknown(launch(spec_procs(tmp_, 1,
                                   "parallel: {data: 2, data_mode: async, servers: 1, "
                                   "server_hosts: [127.0.0.7]}\n" +
                                       body),
                        "127.0.0.2:1,127.0.0.3:1"));
  EXPECT_EQ(unknown.finish(), 2) << unknown.err;
  EXPECT_TRUE(contains(unknown.err,
                       "parallel.server_hosts names host `127.0.0.7`, which is not "
                       "a host of this job (127.0.0.2, 127.0.0.3)"))
      << unknown.err;
  // A taken port on the server's host.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  ::inet_pton(AF_INET, "127.0.0.3", &sa.sin_addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  const int port = ntohs(sa.sin_port);
  Ptrain taken(launch(spec_procs(tmp_, 1,
                                 fmt::format("parallel: {{data: 2, data_mode: async, servers: 1, "
                                             "server_hosts: [127.0.0.3], server_port: {}}}\n",
                                             port) +
                                     body),
                      "127.0.0.2:1,127.0.0.3:1"));
  int code = taken.finish();
  ::close(fd);
  EXPECT_EQ(code, 2) << taken.err;
  EXPECT_TRUE(
      contains(taken.err, fmt::format("port {} on 127.0.0.3 (parameter server 0) is taken", port)))
      << taken.err;
  EXPECT_FALSE(fs::exists(tmp_ + "/runs"));
}
