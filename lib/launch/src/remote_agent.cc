#include "ptrain/launch/remote_agent.h"

#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "agent_setup.pb.h"
#include "ptrain/core/error.h"
#include "ptrain/launch/job_tls.h"
#include "ptrain/launch/launcher.h"
#include "ptrain/launch/local_group.h"
#include "ptrain/launch/supervisor.h"
#include "ptrain/rendezvous/client.h"

namespace ptrain::launch {

namespace {

std::string escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string unescape(const std::string& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\\' && i + 1 < v.size()) {
      out += v[i + 1] == 'n' ? '\n' : v[i + 1];
      ++i;
    } else {
      out += v[i];
    }
  }
  return out;
}

void write_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the launcher is gone: nothing to tell
    done += static_cast<size_t>(n);
  }
}

int to_int(const std::string& key, const std::string& v) {
  try {
    size_t used = 0;
    int x = std::stoi(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw ConfigError(fmt::format("agent setup: `{}` is not a number: `{}`", key, v));
}

}  // namespace

std::string agent_dir(const std::string& run_dir, const std::string& node) {
  return run_dir + "/hosts/" + node;
}

namespace {
constexpr const char* kSetupHeader = "ptrain-agent-setup";
constexpr size_t kMaxSetupBytes = 64u << 20;
}  // namespace

std::string encode_agent_setup(const RemoteAgentSetup& s) {
  const AgentOptions& a = s.agent;
  proto::AgentSetup m;
  m.set_token(a.token);
  m.set_coordinator(a.coordinator);
  m.set_node(a.node);
  m.set_node_rank(a.node_rank);
  m.set_num_nodes(a.num_nodes);
  m.set_first_rank(a.first_rank);
  m.set_local_world_size(a.local_world_size);
  m.set_world_size(a.world_size);
  m.set_run_dir(a.run_dir);
  m.set_run_id(a.run_id);
  m.set_master_addr(a.master_addr);
  m.set_master_port(a.master_port);
  m.set_max_restarts(a.max_restarts);
  m.set_threads_per_proc(a.threads_per_proc);
  m.set_cuda(a.cuda);
  for (const auto& arg : a.argv) m.add_argv(arg);
  for (const auto& [k, v] : a.extra_env) m.add_env(k + "=" + v);
  m.set_heartbeat_s(s.heartbeat_s);
  m.set_node_relay_heartbeat_ms(a.node_relay_heartbeat.count());
  m.set_relay_tree_fanout(a.relay_tree_fanout);
  m.set_relay_tree_timeout_ms(a.relay_tree_timeout.count());
  m.set_coordinator_loss_s(s.coordinator_loss_s);
  m.set_term_grace_s(s.term_grace_s);
  m.set_round(s.round);
  m.set_umask(s.umask);
  m.set_restore_umask(s.restore_umask);
  m.set_spec_yaml(s.spec_yaml);
  for (int i : a.server_indices) m.add_server_indices(i);
  for (const auto& arg : a.server_argv) m.add_server_argv(arg);
  m.set_server_bind(a.server_bind);
  if (s.tls) {
    m.set_tls_ca(s.tls->ca_pem);
    m.set_tls_cert(s.tls->cert_pem);
    m.set_tls_key(s.tls->key_pem);
  }
  std::string bytes;
  PTRAIN_CHECK(m.SerializeToString(&bytes), "cannot serialize the agent setup");
  return fmt::format("{} {}\n", kSetupHeader, bytes.size()) + bytes;
}

std::string add_agent_setup_tls(const std::string& encoded, const rendezvous::TlsIdentity& tls) {
  const std::string prefix = std::string(kSetupHeader) + " ";
  const size_t nl = encoded.find('\n');
  proto::AgentSetup m;
  if (encoded.rfind(prefix, 0) != 0 || nl == std::string::npos ||
      !m.ParseFromArray(encoded.data() + nl + 1, static_cast<int>(encoded.size() - nl - 1)))
    throw ConfigError("node relay: the agent setup in the store does not parse",
                      "every node must run the same ptrain version");
  m.set_tls_ca(tls.ca_pem);
  m.set_tls_cert(tls.cert_pem);
  m.set_tls_key(tls.key_pem);
  std::string bytes;
  PTRAIN_CHECK(m.SerializeToString(&bytes), "cannot serialize the agent setup");
  return fmt::format("{} {}\n", kSetupHeader, bytes.size()) + bytes;
}

RemoteAgentSetup read_agent_setup(int fd, Millis timeout) {
  Deadline deadline(timeout);
  std::string buf;
  auto read_more = [&] {
    pollfd p{fd, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(deadline.remaining().count()) + 1);
    if (n == 0 || deadline.expired())
      throw TimeoutError(
          fmt::format("agent: no setup on stdin within {} s", timeout.count() / 1000),
          "`ptrain agent` is started by `ptrain launch`, not by hand");
    char chunk[65536];
    // Read no further than the setup: what follows (commands) is the main loop's.
    size_t want = sizeof chunk;
    ssize_t got = ::read(fd, chunk, want);
    if (got < 0 && errno == EINTR) return;
    if (got <= 0) throw ConfigError("agent: stdin ended before the setup was complete");
    buf.append(chunk, static_cast<size_t>(got));
  };
  size_t nl;
  while ((nl = buf.find('\n')) == std::string::npos) {
    if (buf.size() > 256) break;
    read_more();
  }
  std::string header = nl == std::string::npos ? buf : buf.substr(0, nl);
  std::string prefix = std::string(kSetupHeader) + " ";
  size_t bytes = 0;
  if (header.rfind(prefix, 0) == 0)
    bytes = static_cast<size_t>(to_int("size", header.substr(prefix.size())));
  if (header.rfind(prefix, 0) != 0 || bytes > kMaxSetupBytes)
    throw ConfigError("agent: stdin does not start with a setup message",
                      "the launcher and the agent must be the same ptrain version");
  while (buf.size() - (nl + 1) < bytes) read_more();
  proto::AgentSetup m;
  if (!m.ParseFromArray(buf.data() + nl + 1, static_cast<int>(bytes)))
    throw ConfigError("agent: the setup message does not parse",
                      "the launcher and the agent must be the same ptrain version");
  RemoteAgentSetup s;
  AgentOptions& a = s.agent;
  a.token = m.token();
  a.coordinator = m.coordinator();
  a.node = m.node();
  a.node_rank = m.node_rank();
  a.num_nodes = m.num_nodes();
  a.first_rank = m.first_rank();
  a.local_world_size = m.local_world_size();
  a.world_size = m.world_size();
  a.run_dir = m.run_dir();
  a.run_id = m.run_id();
  a.master_addr = m.master_addr();
  a.master_port = m.master_port();
  a.max_restarts = m.max_restarts();
  a.threads_per_proc = m.threads_per_proc();
  a.cuda = m.cuda();
  a.argv.assign(m.argv().begin(), m.argv().end());
  for (const auto& kv : m.env()) {
    const size_t eq = kv.find('=');
    a.extra_env[kv.substr(0, eq)] = eq == std::string::npos ? "" : kv.substr(eq + 1);
  }
  s.heartbeat_s = m.heartbeat_s();
  a.node_relay_heartbeat = Millis(m.node_relay_heartbeat_ms());
  a.relay_tree_fanout = m.relay_tree_fanout();
  a.relay_tree_timeout = Millis(m.relay_tree_timeout_ms());
  s.coordinator_loss_s = m.coordinator_loss_s();
  s.term_grace_s = m.term_grace_s();
  s.round = m.round();
  s.umask = m.umask();
  s.restore_umask = m.restore_umask();
  s.spec_yaml = m.spec_yaml();
  a.server_indices.assign(m.server_indices().begin(), m.server_indices().end());
  a.server_argv.assign(m.server_argv().begin(), m.server_argv().end());
  a.server_bind = m.server_bind();
  if (!m.tls_ca().empty() || !m.tls_cert().empty() || !m.tls_key().empty())
    s.tls = rendezvous::TlsIdentity{m.tls_ca(), m.tls_cert(), m.tls_key()};
  if (a.token.empty() || a.coordinator.empty() || a.argv.empty() || a.run_dir.empty())
    throw ConfigError("agent: the setup lacks the token, coordinator, run folder or program");
  // Whatever followed the setup already (a signal command) is not expected this early: the
  // launcher sends commands only after the agent reported its workers.
  return s;
}

std::string agent_signal_command(int sig) {
  return fmt::format("signal {}\n", sig);
}

std::string format_started(int rank, pid_t pid) {
  return fmt::format("started {} {}\n", rank, pid);
}

std::string format_exit(const WorkerExit& e) {
  return fmt::format("exit {} {} {} {} {}\n", e.rank, e.pid, e.status.code, e.status.signal,
                     escape(e.spawn_error));
}

AgentMessage parse_agent_message(const std::string& line) {
  AgentMessage m;
  m.text = line;
  std::istringstream in(line);
  std::string kind;
  in >> kind;
  if (kind == "started" && (in >> m.rank >> m.pid)) {
    m.kind = AgentMessage::Kind::Started;
  } else if (kind == "exit" && (in >> m.rank >> m.pid >> m.status.code >> m.status.signal)) {
    m.kind = AgentMessage::Kind::Exit;
    std::string rest;
    std::getline(in, rest);
    if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
    m.text = unescape(rest);
  } else if (kind == "done") {
    m.kind = AgentMessage::Kind::Done;
  }
  return m;
}

int remote_agent_main(int in_fd, int out_fd) {
  PollWaiter waiter;  // the signals, as the launchers read them

  RemoteAgentSetup s = read_agent_setup(in_fd, kDefaultAgentSetupTimeout);
  if (s.umask >= 0) {  // logging.mode: private
    mode_t user = ::umask(static_cast<mode_t>(s.umask));
    if (s.restore_umask) s.agent.child_umask = static_cast<int>(user);
  }
  const std::string node = s.agent.node;
  auto say = [&](const std::string& text) {
    std::fprintf(stderr, "ptrain agent on %s: %s\n", node.c_str(), text.c_str());
    std::fflush(stderr);
  };
  std::string dir = agent_dir(s.agent.run_dir, node);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw IoError(fmt::format("agent on {}: cannot create {}: {}", node, dir, ec.message()));
  {
    std::ofstream job(dir + "/job.yaml", std::ios::trunc);
    job << s.spec_yaml;
    if (!job) throw IoError(fmt::format("agent on {}: cannot write {}/job.yaml", node, dir));
  }
  s.agent.run_dir = dir;
  // rendezvous.tls: this agent's channel and its workers' use the job's certificate; the key
  // files go when the agent does.
  rendezvous::set_process_tls(s.tls);
  struct TlsFiles {
    std::string dir;
    ~TlsFiles() {
      std::error_code e;
      if (!dir.empty()) std::filesystem::remove_all(dir, e);
    }
  } tls_files;
  if (s.tls) {
    tls_files.dir = tls_dir(dir);
    rendezvous::write_tls_files(tls_files.dir, *s.tls);
    s.agent.extra_env[rendezvous::kTlsDirEnv] = tls_files.dir;
  }
  // A shipped binary is named relative to the home folder.
  for (auto* argv : {&s.agent.argv, &s.agent.server_argv}) {
    if (argv->empty()) continue;
    std::string& program = argv->front();
    if (program.rfind("~/", 0) == 0 && std::getenv("HOME"))
      program = std::string(std::getenv("HOME")) + program.substr(1);
  }

  Millis hb_interval(std::max<int64_t>(100, static_cast<int64_t>(s.heartbeat_s * 1000)));
  Millis loss(static_cast<int64_t>(s.coordinator_loss_s * 1000));
  rendezvous::CoordinatorClient client(s.agent.coordinator, s.agent.token, Millis(10000),
                                       hb_interval);
  auto store = client.store();
  // MASTER_PORT: the agent of the rank-0 host finds a free port there and publishes it; every
  // other agent waits for it, so all ranks get the same checked port.
  s.agent.master_port =
      agree_master_port(*store, s.agent.node_rank, s.agent.master_addr, s.round, Millis(30000));

  s.agent.watchdog_program = this_executable();
  LocalWorkerGroup group(s.agent);
  std::vector<rendezvous::LogLineView> pending;
  group.agent().on_line = [&](const WorkerLine& l) {
    pending.push_back({node, l.rank, l.time_us, l.is_stderr, l.text});
  };
  bool coordinator_ok = true;
  auto flush_logs = [&] {
    if (pending.empty() || !coordinator_ok) return;
    try {
      client.send_logs(pending);
    } catch (const Error& e) {
      coordinator_ok = false;  // the lines stay in the host's rank logs
    }
    pending.clear();
  };
  // The agent reports; the launcher's supervisor decides.
  auto report = [&] {
    for (const auto& e : group.poll()) {
      if (e.kind == GroupEvent::Kind::Started) write_all(out_fd, format_started(e.rank, e.pid));
      if (e.kind == GroupEvent::Kind::Exited)
        write_all(out_fd, format_exit({e.rank, e.pid, e.status, e.text}));
    }
  };

  group.start(s.round);
  auto last_ok = Clock::now();
  auto next_hb = Clock::now() + hb_interval;
  auto last_flush = Clock::now();
  GraceTimer grace(Millis(static_cast<int64_t>(s.term_grace_s * 1000)));
  bool stopping = false;
  std::string in_buf;
  bool stdin_open = true;
  auto stop = [&](const std::string& why) {
    if (!stopping) say(fmt::format("{}: stopping {} worker(s)", why, group.running()));
    stopping = true;
    group.signal(SIGTERM);
    grace.arm(Clock::now());
  };

  report();
  while (group.running() > 0) {
    std::vector<pollfd> extra;
    if (stdin_open) extra.push_back({in_fd, POLLIN, 0});
    auto now = Clock::now();
    Millis wait = std::chrono::duration_cast<Millis>(next_hb - now);
    if (!pending.empty()) wait = std::min(wait, Millis(100));
    if (grace.deadline())
      wait = std::min(wait, std::chrono::duration_cast<Millis>(*grace.deadline() - now));
    wait = std::clamp(wait, Millis(0), Millis(1000)) + Millis(1);
    for (int sig : waiter.wait(group, wait, extra)) stop("received " + signal_name(sig));
    if (stdin_open && !extra.empty() && extra[0].revents) {
      char chunk[4096];
      ssize_t got = ::read(in_fd, chunk, sizeof chunk);
      if (got > 0) {
        in_buf.append(chunk, static_cast<size_t>(got));
        size_t nl;
        while ((nl = in_buf.find('\n')) != std::string::npos) {
          std::string cmd = in_buf.substr(0, nl);
          in_buf.erase(0, nl + 1);
          int sig = 0;
          if (std::sscanf(cmd.c_str(), "signal %d", &sig) == 1 && sig > 0 && sig < NSIG) {
            group.signal(sig);
            if (sig != SIGKILL) grace.arm(Clock::now());
            stopping = true;
          }
        }
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        stdin_open = false;
        stop("the ssh session ended (stdin closed)");
      }
    }
    report();
    now = Clock::now();
    if (pending.size() >= 256 || now - last_flush >= Millis(100)) {
      flush_logs();
      last_flush = now;
    }
    if (now >= next_hb) {
      next_hb = now + hb_interval;
      try {
        store->check({"ptrain/agent-alive"});
        last_ok = Clock::now();
        coordinator_ok = true;
      } catch (const Error& e) {
        coordinator_ok = false;
        if (Clock::now() - last_ok >= loss && !stopping)
          stop(fmt::format("the coordinator at {} stopped answering ({})", s.agent.coordinator,
                           e.what()));
      }
    }
    if (grace.due(Clock::now())) group.signal(SIGKILL);
  }
  group.drain(Millis(1000));
  report();
  flush_logs();
  write_all(out_fd, "done\n");
  return 0;
}

int agree_master_port(rendezvous::Store& store, int node_rank, const std::string& master_addr,
                      int round, Millis timeout) {
  const std::string key = fmt::format("ptrain/master_port/round-{}", round);
  if (node_rank == 0) {
    int port = free_tcp_port(master_addr);
    store.set(key, std::to_string(port));
    return port;
  }
  std::string value;
  try {
    value = store.get(key, timeout);
  } catch (const TimeoutError&) {
    throw TimeoutError(
        fmt::format("agent: the rank-0 host published no MASTER_PORT within {} s",
                    timeout.count() / 1000),
        "check that the agent on the first host started (its lines in launcher.log)");
  }
  return std::stoi(value);
}

}  // namespace ptrain::launch
