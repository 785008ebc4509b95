#include "ptrain/launch/launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ptrain/core/error.h"
#include "ptrain/core/log.h"
#include "ptrain/launch/console.h"
#include "ptrain/launch/job_tls.h"
#include "ptrain/launch/local_group.h"
#include "ptrain/launch/mlflow.h"
#include "ptrain/launch/node_relay_policy.h"
#include "ptrain/launch/run_dir.h"
#include "ptrain/launch/supervisor.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/token.h"
#include "ptrain/spec/spec.h"

namespace ptrain::launch {

namespace {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  return buf;
}

}  // namespace

int free_tcp_port(const std::string& addr) {
  int fd = PTRAIN_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_in sa {};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;
  if (::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1)
    sa.sin_addr.s_addr = htonl(INADDR_ANY);  // a host name: free on every address
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    socklen_t len = sizeof sa;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0) port = ntohs(sa.sin_port);
  }
  ::close(fd);
  if (port == 0) throw IoError(fmt::format("cannot find a free port on {} for MASTER_PORT", addr));
  return port;
}

bool tcp_port_taken(const std::string& addr, int port) {
  int fd = PTRAIN_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_in sa {};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1)
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool taken = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
  ::close(fd);
  return taken;
}

void check_server_ports(int server_port, int servers,
                        const std::function<std::string(int)>& address_of) {
  if (server_port <= 0) return;
  for (int i = 0; i < servers; ++i) {
    const std::string addr = address_of(i);
    const int port = server_port + i;
    if (port > 65535)
      throw ConfigError(fmt::format("parallel.server_port: {} + {} servers passes port 65535",
                                    server_port, servers),
                        "choose a lower server_port, or 0 for kernel-chosen ports");
    if (tcp_port_taken(addr, port))
      throw ConfigError(
          fmt::format("parallel.server_port: port {} on {} (parameter server {}) is taken", port,
                      addr, i),
          "choose a free range (server i listens on server_port + i), or server_port: 0 for "
          "kernel-chosen ports");
  }
}

class Launcher::Impl {
 public:
  Impl(spec::JobSpec spec, LauncherOptions options)
      : spec_(std::move(spec)), opt_(std::move(options)) {}
  JobResult run();

 private:
  spec::JobSpec spec_;
  LauncherOptions opt_;
};

Launcher::Launcher(spec::JobSpec spec, LauncherOptions options)
    : impl_(std::make_unique<Impl>(std::move(spec), std::move(options))) {}
Launcher::~Launcher() = default;
JobResult Launcher::run() {
  return impl_->run();
}

JobResult Launcher::Impl::run() {
  PollWaiter waiter;  // before any thread starts
  const std::string node = host_name();
  const bool builtin = !spec_.launcher_only();
  const int world_size = spec_.world_size();  // `run` starts every rank on this machine
  PTRAIN_CHECK(world_size >= 1, "world size {}", world_size);
  // data_mode: async with parallel.server_port: the servers' ports must be free.
  const int servers = builtin && spec_.parallel.data_mode == "async" ? spec_.parallel.servers : 0;
  check_server_ports(spec_.parallel.server_port, servers,
                     [](int) { return std::string("127.0.0.1"); });

  bool tty = opt_.tty >= 0 ? opt_.tty != 0 : ::isatty(::fileno(opt_.out)) != 0;
  Console console(opt_.out, tty, parse_console_mode(spec_.logging.console), spec_.train.log_every);
  if (builtin) console.set_total_steps(spec_.train.steps);

  // logging.mode: private from here on every folder is 0700 and every file 0600.
  const mode_t user_umask = apply_file_mode(spec_.logging.mode);
  // `ptrain run --resume`: the same folder, so the trainer finds its checkpoints and the logs,
  // metrics and launcher.log continue where they ended.
  RunDir dir = opt_.resume_dir.empty() ? RunDir::create(spec_.logging.dir, spec_.name)
                                       : RunDir::open(opt_.resume_dir);
  if (!opt_.resume_dir.empty()) dir.log("resuming this run (ptrain run --resume)");
  // env: values stay out of the copies (the workers get them in their environment).
  std::string spec_yaml = opt_.spec_yaml.empty() ? spec::to_yaml_redacted(spec_) : opt_.spec_yaml;
  dir.write_file("job.yaml", spec_yaml);
  if (spec_.logging.tensorboard && builtin) dir.enable_tensorboard();
  const std::string run_id = dir.path().substr(dir.path().find_last_of('/') + 1);
  if (!spec_.logging.mlflow.empty() && builtin)
    dir.enable_mlflow(spec_.logging.mlflow, spec_.name, run_id,
                      flatten_json(spec::to_json(spec::redact_env(spec_))));
  dir.log(
      fmt::format("job {}: {} worker(s) on {}, run id {}", spec_.name, world_size, node, run_id));

  EventQueue events(waiter);
  rendezvous::CoordinatorOptions co;
  co.bind = spec_.rendezvous.bind.empty() ? "127.0.0.1" : spec_.rendezvous.bind;
  co.port = spec_.rendezvous.port;
  co.token = rendezvous::make_token();
  co.world_size = world_size;
  // data_mode: async: the parameter servers join as ranks world_size .. world_size + servers - 1.
  co.extra_roles = servers;
  co.mesh = builtin ? rendezvous::MeshShape{spec_.parallel.data, spec_.parallel.tensor,
                                            spec_.parallel.pipeline}
                    : rendezvous::MeshShape{world_size, 1, 1};
  co.run_id = run_id;
  co.run_dir = dir.path();
  co.spec_yaml = spec_yaml;
  co.join_timeout = Millis(static_cast<int64_t>(spec_.rendezvous.timeout_s * 1000));
  co.heartbeat_timeout = Millis(static_cast<int64_t>(spec_.fault_tolerance.hang_timeout_s * 1000));
  // rendezvous.tls: made before the coordinator and declared before it, so it outlives it.
  JobTls tls(spec_.rendezvous.tls, std::vector<std::string>{co.bind});
  if (tls.enabled()) dir.log("rendezvous.tls: mutual TLS on every gRPC channel");
  // Declared after `dir` and `events`, so it stops (and its threads with it) before they go.
  auto coordinator = std::make_unique<rendezvous::Coordinator>(co, events.coordinator_events(dir));
  try {
    coordinator->start();
  } catch (const Error& e) {
    dir.log(std::string("cannot start the coordinator: ") + e.what());
    Supervisor::write_start_failure(dir, spec_.name, world_size, {node}, e.exit_code(),
                                    std::string("cannot start the coordinator: ") + e.what());
    throw;
  }
  dir.log("coordinator listening on " + coordinator->address());

  AgentOptions ao;
  ao.node = node;
  std::string exe = opt_.worker_program.empty() ? this_executable() : opt_.worker_program;
  ao.watchdog_program = exe;
  ao.local_world_size = world_size;
  ao.world_size = world_size;
  if (builtin) {
    ao.argv = {exe, "--log-level", spec_.logging.level, "worker"};
    ao.servers = servers;
    ao.server_argv = {exe, "--log-level", spec_.logging.level, "param-server"};
    set_node_relay(spec_, ao);
  } else {
    ao.argv = spec_.command;
    ao.child_umask = static_cast<int>(user_umask);  // the user's program, the user's umask
  }
  ao.coordinator = coordinator->address();
  ao.token = co.token;
  ao.run_dir = dir.path();
  ao.run_id = run_id;
  ao.master_addr = "127.0.0.1";
  ao.master_port = free_tcp_port(ao.master_addr);
  ao.max_restarts = spec_.fault_tolerance.max_restarts;
  ao.threads_per_proc = spec_.nodes.threads_per_proc;
  ao.cuda = spec_.nodes.device == "cuda";
  ao.extra_env = spec_.env;
  tls.install(dir.path(), ao.extra_env);
  LocalWorkerGroup group(ao);
  group.agent().on_line = [&console](const WorkerLine& l) {
    console.worker_line(l.rank, "", l.is_stderr, l.text);
  };
  for (int r = 0; r < world_size + servers; ++r) coordinator->expect(r, node);

  console.message(fmt::format("ptrain: {} worker(s), run folder {}", world_size, dir.path()));
  CoordinatorControl control(*coordinator);
  SupervisorOptions so = supervisor_options(spec_);
  so.tick = Millis(tty ? 250 : 1000);
  Supervisor supervisor(so, group, control, waiter, events, console, dir);
  JobResult result = supervisor.run();
  coordinator.reset();
  return result;
}

SupervisorOptions supervisor_options(const spec::JobSpec& spec) {
  SupervisorOptions o;
  o.world_size = spec.world_size();
  o.builtin = !spec.launcher_only();
  o.servers = o.builtin && spec.parallel.data_mode == "async" ? spec.parallel.servers : 0;
  o.total_steps = o.builtin ? spec.train.steps : 0;
  o.max_restarts = spec.fault_tolerance.max_restarts;
  o.term_grace = Millis(static_cast<int64_t>(spec.fault_tolerance.term_grace_s * 1000));
  o.term_grace_s = spec.fault_tolerance.term_grace_s;
  o.join_timeout = Millis(static_cast<int64_t>(spec.rendezvous.timeout_s * 1000));
  o.rendezvous_timeout_s = spec.rendezvous.timeout_s;
  o.name = spec.name;
  o.elastic =
      spec.nodes.min_nodes > 0 && spec.nodes.min_nodes < static_cast<int>(spec.nodes.hosts.size());
  o.checkpoints = spec.checkpoint.every > 0;
  return o;
}

}  // namespace ptrain::launch
