#include "ptrain/launch/remote_agent.h"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "ptrain/core/error.h"
#include "ptrain/launch/job_tls.h"
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

std::string encode_agent_setup(const RemoteAgentSetup& s) {
  const AgentOptions& a = s.agent;
  std::string out;
  auto put = [&](const std::string& k, const std::string& v) { out += k + " " + escape(v) + "\n"; };
  put("token", a.token);
  put("coordinator", a.coordinator);
  put("node", a.node);
  put("node_rank", std::to_string(a.node_rank));
  put("num_nodes", std::to_string(a.num_nodes));
  put("first_rank", std::to_string(a.first_rank));
  put("local_world_size", std::to_string(a.local_world_size));
  put("world_size", std::to_string(a.world_size));
  put("run_dir", a.run_dir);
  put("run_id", a.run_id);
  put("master_addr", a.master_addr);
  put("master_port", std::to_string(a.master_port));
  put("max_restarts", std::to_string(a.max_restarts));
  put("threads_per_proc", std::to_string(a.threads_per_proc));
  put("cuda", a.cuda ? "1" : "0");
  put("heartbeat_ms", std::to_string(static_cast<int64_t>(s.heartbeat_s * 1000)));
  put("coordinator_loss_ms", std::to_string(static_cast<int64_t>(s.coordinator_loss_s * 1000)));
  put("term_grace_ms", std::to_string(static_cast<int64_t>(s.term_grace_s * 1000)));
  put("round", std::to_string(s.round));
  put("umask", std::to_string(s.umask));
  put("restore_umask", s.restore_umask ? "1" : "0");
  if (s.tls) {
    put("tls_ca", s.tls->ca_pem);
    put("tls_cert", s.tls->cert_pem);
    put("tls_key", s.tls->key_pem);
  }
  for (const auto& arg : a.argv) put("argv", arg);
  for (const auto& [k, v] : a.extra_env) put("env", k + "=" + v);
  put("spec_bytes", std::to_string(s.spec_yaml.size()));
  out += "end\n";
  out += s.spec_yaml;
  return out;
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
    ssize_t got = ::read(fd, chunk, sizeof chunk);
    if (got < 0 && errno == EINTR) return;
    if (got <= 0) throw ConfigError("agent: stdin ended before the setup was complete");
    buf.append(chunk, static_cast<size_t>(got));
  };
  RemoteAgentSetup s;
  AgentOptions& a = s.agent;
  size_t spec_bytes = 0;
  size_t pos = 0;
  while (true) {
    size_t nl = buf.find('\n', pos);
    if (nl == std::string::npos) {
      if (buf.size() > (1u << 20)) throw ConfigError("agent: setup header too long");
      read_more();
      continue;
    }
    std::string line = buf.substr(pos, nl - pos);
    pos = nl + 1;
    if (line == "end") break;
    size_t sp = line.find(' ');
    std::string k = line.substr(0, sp);
    std::string v = sp == std::string::npos ? "" : unescape(line.substr(sp + 1));
    if (k == "token")
      a.token = v;
    else if (k == "coordinator")
      a.coordinator = v;
    else if (k == "node")
      a.node = v;
    else if (k == "node_rank")
      a.node_rank = to_int(k, v);
    else if (k == "num_nodes")
      a.num_nodes = to_int(k, v);
    else if (k == "first_rank")
      a.first_rank = to_int(k, v);
    else if (k == "local_world_size")
      a.local_world_size = to_int(k, v);
    else if (k == "world_size")
      a.world_size = to_int(k, v);
    else if (k == "run_dir")
      a.run_dir = v;
    else if (k == "run_id")
      a.run_id = v;
    else if (k == "master_addr")
      a.master_addr = v;
    else if (k == "master_port")
      a.master_port = to_int(k, v);
    else if (k == "max_restarts")
      a.max_restarts = to_int(k, v);
    else if (k == "threads_per_proc")
      a.threads_per_proc = to_int(k, v);
    else if (k == "cuda")
      a.cuda = v == "1";
    else if (k == "heartbeat_ms")
      s.heartbeat_s = to_int(k, v) / 1000.0;
    else if (k == "coordinator_loss_ms")
      s.coordinator_loss_s = to_int(k, v) / 1000.0;
    else if (k == "term_grace_ms")
      s.term_grace_s = to_int(k, v) / 1000.0;
    else if (k == "round")
      s.round = to_int(k, v);
    else if (k == "umask")
      s.umask = to_int(k, v);
    else if (k == "restore_umask")
      s.restore_umask = v == "1";
    else if (k == "tls_ca" || k == "tls_cert" || k == "tls_key") {
      if (!s.tls) s.tls.emplace();
      (k == "tls_ca" ? s.tls->ca_pem : k == "tls_cert" ? s.tls->cert_pem : s.tls->key_pem) = v;
    } else if (k == "argv")
      a.argv.push_back(v);
    else if (k == "env") {
      size_t eq = v.find('=');
      a.extra_env[v.substr(0, eq)] = eq == std::string::npos ? "" : v.substr(eq + 1);
    } else if (k == "spec_bytes")
      spec_bytes = static_cast<size_t>(to_int(k, v));
    else
      throw ConfigError(fmt::format("agent: unknown setup key `{}`", k),
                        "the launcher and the agent must be the same ptrain version");
  }
  while (buf.size() - pos < spec_bytes) read_more();
  s.spec_yaml = buf.substr(pos, spec_bytes);
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
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, sig);
  PTRAIN_CHECK(::pthread_sigmask(SIG_BLOCK, &set, nullptr) == 0);
  int sfd = PTRAIN_SYSCALL(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  struct FdGuard {
    int fd;
    ~FdGuard() { ::close(fd); }
  } sfd_guard{sfd};

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
  std::string& program = s.agent.argv[0];
  if (program.rfind("~/", 0) == 0 && std::getenv("HOME"))
    program = std::string(std::getenv("HOME")) + program.substr(1);

  Millis hb_interval(std::max<int64_t>(100, static_cast<int64_t>(s.heartbeat_s * 1000)));
  Millis loss(static_cast<int64_t>(s.coordinator_loss_s * 1000));
  rendezvous::CoordinatorClient client(s.agent.coordinator, s.agent.token, Millis(10000),
                                       hb_interval);
  auto store = client.store();

  s.agent.watchdog_program = this_executable();
  Agent agent(s.agent);
  std::vector<rendezvous::LogLineView> pending;
  agent.on_line = [&](const WorkerLine& l) {
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

  agent.spawn_all(s.round);
  for (int r = s.agent.first_rank; r < s.agent.first_rank + s.agent.local_world_size; ++r)
    if (agent.pid_of(r) > 0) write_all(out_fd, format_started(r, agent.pid_of(r)));

  auto last_ok = Clock::now();
  auto next_hb = Clock::now() + hb_interval;
  auto last_flush = Clock::now();
  std::optional<Clock::time_point> kill_at;
  bool stopping = false;
  std::string in_buf;
  bool stdin_open = true;
  auto stop = [&](const std::string& why) {
    if (!stopping) say(fmt::format("{}: stopping {} worker(s)", why, agent.running()));
    stopping = true;
    agent.signal_all(SIGTERM);
    agent.signal_all(SIGCONT);
    if (!kill_at) kill_at = Clock::now() + Millis(static_cast<int64_t>(s.term_grace_s * 1000));
  };
  auto report = [&](const std::vector<WorkerExit>& exits) {
    for (const auto& e : exits) write_all(out_fd, format_exit(e));
  };

  report(agent.reap());
  while (agent.running() > 0) {
    std::vector<pollfd> fds{{sfd, POLLIN, 0}};
    if (stdin_open) fds.push_back({in_fd, POLLIN, 0});
    size_t first_worker_fd = fds.size();
    agent.add_poll_fds(fds);
    auto now = Clock::now();
    Millis wait = std::chrono::duration_cast<Millis>(next_hb - now);
    if (!pending.empty()) wait = std::min(wait, Millis(100));
    if (kill_at) wait = std::min(wait, std::chrono::duration_cast<Millis>(*kill_at - now));
    wait = std::clamp(wait, Millis(0), Millis(1000));
    int n = ::poll(fds.data(), fds.size(), static_cast<int>(wait.count()) + 1);
    if (n < 0 && errno != EINTR) PTRAIN_SYSCALL(n);
    if (n > 0 && (fds[0].revents & POLLIN)) {
      signalfd_siginfo si;
      while (::read(sfd, &si, sizeof si) == sizeof si)
        if (si.ssi_signo != SIGCHLD)
          stop("received " + signal_name(static_cast<int>(si.ssi_signo)));
    }
    if (n > 0 && stdin_open && fds[1].revents) {
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
            agent.signal_all(sig);
            agent.signal_all(SIGCONT);
            if (sig != SIGKILL && !kill_at)
              kill_at = Clock::now() + Millis(static_cast<int64_t>(s.term_grace_s * 1000));
            stopping = true;
          }
        }
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        stdin_open = false;
        stop("the ssh session ended (stdin closed)");
      }
    }
    if (n > 0) {
      std::vector<pollfd> worker_fds(fds.begin() + static_cast<long>(first_worker_fd), fds.end());
      agent.handle_ready(worker_fds);
    }
    report(agent.reap());
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
    if (kill_at && Clock::now() >= *kill_at) {
      agent.signal_all(SIGKILL);
      kill_at.reset();
    }
  }
  agent.drain(Millis(1000));
  report(agent.reap());
  flush_logs();
  write_all(out_fd, "done\n");
  return 0;
}

}  // namespace ptrain::launch
