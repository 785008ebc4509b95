// `ptrain run` end to end with the real binary: environment, logs, exit codes, root-cause
// blocks, signals, hang detection and cleanup (checked in /proc).
#include <arpa/inet.h>
#include <dirent.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "ptrain/launch/process.h"
#include "support/ptrain_process.h"

using namespace ptrain;
using namespace ptrain::launch;
namespace fs = std::filesystem;

namespace {

using ptrain::testing::contains;
using ptrain::testing::read_file;
using ptrain::testing::TempDir;
using Ptrain = ptrain::testing::PtrainProcess;

// Processes of ours whose environment says they belong to a run under `dir`.
std::vector<pid_t> processes_of(const std::string& dir, const std::string& extra = "") {
  return ptrain::testing::processes_with_run_dir(dir, extra);
}

// Waits (bounded) until no process of the run is left; returns the ones still there.
std::vector<pid_t> wait_all_gone(const std::string& dir, Millis timeout = Millis(10000)) {
  return ptrain::testing::wait_all_gone([&] { return processes_of(dir); }, timeout);
}

class RunTest : public ::testing::Test {
 protected:
  std::string runs() const { return tmp_.path() + "/runs"; }
  // Writes a spec; `body` is YAML appended after name and logging.
  std::string spec(const std::string& body, const std::string& console = "all") {
    std::string path = tmp_.path() + "/job.yaml";
    std::ofstream(path) << "name: t\nlogging: {dir: " << runs() << ", console: " << console << "}\n"
                        << body;
    return path;
  }
  std::string run_dir() const {
    for (const auto& e : fs::directory_iterator(runs())) return e.path().string();
    return {};
  }
  void TearDown() override {
    auto left = wait_all_gone(tmp_.path());
    EXPECT_TRUE(left.empty()) << left.size() << " process(es) of the run left, e.g. pid "
                              << (left.empty() ? 0 : left[0]);
    for (pid_t p : left) ::kill(p, SIGKILL);
  }
  TempDir tmp_{"ptrain-launch-test"};
};

const std::string kTwoCommand = "nodes: {procs_per_node: 2}\nparallel: {data: 2}\n";
const std::string kTwoBuiltin =
    "nodes: {procs_per_node: 2, device: cpu}\nparallel: {data: 2}\ntrain: {steps: 0}\n";

}  // namespace

TEST_F(RunTest, CommandJobGetsTheTorchrunEnvironmentAndLogsEachRank) {
  Ptrain p(
      {"run", spec(kTwoCommand +
                   "command: [sh, -c, 'tok=$(printf %s \"$PTRAIN_TOKEN\" | wc -c); echo "
                   "rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK lws=$LOCAL_WORLD_SIZE "
                   "group=$GROUP_RANK master=$MASTER_ADDR token=$tok omp=$OMP_NUM_THREADS "
                   "restarts=$TORCHELASTIC_RESTART_COUNT port=$MASTER_PORT; echo oops >&2']\n")});
  ASSERT_EQ(p.finish(), 0) << p.err;
  EXPECT_TRUE(contains(p.out,
                       "[rank 1] rank=1 world=2 local=1 lws=2 group=0 master=127.0.0.1 "
                       "token=64 omp=1 restarts=0 port="))
      << p.out;
  std::string dir = run_dir();
  std::string log0 = read_file(dir + "/rank-0.log");
  EXPECT_TRUE(contains(log0, " rank=0 world=2")) << log0;
  EXPECT_TRUE(contains(log0, " oops\n")) << log0;
  EXPECT_EQ(log0[4], '-');  // "2026-11-26 23:42:07.123 text"
  EXPECT_EQ(log0[23], ' ');
  EXPECT_TRUE(fs::exists(dir + "/job.yaml"));
  EXPECT_TRUE(fs::exists(dir + "/launcher.log"));
  EXPECT_TRUE(contains(read_file(dir + "/summary.json"), "\"status\": \"succeeded\""));
}

TEST_F(RunTest, WorkersGetPassiveOpenMpWaitingUnlessSet) {
  // The launcher's environment decides: this test's own OMP_WAIT_POLICY (if any) is taken out
  // for both runs, then given explicitly to the second.
  const char* had = std::getenv("OMP_WAIT_POLICY");
  const std::string saved = had ? had : "";
  ::unsetenv("OMP_WAIT_POLICY");
  const std::string s = spec(kTwoCommand + "command: [sh, -c, 'echo wait=$OMP_WAIT_POLICY']\n");
  Ptrain unset({"run", s});
  const int unset_code = unset.finish();
  Ptrain set({"run", s}, {"OMP_WAIT_POLICY=active"});
  const int set_code = set.finish();
  if (had) ::setenv("OMP_WAIT_POLICY", saved.c_str(), 1);
  ASSERT_EQ(unset_code, 0) << unset.err;
  EXPECT_TRUE(contains(unset.out, "[rank 1] wait=passive")) << unset.out;
  ASSERT_EQ(set_code, 0) << set.err;
  EXPECT_TRUE(contains(set.out, "[rank 1] wait=active")) << set.out;
}

TEST_F(RunTest, RanksLogsMergeInTimeOrder) {
  Ptrain p({"run", spec(kTwoCommand + "command: [sh, -c, 'echo first-$RANK']\n")});
  ASSERT_EQ(p.finish(), 0) << p.err;
  Ptrain logs({"logs", run_dir(), "--rank", "1"});
  ASSERT_EQ(logs.finish(), 0) << logs.err;
  EXPECT_TRUE(contains(logs.out, "[rank 1] ")) << logs.out;
  EXPECT_TRUE(contains(logs.out, "first-1")) << logs.out;
  EXPECT_FALSE(contains(logs.out, "first-0")) << logs.out;
}

TEST_F(RunTest, StepsZeroJobJoinsAndExitsZero) {
  Ptrain p({"run", spec(kTwoBuiltin)});
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  EXPECT_TRUE(contains(read_file(run_dir() + "/summary.json"), "\"exit_code\": 0"));
}

TEST_F(RunTest, FailingWorkerGivesItsExitCodeAndARootCause) {
  Ptrain p({"run", spec(kTwoCommand +
                        "command: [sh, -c, 'if [ $RANK = 1 ]; then echo boom-line; exit 3; fi; "
                        "exec sleep 60']\n")});
  EXPECT_EQ(p.finish(Millis(30000)), 3);
  EXPECT_TRUE(contains(p.err, "rank 1 on ")) << p.err;
  EXPECT_TRUE(contains(p.err, "exit code 3")) << p.err;
  EXPECT_TRUE(contains(p.err, "boom-line")) << p.err;
  EXPECT_TRUE(contains(read_file(run_dir() + "/summary.json"), "\"failed_rank\": 1"));
}

TEST_F(RunTest, WorkerKilledMidRunGives137) {
  Ptrain p({"run", spec(kTwoCommand + "command: [sh, -c, 'echo ready-$RANK; exec sleep 60']\n")});
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "ready-1"); })) << p.out << p.err;
  auto victims = processes_of(tmp_.path(), "RANK=1");
  ASSERT_EQ(victims.size(), 1u);
  ::kill(victims[0], SIGKILL);
  EXPECT_EQ(p.finish(Millis(30000)), 137);
  EXPECT_TRUE(contains(p.err, "SIGKILL")) << p.err;
}

TEST_F(RunTest, CommandNotFoundIs127AndNamed) {
  Ptrain p({"run", spec(kTwoCommand + "command: [ptrain-no-such-program, --flag]\n")});
  EXPECT_EQ(p.finish(Millis(30000)), 127);
  EXPECT_TRUE(contains(p.err, "ptrain-no-such-program")) << p.err;
  EXPECT_TRUE(contains(p.err, "not found")) << p.err;
}

TEST_F(RunTest, SigintStopsEverythingWith130) {
  Ptrain p({"run", spec(kTwoCommand + "command: [sh, -c, 'echo ready-$RANK; sleep 60']\n")});
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "ready-0") && contains(p.out, "ready-1"); }))
      << p.out;
  ::kill(p.proc().pid(), SIGINT);
  EXPECT_EQ(p.finish(Millis(30000)), 130);
  EXPECT_TRUE(contains(read_file(run_dir() + "/summary.json"), "interrupted"));
  // TearDown checks that no process of the run is left (sleep included: the group was signalled).
}

TEST_F(RunTest, SigkillOfTheLauncherTakesTheWorkersDown) {
  Ptrain p({"run", spec(kTwoCommand + "command: [sh, -c, 'echo ready-$RANK; exec sleep 60']\n")});
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "ready-0") && contains(p.out, "ready-1"); }))
      << p.out;
  ASSERT_EQ(processes_of(tmp_.path()).size(), 2u);
  ::kill(p.proc().pid(), SIGKILL);
  EXPECT_EQ(p.finish(Millis(30000)), 137);
  EXPECT_TRUE(wait_all_gone(tmp_.path()).empty());
}

TEST_F(RunTest, StoppedWorkerIsDetectedAsHung) {
  // Rank 1 starts late so rank 0 has joined and is waiting when it is stopped; once rank 1 joins,
  // rank 0 sends no heartbeat and the watchdog names it.
  Ptrain p({"run",
            spec(kTwoCommand +
                 "fault_tolerance: {heartbeat_s: 0.1, hang_timeout_s: 1, term_grace_s: 1}\n"
                 "command: [sh, -c, 'if [ $RANK = 1 ]; then sleep 1.5; fi; exec \"$0\" worker', " +
                 std::string(PTRAIN_BINARY) + "]\n")});
  std::vector<pid_t> rank0;
  ASSERT_TRUE(p.wait_for([&] {
    rank0 = processes_of(tmp_.path(), "RANK=0");
    return !rank0.empty();
  }));
  // Let it reach the coordinator (connect + Join take a few ms); rank 1 comes 1.5 s later.
  ::usleep(500000);
  ::kill(rank0[0], SIGSTOP);
  EXPECT_EQ(p.finish(Millis(30000)), kExitTimeout) << p.err;
  EXPECT_TRUE(contains(p.err, "rank 0")) << p.err;
  EXPECT_TRUE(contains(p.err, "hung")) << p.err;
}

TEST_F(RunTest, BusyExplicitPortIsNamed) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa {};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  int port = ntohs(sa.sin_port);
  Ptrain p({"run", spec(kTwoCommand + fmt::format("rendezvous: {{port: {}}}\n", port) +
                        "command: [sh, -c, 'exit 0']\n")});
  int code = p.finish(Millis(30000));
  ::close(fd);
  EXPECT_NE(code, 0);
  EXPECT_TRUE(contains(p.err, fmt::format("127.0.0.1:{}", port))) << p.err;
}

TEST_F(RunTest, WrongTokenIsRefused) {
  // env: may not set PTRAIN_TOKEN (ptrain sets it), so the command swaps it itself.
  Ptrain p({"run", spec(kTwoCommand + "command: [sh, -c, 'PTRAIN_TOKEN=not-the-token exec " +
                        std::string(PTRAIN_BINARY) + " worker']\n")});
  EXPECT_EQ(p.finish(Millis(30000)), kExitRemote) << p.err;
  EXPECT_TRUE(contains(p.err, "token")) << p.err;
}

TEST_F(RunTest, RankThatNeverJoinsIsNamed) {
  Ptrain p({"run", spec(kTwoCommand + "rendezvous: {timeout_s: 1}\n" +
                        "command: [sh, -c, 'if [ $RANK = 1 ]; then exec sleep 60; fi; exec \"$0\" "
                        "worker', " +
                        std::string(PTRAIN_BINARY) + "]\n")});
  EXPECT_EQ(p.finish(Millis(30000)), kExitTimeout) << p.err;
  EXPECT_TRUE(contains(p.err, "rank(s) 1 on")) << p.err;
}

TEST_F(RunTest, WorkerCrashingDuringRendezvousAbortsTheOthers) {
  Ptrain p({"run", spec(kTwoCommand +
                        "command: [sh, -c, 'if [ $RANK = 1 ]; then exit 5; fi; exec \"$0\" "
                        "worker', " +
                        std::string(PTRAIN_BINARY) + "]\n")});
  EXPECT_EQ(p.finish(Millis(30000)), 5) << p.err;
  EXPECT_TRUE(contains(p.err, "rank 1")) << p.err;
}

namespace {

mode_t mode_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 07777;
  return st.st_mode & 07777;
}

mode_t current_umask() {
  mode_t u = ::umask(0);
  ::umask(u);
  return u;
}

}  // namespace

TEST_F(RunTest, RunFoldersAndEveryFileInThemArePrivate) {
  std::string path = tmp_.path() + "/private.yaml";
  std::ofstream(path) << "name: t\nlogging: {dir: " << runs() << "}\n"
                      << "nodes: {procs_per_node: 1, device: cpu}\n"
                      << "train: {steps: 2}\n";
  Ptrain p({"run", path});
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string dir = run_dir();
  EXPECT_EQ(mode_of(dir), 0700u) << dir;
  for (const char* f : {"job.yaml", "launcher.log", "metrics.jsonl", "summary.json", "rank-0.log"})
    EXPECT_EQ(mode_of(dir + "/" + f), 0600u) << f;
  EXPECT_EQ(mode_of(dir + "/checkpoints"), 0700u);
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir + "/checkpoints")) {
    EXPECT_EQ(mode_of(e.path().string()), 0600u) << e.path();
    ++files;
  }
  EXPECT_GT(files, 0);
}

TEST_F(RunTest, CommandJobsKeepTheUsersUmaskAndSharedModeKeepsItForTheRunFolder) {
  const mode_t user = current_umask();
  std::string path = tmp_.path() + "/cmd.yaml";
  std::ofstream(path) << "name: t\nlogging: {dir: " << runs() << "}\n"
                      << "command: [sh, -c, 'echo umask=$(umask)']\n";
  Ptrain p({"run", path});
  ASSERT_EQ(p.finish(), 0) << p.err;
  EXPECT_TRUE(contains(p.out, fmt::format("umask={:04o}", user))) << p.out;
  EXPECT_EQ(mode_of(run_dir()), 0700u);
  fs::remove_all(runs());
  Ptrain shared({"run", path, "--set", "logging.mode=shared"});
  ASSERT_EQ(shared.finish(), 0) << shared.err;
  EXPECT_EQ(mode_of(run_dir()), 0777u & ~user);
  EXPECT_EQ(mode_of(run_dir() + "/job.yaml"), 0666u & ~user);
}

TEST_F(RunTest, LogsWithoutAFolderShowTheUsersNewestRunWhereverItsLogsLive) {
  // The run's logging.dir is not ./runs; the pointer every run writes finds it.
  const std::string cache = "XDG_CACHE_HOME=" + tmp_.path() + "/cache";
  Ptrain p({"run", spec(kTwoCommand + "command: [sh, -c, 'echo hello-$RANK']\n")}, {cache});
  ASSERT_EQ(p.finish(), 0) << p.err;
  Ptrain logs({"logs"}, {cache});
  ASSERT_EQ(logs.finish(), 0) << logs.err;
  EXPECT_TRUE(contains(logs.err, "ptrain logs: " + run_dir())) << logs.err;
  EXPECT_TRUE(contains(logs.out, "hello-1")) << logs.out;
  Ptrain unknown({"logs", run_dir(), "--rank", "99"}, {cache});
  EXPECT_EQ(unknown.finish(), kExitConfig) << unknown.out;
  EXPECT_TRUE(contains(unknown.err, "--rank 99: '" + run_dir() +
                                        "' has no log of rank 99; its "
                                        "ranks are 0-1"))
      << unknown.err;
}

TEST_F(RunTest, BadInputExitsAreNotRestartedAndRepeatedFailuresStop) {
  // max_restarts: 1000 and a program that always reports bad input: one failure, no restart.
  Ptrain bad({"run", spec("fault_tolerance: {max_restarts: 1000}\ncommand: [sh, -c, 'exit 2']\n")});
  EXPECT_EQ(bad.finish(Millis(20000)), 2) << bad.err;
  EXPECT_TRUE(contains(bad.err, "not restarting: exit code 2 means bad input")) << bad.err;
  EXPECT_TRUE(contains(read_file(run_dir() + "/summary.json"), "\"restarts\": []"));
  fs::remove_all(runs());
  // The same failure twice in a row (no progress between): the second ends the job.
  Ptrain same(
      {"run", spec("fault_tolerance: {max_restarts: 1000}\ncommand: [sh, -c, 'exit 3']\n")});
  EXPECT_EQ(same.finish(Millis(20000)), 3) << same.err;
  EXPECT_TRUE(contains(same.err, "not restarting: round 1 failed exactly as round 0 did"))
      << same.err;
  std::string summary = read_file(run_dir() + "/summary.json");
  EXPECT_EQ(summary.find("\"round\": 2"), std::string::npos) << summary;
  EXPECT_NE(summary.find("\"round\": 1"), std::string::npos) << summary;
}

TEST_F(RunTest, SigkillOfTheLauncherTakesTheWorkersChildrenDownToo) {
  // Each worker is a shell with two background children: the grandchildren get no
  // PR_SET_PDEATHSIG of their own, so only the agent's watchdog can end them.
  Ptrain p(
      {"run", spec(kTwoCommand +
                   "command: [bash, -c, 'sleep 1000 & sleep 1000 & echo ready-$RANK; wait']\n")});
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "ready-0") && contains(p.out, "ready-1"); }))
      << p.out;
  ASSERT_EQ(processes_of(tmp_.path()).size(), 6u);  // 2 shells + 4 sleeps
  ::kill(p.proc().pid(), SIGKILL);
  EXPECT_EQ(p.finish(Millis(30000)), 137);
  auto left = wait_all_gone(tmp_.path());
  EXPECT_TRUE(left.empty()) << left.size() << " left";
}

TEST_F(RunTest, APeersEchoIsNotBlamedForTheFailureThatCausedIt) {
  // Rank 1 exits at once with 4 ("a peer failed", as a worker whose peer reset its connection
  // does); rank 0, the real failure, exits with 1 a moment later (it ignores the stop signal, as
  // a worker already on its way out does). Rank 0 is the root cause and its code is the job's.
  // Rank 1 waits until rank 0 ignores SIGTERM, so the order does not depend on scheduling.
  const std::string flag = tmp_.path() + "/trapped";
  Ptrain p({"run", spec(kTwoCommand + "command: [sh, -c, 'if [ $RANK = 1 ]; then while [ ! -e " +
                        flag + " ]; do sleep 0.02; done; exit 4; fi; trap \"\" TERM; touch " +
                        flag + "; sleep 0.5; echo disk full >&2; exit 1']\n")});
  EXPECT_EQ(p.finish(Millis(30000)), 1) << p.err;
  EXPECT_TRUE(contains(p.err, "job failed: rank 0 on ")) << p.err;
  EXPECT_TRUE(contains(p.err, "exited with exit code 1")) << p.err;
  EXPECT_TRUE(
      contains(read_file(run_dir() + "/launcher.log"), "the root cause (rank 1 only saw it)"))
      << read_file(run_dir() + "/launcher.log");
}

// ---- The same behaviour as `ptrain launch` (one supervision engine; tests/ssh) ----

TEST_F(RunTest, LeavingRanksAreLoggedAsWithLaunch) {
  Ptrain p({"run", spec(kTwoBuiltin)});
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string log = read_file(run_dir() + "/launcher.log");
  for (int r = 0; r < 2; ++r)
    EXPECT_TRUE(contains(log, fmt::format("rank {} left with exit code 0", r))) << log;
}

TEST_F(RunTest, ACoordinatorThatCannotStartStillWritesSummaryJson) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa {};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  const int port = ntohs(sa.sin_port);
  Ptrain p({"run", spec(kTwoBuiltin + fmt::format("rendezvous: {{port: {}}}\n", port))});
  int code = p.finish(Millis(30000));
  ::close(fd);
  EXPECT_NE(code, 0);
  std::string summary = read_file(run_dir() + "/summary.json");
  EXPECT_TRUE(contains(summary, R"("status": "failed")")) << summary;
  EXPECT_TRUE(contains(summary, "cannot start the coordinator")) << summary;
}

TEST_F(RunTest, ATakenParameterServerPortIsRefusedBeforeAnythingStarts) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa {};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  const int port = ntohs(sa.sin_port);
  Ptrain p({"run", spec(fmt::format("nodes: {{procs_per_node: 2, device: cpu}}\nparallel: {{data: "
                                    "2, data_mode: async, servers: 1, server_port: {}}}\n"
                                    "train: {{steps: 2}}\n",
                                    port))});
  int code = p.finish(Millis(30000));
  ::close(fd);
  EXPECT_EQ(code, 2) << p.err;
  EXPECT_TRUE(
      contains(p.err, fmt::format("port {} on 127.0.0.1 (parameter server 0) is taken", port)))
      << p.err;
}

TEST_F(RunTest, TlsJobTrainsEndToEndAndRemovesItsKeys) {
  Ptrain p({"run", spec("nodes: {procs_per_node: 2, device: cpu}\nparallel: {data: 2}\n"
                        "train: {steps: 3}\nrendezvous: {tls: on}\n")});
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string dir = run_dir();
  EXPECT_TRUE(contains(read_file(dir + "/launcher.log"), "mutual TLS on every gRPC channel"));
  EXPECT_TRUE(contains(read_file(dir + "/summary.json"), "\"exit_code\": 0"));
  EXPECT_FALSE(fs::exists(dir + "/.tls")) << "the key files outlived the job";
}

TEST_F(RunTest, TlsOffAndLoopbackAutoStayPlaintext) {
  Ptrain p({"run", spec(kTwoBuiltin)});
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  EXPECT_FALSE(contains(read_file(run_dir() + "/launcher.log"), "mutual TLS"));
}

TEST_F(RunTest, EnvSecretsReachTheWorkersButNoFileOfTheRunFolder) {
  const std::string secret = "s3cr3t-" + std::to_string(::getpid()) + "-value";
  std::string expected = tmp_.path() + "/expected";
  std::ofstream(expected) << secret;
  // A command job compares what it got with the file outside the run folder; a built-in job's
  // workers load job.yaml, whose env: refers to the variables they were given.
  Ptrain cmd(
      {"run", spec("env: {MY_SECRET: " + secret +
                   "}\ncommand: [sh, -c, 'test \"$MY_SECRET\" = \"$(cat " + expected + ")\"']\n")});
  ASSERT_EQ(cmd.finish(), 0) << cmd.out << cmd.err;
  fs::remove_all(runs());
  Ptrain builtin({"run", spec("env: {MY_SECRET: " + secret + "}\n" +
                              "nodes: {procs_per_node: 2, device: cpu}\nparallel: {data: 2}\n"
                              "train: {steps: 2}\n")});
  ASSERT_EQ(builtin.finish(), 0) << builtin.out << builtin.err;
  std::string dir = run_dir();
  EXPECT_TRUE(contains(read_file(dir + "/job.yaml"), "MY_SECRET: ${MY_SECRET}"));
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    ++files;
    EXPECT_FALSE(contains(read_file(e.path().string()), secret)) << e.path();
  }
  EXPECT_GT(files, 5);
}

// Built-in workers meet the coordinator through their node's relay: one JoinNode for the host.
TEST_F(RunTest, BuiltinWorkersJoinThroughTheNodeRelay) {
  Ptrain p({"run", spec(kTwoBuiltin)});
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string summary = read_file(run_dir() + "/summary.json");
  EXPECT_TRUE(contains(summary, "\"rendezvous\": {\"rank_joins\": 0, \"node_joins\": 1}"))
      << summary;
}

// PTRAIN_NODE_RELAY=0 keeps the flat path: every rank joins the coordinator itself.
TEST_F(RunTest, WithoutTheRelayEveryRankJoinsTheCoordinator) {
  Ptrain p({"run", spec(kTwoBuiltin)}, {"PTRAIN_NODE_RELAY=0"});
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  std::string summary = read_file(run_dir() + "/summary.json");
  EXPECT_TRUE(contains(summary, "\"rendezvous\": {\"rank_joins\": 2, \"node_joins\": 0}"))
      << summary;
}

TEST_F(RunTest, BuiltinJobPrintsItsStartUpTimeBeforeTheFirstStep) {
  Ptrain p({"run", spec("nodes: {device: cpu}\ntrain: {steps: 2, log_every: 1}\n")});
  ASSERT_EQ(p.finish(), 0) << p.out << p.err;
  const std::string key = "start-up: join -> first step ";
  const size_t at = p.out.find(key);
  ASSERT_NE(at, std::string::npos) << p.out;
  const double seconds = std::strtod(p.out.c_str() + at + key.size(), nullptr);
  EXPECT_GT(seconds, 0.0) << p.out;
  EXPECT_LT(seconds, 60.0) << p.out;
  const size_t first_step = p.out.find("step 1/2");
  ASSERT_NE(first_step, std::string::npos) << p.out;
  EXPECT_LT(at, first_step) << p.out;
}
