#include "ptrain/launch/ssh_launcher.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "ptrain/core/error.h"
#include "ptrain/launch/console.h"
#include "ptrain/launch/hosts.h"
#include "ptrain/launch/job_tls.h"
#include "ptrain/launch/mlflow.h"
#include "ptrain/launch/node_relay_policy.h"
#include "ptrain/launch/remote_agent.h"
#include "ptrain/launch/run_dir.h"
#include "ptrain/launch/ssh_group.h"
#include "ptrain/launch/supervisor.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/token.h"
#include "ptrain/spec/elastic.h"
#include "ptrain/spec/spec.h"

namespace ptrain::launch {

namespace {

Millis seconds_ms(double s) {
  return Millis(static_cast<int64_t>(s * 1000));
}

}  // namespace

class SshLauncher::Impl {
 public:
  Impl(spec::JobSpec spec, SshLaunchOptions options)
      : spec_(std::move(spec)), opt_(std::move(options)) {}
  JobResult run();

 private:
  void check_hosts(const std::vector<HostPlan>& plan, const std::string& program);
  PreflightOptions preflight_options(const std::string& program);

  spec::JobSpec spec_;
  SshLaunchOptions opt_;
  std::string version_;  // `ptrain --version` here, which every host must match
};

SshLauncher::SshLauncher(spec::JobSpec spec, SshLaunchOptions options)
    : impl_(std::make_unique<Impl>(std::move(spec), std::move(options))) {}
SshLauncher::~SshLauncher() = default;
JobResult SshLauncher::run() {
  return impl_->run();
}

PreflightOptions SshLauncher::Impl::preflight_options(const std::string& program) {
  PreflightOptions po;
  po.remote_ptrain = program;
  po.timeout = opt_.preflight_timeout;
  if (version_.empty()) {
    std::string self = opt_.local_binary.empty() ? this_executable() : opt_.local_binary;
    version_ = run_command({self, "--version"}, "", Millis(10000)).out;
  }
  po.expected_version = version_;
  return po;
}

void SshLauncher::Impl::check_hosts(const std::vector<HostPlan>& plan, const std::string& program) {
  std::vector<std::string> hosts;
  std::vector<int> gpus;
  for (const auto& p : plan) {
    hosts.push_back(p.host);
    gpus.push_back(spec_.nodes.device == "cuda" ? p.procs : 0);
  }
  auto results = preflight(hosts, opt_.ssh, gpus, preflight_options(program));
  std::string bad;
  int count = 0;
  for (const auto& r : results)
    if (!r.ok) {
      bad += fmt::format("{}host {}: {}", bad.empty() ? "" : "\n", r.host, r.problem);
      ++count;
    }
  if (count)
    throw RemoteError(fmt::format("{} of {} host(s) failed the preflight; nothing was started\n{}",
                                  count, results.size(), bad));
}

JobResult SshLauncher::Impl::run() {
  const bool builtin = !spec_.launcher_only();
  // An elastic job that shrinks changes the world size and the plan between rounds.
  int world_size = spec_.world_size();
  auto plan = plan_hosts(opt_.hosts, spec_.nodes.procs_per_node, world_size);
  std::string self = opt_.local_binary.empty() ? this_executable() : opt_.local_binary;

  // data_mode: async: the parameter servers, placed on hosts before anything starts.
  const int servers = builtin && spec_.parallel.data_mode == "async" ? spec_.parallel.servers : 0;
  const std::vector<size_t> server_host = place_servers(plan, servers, spec_.parallel.server_hosts);
  // The address the servers of each host listen on: the host as ssh reaches it, so the workers
  // of every other host can connect; a fixed parallel.server_port must be free there.
  std::vector<std::string> server_bind(plan.size());
  for (int k = 0; k < servers; ++k) {
    const size_t h = server_host[static_cast<size_t>(k)];
    if (server_bind[h].empty())
      server_bind[h] = resolve_ipv4(ssh_target_hostname(opt_.ssh, plan[h].host));
  }
  check_server_ports(spec_.parallel.server_port, servers,
                     [&](int k) { return server_bind[server_host[static_cast<size_t>(k)]]; });

  // Preflight and shipping happen before anything else: a bad host stops the job here.
  std::string program = spec_.nodes.remote_ptrain.empty() ? self : spec_.nodes.remote_ptrain;
  if (spec_.nodes.ship_binary) {
    ShipPayload payload = ship_payload(self);
    std::vector<std::string> errors(plan.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < plan.size(); ++i)
      threads.emplace_back([&, i] {
        try {
          ship_to_host(opt_.ssh, plan[i].host, payload, opt_.preflight_timeout * 4);
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      });
    for (auto& t : threads) t.join();
    std::string bad;
    for (const auto& e : errors)
      if (!e.empty()) bad += (bad.empty() ? "" : "\n") + e;
    if (!bad.empty()) throw RemoteError("cannot ship ptrain; nothing was started\n" + bad);
    program = "~/.cache/ptrain/" + payload.sha256 + "/" + payload.run_path;
  }
  check_hosts(plan, program);

  std::string first_target = ssh_target_hostname(opt_.ssh, plan.front().host);
  std::string bind =
      spec_.rendezvous.bind.empty() ? route_source_address(first_target) : spec_.rendezvous.bind;

  PollWaiter waiter;  // before any thread starts
  bool tty = opt_.tty >= 0 ? opt_.tty != 0 : ::isatty(::fileno(opt_.out)) != 0;
  Console console(opt_.out, tty, parse_console_mode(spec_.logging.console), spec_.train.log_every);
  if (builtin) console.set_total_steps(spec_.train.steps);
  std::error_code ec;
  std::string root = std::filesystem::absolute(spec_.logging.dir, ec).string();
  const bool private_files = spec_.logging.mode == "private";
  apply_file_mode(spec_.logging.mode);
  // `ptrain launch --resume`: the same folder, so the trainer finds its checkpoints and the
  // logs, metrics and launcher.log continue where they ended.
  RunDir dir =
      opt_.resume_dir.empty() ? RunDir::create(root, spec_.name) : RunDir::open(opt_.resume_dir);
  if (!opt_.resume_dir.empty()) dir.log("resuming this run (ptrain launch --resume)");
  // env: values stay out of the copies (the workers get them in their environment).
  std::string spec_yaml = opt_.spec_yaml.empty() ? spec::to_yaml_redacted(spec_) : opt_.spec_yaml;
  dir.write_file("job.yaml", spec_yaml);
  if (spec_.logging.tensorboard && builtin) dir.enable_tensorboard();
  const std::string run_id = dir.path().substr(dir.path().find_last_of('/') + 1);
  if (!spec_.logging.mlflow.empty() && builtin)
    dir.enable_mlflow(spec_.logging.mlflow, spec_.name, run_id,
                      flatten_json(spec::to_json(spec::redact_env(spec_))));
  dir.log(fmt::format("job {}: {} worker(s) on {} host(s), run id {}", spec_.name, world_size,
                      plan.size(), run_id));
  std::vector<std::string> host_names;
  for (const auto& p : plan) host_names.push_back(p.host);

  EventQueue events(waiter);
  rendezvous::CoordinatorOptions co;
  co.bind = bind;
  co.port = spec_.rendezvous.port;
  co.token = rendezvous::make_token();
  co.world_size = world_size;
  co.extra_roles = servers;
  co.mesh = builtin ? rendezvous::MeshShape{spec_.parallel.data, spec_.parallel.tensor,
                                            spec_.parallel.pipeline}
                    : rendezvous::MeshShape{world_size, 1, 1};
  co.run_id = run_id;
  co.run_dir = dir.path();
  co.spec_yaml = spec_yaml;
  co.join_timeout = seconds_ms(spec_.rendezvous.timeout_s);
  co.heartbeat_timeout = seconds_ms(spec_.fault_tolerance.hang_timeout_s);
  // rendezvous.tls: made before the coordinator and declared before it, so it outlives it.
  std::vector<std::string> tls_addresses{bind};
  for (const auto& p : plan) tls_addresses.push_back(ssh_target_hostname(opt_.ssh, p.host));
  JobTls tls(spec_.rendezvous.tls, tls_addresses);
  if (tls.enabled()) dir.log("rendezvous.tls: mutual TLS on every gRPC channel");
  auto coordinator = std::make_unique<rendezvous::Coordinator>(co, events.coordinator_events(dir));
  try {
    coordinator->start();
  } catch (const Error& e) {
    dir.log(std::string("cannot start the coordinator: ") + e.what());
    Supervisor::write_start_failure(dir, spec_.name, world_size, host_names, e.exit_code(),
                                    std::string("cannot start the coordinator: ") + e.what());
    throw;
  }
  dir.log("coordinator listening on " + coordinator->address());
  console.message(fmt::format("ptrain: {} worker(s) on {} host(s), run folder {}", world_size,
                              plan.size(), dir.path()));

  std::string agent_yaml = spec_yaml;
  std::string shared_checkpoints;
  if (builtin && spec_.fault_tolerance.max_restarts > 0 && spec_.checkpoint.dir.empty()) {
    // A restarted round resumes from rank 0's checkpoints, but each agent gives its workers its
    // own host folder as RUN_DIR: every rank is pointed at <run>/hosts/<rank 0's host>/checkpoints.
    // Every rank reads the checkpoint itself, so across machines that folder must be on a shared
    // filesystem (true for loopback hosts); otherwise set checkpoint.dir to a shared path.
    // The folder stays the same when an elastic job shrinks (also when rank 0's host is lost).
    shared_checkpoints = agent_dir(dir.path(), plan.front().host) + "/checkpoints";
    spec::JobSpec agent_spec = spec_;
    agent_spec.checkpoint.dir = shared_checkpoints;
    agent_yaml = spec::to_yaml_redacted(agent_spec);
  }

  SshGroupOptions go;
  go.plan = plan;
  go.ssh = opt_.ssh;
  go.program = program;
  go.log_level = spec_.logging.level;
  go.run_dir = dir.path();
  go.world_size = world_size;
  for (int k = 0; k < servers; ++k)
    go.servers_of_host[static_cast<int>(server_host[static_cast<size_t>(k)])].push_back(k);
  go.setup = [&](size_t i, int round) {
    const HostPlan& p = plan[i];
    for (int r = p.first_rank; r < p.first_rank + p.procs; ++r) coordinator->expect(r, p.host);
    RemoteAgentSetup setup;
    AgentOptions& a = setup.agent;
    if (auto it = go.servers_of_host.find(static_cast<int>(i)); it != go.servers_of_host.end()) {
      for (int k : it->second) coordinator->expect(world_size + k, p.host);
      a.server_indices = it->second;
      a.server_argv = {program, "--log-level", spec_.logging.level, "param-server"};
      a.server_bind = server_bind[i];
    }
    a.node = p.host;
    a.node_rank = p.node_rank;
    a.num_nodes = static_cast<int>(plan.size());
    a.first_rank = p.first_rank;
    a.local_world_size = p.procs;
    a.world_size = world_size;
    a.argv = builtin
                 ? std::vector<std::string>{program, "--log-level", spec_.logging.level, "worker"}
                 : spec_.command;
    a.coordinator = coordinator->address();
    a.token = co.token;
    a.run_dir = dir.path();
    a.run_id = run_id;
    a.master_addr = first_target;
    a.master_port = 0;  // the agent of the rank-0 host picks a free one (agree_master_port)
    a.max_restarts = spec_.fault_tolerance.max_restarts;
    a.threads_per_proc = spec_.nodes.threads_per_proc;
    a.cuda = spec_.nodes.device == "cuda";
    a.extra_env = spec_.env;
    set_node_relay(spec_, a);
    setup.tls = tls.identity();  // the agent writes it for its workers
    setup.spec_yaml = agent_yaml;
    setup.round = round;
    setup.umask = private_files ? 077 : -1;
    setup.restore_umask = !builtin;
    setup.heartbeat_s = spec_.fault_tolerance.heartbeat_s;
    setup.coordinator_loss_s = 3 * spec_.fault_tolerance.heartbeat_s;
    setup.term_grace_s = spec_.fault_tolerance.term_grace_s;
    return setup;
  };
  for (const auto& [host, list] : go.servers_of_host)
    for (int k : list)
      dir.log(fmt::format("parameter server {} (rank {}) placed on {}, listening on {}", k,
                          world_size + k, plan[static_cast<size_t>(host)].host,
                          server_bind[static_cast<size_t>(host)]));
  // Elastic jobs: the job on the hosts it has left, or that came back (spec::reshape_for_hosts
  // of the job as given, so shrinking and growing back lead to the same shapes).
  if (spec_.nodes.min_nodes > 0) {
    go.reshape = [&](const std::vector<std::string>& names, bool dry_run) {
      std::vector<spec::HostSlots> next;
      for (const auto& h : opt_.hosts)
        if (std::find(names.begin(), names.end(), h.host) != names.end()) next.push_back(h);
      spec::Reshape r = spec::reshape_for_hosts(spec_, next);
      if (!r.ok) throw ConfigError(r.reason);
      const int new_world = r.spec.world_size();
      if (dry_run) return std::make_pair(std::vector<HostPlan>{}, new_world);
      std::string yaml = spec::to_yaml_redacted(r.spec);
      coordinator->reshape(new_world,
                           builtin
                               ? rendezvous::MeshShape{r.spec.parallel.data, r.spec.parallel.tensor,
                                                       r.spec.parallel.pipeline}
                               : rendezvous::MeshShape{new_world, 1, 1},
                           yaml);
      spec::JobSpec agent_spec = r.spec;
      if (!shared_checkpoints.empty()) agent_spec.checkpoint.dir = shared_checkpoints;
      agent_yaml = spec::to_yaml_redacted(agent_spec);
      plan = plan_hosts(next, r.spec.nodes.procs_per_node, new_world);
      first_target = ssh_target_hostname(opt_.ssh, plan.front().host);  // MASTER_ADDR
      world_size = new_world;
      dir.log(fmt::format("elastic: {} worker(s) on {} host(s), data {} x grad_accum {}", new_world,
                          plan.size(), r.spec.parallel.data, r.spec.train.grad_accum));
      return std::make_pair(plan, new_world);
    };
    // A left-out host is taken back once it passes the preflight again.
    go.probe = [this, program](const std::string& host) {
      PreflightOptions po = preflight_options(program);
      po.timeout = std::min(po.timeout, Millis(5000));
      const int gpus = spec_.nodes.device == "cuda" ? spec_.nodes.procs_per_node : 0;
      return preflight({host}, opt_.ssh, {gpus}, po).front().ok;
    };
  }
  SshWorkerGroup group(go);
  CoordinatorControl control(*coordinator);
  SupervisorOptions so = supervisor_options(spec_);
  so.tick = Millis(tty ? 250 : 1000);
  Supervisor supervisor(so, group, control, waiter, events, console, dir);
  JobResult result = supervisor.run();
  return result;
}

}  // namespace ptrain::launch
