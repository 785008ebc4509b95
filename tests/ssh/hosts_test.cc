// Host lists for `ptrain launch`: --hosts, Slurm node lists and task counts, rank assignment and
// its errors, hostfile errors with line numbers, the agent's stdin protocol, shell quoting.
#include "ptrain/launch/hosts.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <map>

#include "ptrain/core/error.h"
#include "ptrain/launch/remote_agent.h"
#include "ptrain/launch/ssh.h"
#include "ptrain/spec/spec.h"

using namespace ptrain;
using namespace ptrain::launch;

namespace {

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  return "(no error)";
}

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

}  // namespace

TEST(HostsFlag, ParsesHostsWithAndWithoutSlots) {
  auto h = parse_hosts_flag("a:4,b,[::1]:2");
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0], (spec::HostSlots{"a", 4}));
  EXPECT_EQ(h[1], (spec::HostSlots{"b", 0}));
  EXPECT_EQ(h[2], (spec::HostSlots{"::1", 2}));
}

TEST(HostsFlag, RejectsZeroSlotsAndEmptyNames) {
  EXPECT_TRUE(contains(error_of([] { parse_hosts_flag("a:0"); }), "host `a` has zero slots"));
  EXPECT_TRUE(contains(error_of([] { parse_hosts_flag("a:4,,b"); }), "empty host name"));
  EXPECT_TRUE(contains(error_of([] { parse_hosts_flag("a:x"); }), "not a whole number"));
}

TEST(SlurmNodelist, ExpandsRangesListsAndZeroPadding) {
  EXPECT_EQ(expand_slurm_nodelist("node[01-04,07]"),
            (std::vector<std::string>{"node01", "node02", "node03", "node04", "node07"}));
  EXPECT_EQ(expand_slurm_nodelist("gpu-a[1-2],login,n[9-10]"),
            (std::vector<std::string>{"gpu-a1", "gpu-a2", "login", "n9", "n10"}));
}

TEST(SlurmNodelist, ExpandsSeveralBracketGroupsInOneName) {
  EXPECT_EQ(expand_slurm_nodelist("r[1-2]n[1,3]"),
            (std::vector<std::string>{"r1n1", "r1n3", "r2n1", "r2n3"}));
}

TEST(SlurmNodelist, RejectsBadRangesAndBrackets) {
  EXPECT_TRUE(contains(error_of([] { expand_slurm_nodelist("node[01-04"); }), "unbalanced"));
  EXPECT_TRUE(contains(error_of([] { expand_slurm_nodelist("node[4-1]"); }), "bad range"));
  EXPECT_TRUE(contains(error_of([] { expand_slurm_nodelist("node[a-b]"); }), "bad range"));
}

TEST(SlurmTasks, ExpandsRepeatCounts) {
  EXPECT_EQ(expand_slurm_tasks("2(x3),1"), (std::vector<int>{2, 2, 2, 1}));
  EXPECT_EQ(expand_slurm_tasks("4"), (std::vector<int>{4}));
  EXPECT_TRUE(contains(error_of([] { expand_slurm_tasks("2(3)"); }), "bad item"));
}

TEST(SlurmHosts, TakesSlotsFromTasksPerNodeOrGpus) {
  std::map<std::string, std::string> env{{"SLURM_JOB_NODELIST", "n[1-3]"},
                                         {"SLURM_NTASKS_PER_NODE", "2(x2),1"}};
  auto get = [&](const char* k) -> const char* {
    auto it = env.find(k);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  auto h = slurm_hosts(get);
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0], (spec::HostSlots{"n1", 2}));
  EXPECT_EQ(h[2], (spec::HostSlots{"n3", 1}));
  env.erase("SLURM_NTASKS_PER_NODE");
  env["SLURM_GPUS_ON_NODE"] = "8";
  EXPECT_EQ(slurm_hosts(get)[1], (spec::HostSlots{"n2", 8}));
  env["SLURM_NTASKS_PER_NODE"] = "4";  // one number: every node
  EXPECT_EQ(slurm_hosts(get)[2], (spec::HostSlots{"n3", 4}));
  env.clear();
  EXPECT_TRUE(contains(error_of([&] { slurm_hosts(get); }), "SLURM_JOB_NODELIST is not set"));
}

TEST(PlanHosts, FillsHostsInOrderAndDropsUnusedOnes) {
  auto plan = plan_hosts({{"a", 2}, {"b", 0}, {"c", 4}}, 3, 4);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].first_rank, 0);
  EXPECT_EQ(plan[0].procs, 2);
  EXPECT_EQ(plan[1].host, "b");
  EXPECT_EQ(plan[1].first_rank, 2);
  EXPECT_EQ(plan[1].procs, 2);
  EXPECT_EQ(plan[1].node_rank, 1);
}

TEST(PlanHosts, RejectsDuplicateHostsZeroSlotsAndTooManyRanks) {
  EXPECT_TRUE(contains(error_of([] {
                         plan_hosts({{"a", 2}, {"a", 2}}, 1, 2);
                       }),
                       "host `a` is listed twice"));
  EXPECT_TRUE(contains(error_of([] { plan_hosts({{"a", 0}}, 0, 1); }), "host `a` has zero slots"));
  EXPECT_TRUE(contains(error_of([] {
                         plan_hosts({{"a", 2}, {"b", 2}}, 1, 5);
                       }),
                       "the job needs 5 ranks but the 2 host(s) have 4 slot(s)"));
}

TEST(Hostfile, SyntaxErrorsNameTheLine) {
  std::string e = error_of([] { spec::parse_hostfile("# hosts\na slots=2\nb slot=2\n", "hf"); });
  EXPECT_TRUE(contains(e, "hf:3:")) << e;
  e = error_of([] { spec::parse_hostfile("a slots=2\n\nb slots=x\n", "hf"); });
  EXPECT_TRUE(contains(e, "hf:3:")) << e;
}

TEST(AgentSetup, RoundTripsThroughAPipeWithTheSpecAndEscapes) {
  RemoteAgentSetup s;
  s.agent.token = "tok\\en";
  s.agent.coordinator = "127.0.0.1:5000";
  s.agent.node = "h2";
  s.agent.first_rank = 2;
  s.agent.local_world_size = 2;
  s.agent.world_size = 4;
  s.agent.run_dir = "/tmp/r";
  s.agent.argv = {"/bin/ptrain", "worker"};
  s.agent.extra_env = {{"A", "x\ny"}};
  s.spec_yaml = "name: t\ntrain: {steps: 0}\n";
  s.heartbeat_s = 0.5;
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::string data = encode_agent_setup(s);
  ASSERT_EQ(::write(fds[1], data.data(), data.size()), static_cast<ssize_t>(data.size()));
  RemoteAgentSetup got = read_agent_setup(fds[0], Millis(1000));
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_EQ(got.agent.token, s.agent.token);
  EXPECT_EQ(got.agent.first_rank, 2);
  EXPECT_EQ(got.agent.argv, s.agent.argv);
  EXPECT_EQ(got.agent.extra_env, s.agent.extra_env);
  EXPECT_EQ(got.spec_yaml, s.spec_yaml);
  EXPECT_DOUBLE_EQ(got.heartbeat_s, 0.5);
  EXPECT_FALSE(got.tls.has_value());
}

TEST(AgentSetup, CarriesTheJobCertificateAndKeyIntact) {
  RemoteAgentSetup s;
  s.agent.token = "t";
  s.agent.coordinator = "127.0.0.1:5000";
  s.agent.run_dir = "/tmp/r";
  s.agent.argv = {"/bin/ptrain", "worker"};
  s.tls = rendezvous::make_job_tls();
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::string data = encode_agent_setup(s);
  ASSERT_EQ(::write(fds[1], data.data(), data.size()), static_cast<ssize_t>(data.size()));
  RemoteAgentSetup got = read_agent_setup(fds[0], Millis(1000));
  ::close(fds[0]);
  ::close(fds[1]);
  ASSERT_TRUE(got.tls.has_value());
  EXPECT_EQ(got.tls->ca_pem, s.tls->ca_pem);
  EXPECT_EQ(got.tls->cert_pem, s.tls->cert_pem);
  EXPECT_EQ(got.tls->key_pem, s.tls->key_pem);
}

TEST(AgentSetup, TimesOutWhenNothingArrives) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  EXPECT_THROW(read_agent_setup(fds[0], Millis(50)), TimeoutError);
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(AgentMessages, ParseStartedExitAndDone) {
  auto m = parse_agent_message(format_started(3, 1234));
  EXPECT_EQ(m.kind, AgentMessage::Kind::Started);
  EXPECT_EQ(m.pid, 1234);
  WorkerExit e{2, 99, {}, "cannot execute 'x'"};
  e.status.signal = 9;
  m = parse_agent_message(format_exit(e).substr(0, format_exit(e).size() - 1));
  EXPECT_EQ(m.kind, AgentMessage::Kind::Exit);
  EXPECT_EQ(m.rank, 2);
  EXPECT_EQ(m.status.signal, 9);
  EXPECT_EQ(m.text, "cannot execute 'x'");
  EXPECT_EQ(parse_agent_message("done").kind, AgentMessage::Kind::Done);
  EXPECT_EQ(parse_agent_message("hello").kind, AgentMessage::Kind::Other);
}

TEST(Ssh, QuotesForTheRemoteShellAndBuildsBatchModeArgv) {
  EXPECT_EQ(shell_quote("/usr/bin/ptrain"), "/usr/bin/ptrain");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(remote_program_word("~/.cache/p"), "\"$HOME\"/.cache/p");
  SshOptions o;
  o.port = 2222;
  o.config = "/tmp/cfg";
  auto argv = ssh_argv(o, "h", "ptrain agent");
  std::string joined;
  for (const auto& a : argv) joined += a + " ";
  EXPECT_TRUE(contains(joined, "-F /tmp/cfg -o BatchMode=yes -o ConnectTimeout=10")) << joined;
  EXPECT_TRUE(contains(joined, "-p 2222 -T h -- ptrain agent")) << joined;
}

TEST(Ssh, RouteToLoopbackIsALoopbackAddress) {
  EXPECT_EQ(route_source_address("127.0.0.2").rfind("127.", 0), 0u);
}

TEST(PlaceServers, RoundRobinOverTheHostsOrAsNamed) {
  std::vector<HostPlan> plan = plan_hosts({{"a", 2}, {"b", 2}}, 2, 4);
  EXPECT_EQ(place_servers(plan, 3, {}), (std::vector<size_t>{0, 1, 0}));
  EXPECT_EQ(place_servers(plan, 2, {"b"}), (std::vector<size_t>{1, 1}));
  EXPECT_EQ(place_servers(plan, 2, {"b", "a"}), (std::vector<size_t>{1, 0}));
  EXPECT_TRUE(place_servers(plan, 0, {"a"}).empty());
}

TEST(PlaceServers, RejectsUnknownHostsAndMoreServersThanAHostRunsRanks) {
  std::vector<HostPlan> plan = plan_hosts({{"a", 1}, {"b", 1}}, 1, 2);
  try {
    place_servers(plan, 1, {"c"});
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(
        std::string(e.what()).find("parallel.server_hosts names host `c`, which is not a host of "
                                   "this job (a, b)"),
        std::string::npos)
        << e.what();
  }
  try {
    place_servers(plan, 2, {"a"});
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("2 parameter server(s) on host a, which runs 1 rank(s)"),
              std::string::npos)
        << e.what();
  }
}

TEST(AgentSetup, CarriesEveryFieldIncludingTheServers) {
  RemoteAgentSetup s;
  s.agent.token = "t";
  s.agent.coordinator = "10.0.0.1:1";
  s.agent.node = "b";
  s.agent.node_rank = 1;
  s.agent.num_nodes = 2;
  s.agent.run_dir = "/r";
  s.agent.run_id = "id";
  s.agent.argv = {"ptrain", "worker"};
  s.agent.master_addr = "a";
  s.agent.master_port = 1234;
  s.agent.max_restarts = 3;
  s.agent.threads_per_proc = 2;
  s.agent.cuda = true;
  s.agent.server_indices = {1, 3};
  s.agent.server_argv = {"ptrain", "param-server"};
  s.agent.server_bind = "10.0.0.2";
  s.coordinator_loss_s = 7.5;
  s.term_grace_s = 1.25;
  s.round = 4;
  s.umask = 077;
  s.restore_umask = true;
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::string data = encode_agent_setup(s) + "signal 15\n";
  ASSERT_EQ(::write(fds[1], data.data(), data.size()), static_cast<ssize_t>(data.size()));
  RemoteAgentSetup got = read_agent_setup(fds[0], Millis(1000));
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_EQ(got.agent.node_rank, 1);
  EXPECT_EQ(got.agent.num_nodes, 2);
  EXPECT_EQ(got.agent.run_id, "id");
  EXPECT_EQ(got.agent.master_addr, "a");
  EXPECT_EQ(got.agent.master_port, 1234);
  EXPECT_EQ(got.agent.max_restarts, 3);
  EXPECT_EQ(got.agent.threads_per_proc, 2);
  EXPECT_TRUE(got.agent.cuda);
  EXPECT_EQ(got.agent.server_indices, (std::vector<int>{1, 3}));
  EXPECT_EQ(got.agent.server_argv, s.agent.server_argv);
  EXPECT_EQ(got.agent.server_bind, "10.0.0.2");
  EXPECT_DOUBLE_EQ(got.coordinator_loss_s, 7.5);
  EXPECT_DOUBLE_EQ(got.term_grace_s, 1.25);
  EXPECT_EQ(got.round, 4);
  EXPECT_EQ(got.umask, 077);
  EXPECT_TRUE(got.restore_umask);
}

TEST(AgentSetup, RefusesAStreamThatIsNotASetupMessage) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::string data = "token abc\nend\n";
  ASSERT_EQ(::write(fds[1], data.data(), data.size()), static_cast<ssize_t>(data.size()));
  EXPECT_THROW(read_agent_setup(fds[0], Millis(1000)), ConfigError);
  ::close(fds[0]);
  ::close(fds[1]);
}
