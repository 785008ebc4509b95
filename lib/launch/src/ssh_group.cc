#include "ptrain/launch/ssh_group.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "ptrain/core/error.h"
#include "ptrain/launch/run_dir.h"

extern char** environ;

namespace ptrain::launch {

// One host's ssh session running `ptrain agent`.
struct SshWorkerGroup::Session {
  size_t index = 0;
  HostPlan plan;
  ChildProcess ssh;
  std::string to_send;  // setup and commands not yet written to the agent's stdin
  std::string out_buf, err_buf;
  std::string last_err;
  std::map<int, pid_t> pids;
  std::set<int> finished;  // ranks whose exit was reported
  bool done = false;       // the agent said "done"
  bool ended = false;      // ssh was reaped
  ExitStatus ssh_status;
};

// Probes the left-out hosts of an elastic job on its own thread, one pass at a time, so that
// the supervisor's loop never waits on ssh.
struct SshWorkerGroup::Prober {
  std::thread thread;
  std::atomic<bool> busy{false};
  std::mutex mu;
  std::set<std::string> answered;  // hosts whose last probe succeeded
  Clock::time_point last_start{};

  ~Prober() {
    if (thread.joinable()) thread.join();
  }
  void start(std::vector<std::string> hosts, std::function<bool(const std::string&)> probe) {
    if (thread.joinable()) thread.join();
    busy = true;
    last_start = Clock::now();
    thread = std::thread([this, hosts = std::move(hosts), probe = std::move(probe)] {
      for (const auto& h : hosts) {
        bool ok = false;
        try {
          ok = probe(h);
        } catch (const std::exception&) {
        }
        std::lock_guard lock(mu);
        if (ok)
          answered.insert(h);
        else
          answered.erase(h);
      }
      busy = false;
    });
  }
};

SshWorkerGroup::SshWorkerGroup(SshGroupOptions options) : opt_(std::move(options)) {}

SshWorkerGroup::~SshWorkerGroup() {
  prober_.reset();    // waits for a probe in flight
  sessions_.clear();  // kills and reaps ssh sessions still running
  for (auto& [r, fd] : log_fds_)
    if (fd >= 0) ::close(fd);
}

void SshWorkerGroup::start(int round) {
  sessions_.clear();
  for (size_t i = 0; i < opt_.plan.size(); ++i) {
    const HostPlan& p = opt_.plan[i];
    RemoteAgentSetup setup = opt_.setup(i, round);
    auto s = std::make_unique<Session>();
    s->index = i;
    s->plan = p;
    ProcessOptions po;
    po.argv = ssh_argv(opt_.ssh, p.host,
                       remote_program_word(opt_.program) + " --log-level " +
                           shell_quote(opt_.log_level) + " agent");
    for (char** e = ::environ; e && *e; ++e) po.env.emplace_back(*e);
    po.pipe_input = true;
    s->ssh = ChildProcess::spawn(po);
    int in = s->ssh.stdin_fd();
    ::fcntl(in, F_SETFL, ::fcntl(in, F_GETFL) | O_NONBLOCK);
    GroupEvent note;
    note.kind = GroupEvent::Kind::Note;
    note.host = p.host;
    note.text = fmt::format("agent (node {}, ranks {}..{}, round {}): ssh pid {}", p.node_rank,
                            p.first_rank, p.first_rank + p.procs - 1, round, s->ssh.pid());
    pending_.push_back(std::move(note));
    send(*s, encode_agent_setup(setup));
    sessions_.push_back(std::move(s));
  }
}

void SshWorkerGroup::send(Session& s, const std::string& data) {
  s.to_send += data;
  flush_input(s);
}

void SshWorkerGroup::flush_input(Session& s) {
  int fd = s.ssh.stdin_fd();
  if (fd < 0) {
    s.to_send.clear();
    return;
  }
  while (!s.to_send.empty()) {
    ssize_t n = ::write(fd, s.to_send.data(), s.to_send.size());
    if (n > 0) {
      s.to_send.erase(0, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return;
    } else {
      s.ssh.close_stdin();
      s.to_send.clear();
      return;
    }
  }
}

void SshWorkerGroup::signal(int sig) {
  for (auto& s : sessions_)
    if (!s->ended) send(*s, agent_signal_command(sig));
}

void SshWorkerGroup::force_stop(int stage) {
  // Agents that do not finish are cut off: closing the ssh session makes them kill their
  // workers; ssh itself is killed after that.
  for (auto& s : sessions_) {
    if (s->ended) continue;
    if (stage == 1) {
      s->ssh.close_stdin();
      s->ssh.signal_group(SIGTERM);
    } else {
      s->ssh.signal_group(SIGKILL);
    }
  }
}

void SshWorkerGroup::add_poll_fds(std::vector<struct pollfd>& fds) const {
  for (const auto& s : sessions_) {
    if (s->ssh.stdout_fd() >= 0) fds.push_back({s->ssh.stdout_fd(), POLLIN, 0});
    if (s->ssh.stderr_fd() >= 0) fds.push_back({s->ssh.stderr_fd(), POLLIN, 0});
    if (!s->to_send.empty() && s->ssh.stdin_fd() >= 0)
      fds.push_back({s->ssh.stdin_fd(), POLLOUT, 0});
  }
}

void SshWorkerGroup::handle_ready(const std::vector<struct pollfd>& fds) {
  for (const auto& f : fds) {
    if (!f.revents) continue;
    for (auto& s : sessions_) {
      if (f.fd == s->ssh.stdout_fd())
        read_session(*s, false);
      else if (f.fd == s->ssh.stderr_fd())
        read_session(*s, true);
      else if (f.fd == s->ssh.stdin_fd())
        flush_input(*s);
    }
  }
}

std::optional<GroupEvent> agent_line_event(const std::string& host, const std::string& line,
                                           std::map<int, pid_t>& pids, std::set<int>& finished,
                                           bool& done) {
  AgentMessage m = parse_agent_message(line);
  GroupEvent e;
  e.host = host;
  e.rank = m.rank;
  e.pid = m.pid;
  switch (m.kind) {
    case AgentMessage::Kind::Started:
      pids[m.rank] = m.pid;
      e.kind = GroupEvent::Kind::Started;
      break;
    case AgentMessage::Kind::Exit:
      finished.insert(m.rank);
      e.kind = GroupEvent::Kind::Exited;
      e.status = m.status;
      e.text = m.text;
      break;
    case AgentMessage::Kind::Done:
      done = true;
      return std::nullopt;
    case AgentMessage::Kind::Other:
      e.kind = GroupEvent::Kind::Message;
      e.rank = -1;
      e.text = line;
      break;
  }
  return e;
}

void SshWorkerGroup::on_agent_line(Session& s, const std::string& line) {
  if (auto e = agent_line_event(s.plan.host, line, s.pids, s.finished, s.done))
    pending_.push_back(std::move(*e));
}

void SshWorkerGroup::read_session(Session& s, bool is_err) {
  int fd = is_err ? s.ssh.stderr_fd() : s.ssh.stdout_fd();
  if (fd < 0) return;
  std::string& buf = is_err ? s.err_buf : s.out_buf;
  char chunk[65536];
  for (int i = 0; i < 16; ++i) {
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    bool eof = n <= 0;
    if (!eof) buf.append(chunk, static_cast<size_t>(n));
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos || (eof && !buf.empty())) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl == std::string::npos ? buf.size() : nl + 1);
      if (is_err) {
        if (line.empty()) continue;
        s.last_err = line;
        GroupEvent e;
        e.kind = GroupEvent::Kind::Message;
        e.host = s.plan.host;
        e.text = line;
        pending_.push_back(std::move(e));
      } else {
        on_agent_line(s, line);
      }
    }
    if (eof) {
      is_err ? s.ssh.close_stderr() : s.ssh.close_stdout();
      break;
    }
  }
}

void SshWorkerGroup::on_session_end(Session& s) {
  s.ended = true;
  read_session(s, false);
  read_session(s, true);
  s.ssh.close_stdin();
  GroupEvent note;
  note.kind = GroupEvent::Kind::Note;
  note.host = s.plan.host;
  note.text = fmt::format("agent: ssh ended with {}", s.ssh_status.describe());
  pending_.push_back(std::move(note));
  if (s.done) return;
  int rank = s.plan.first_rank;
  for (int r = s.plan.first_rank; r < s.plan.first_rank + s.plan.procs; ++r)
    if (!s.finished.count(r)) {
      rank = r;
      break;
    }
  GroupEvent e;
  e.kind = GroupEvent::Kind::Lost;
  e.rank = rank;
  e.host = s.plan.host;
  e.pid = s.pids.count(rank) ? s.pids[rank] : -1;
  std::string why = s.last_err.empty() ? "" : ": " + s.last_err;
  e.text =
      fmt::format("lost its host: the ssh session to {} ended ({}) before the agent finished{}",
                  s.plan.host, s.ssh_status.describe(), why);
  pending_.push_back(std::move(e));
}

std::vector<GroupEvent> SshWorkerGroup::poll() {
  for (auto& s : sessions_)
    if (!s->ended)
      if (auto st = s->ssh.try_wait()) {
        s->ssh_status = *st;
        on_session_end(*s);
      }
  std::vector<GroupEvent> out = std::move(pending_);
  pending_.clear();
  return out;
}

ReshapeResult apply_reshape(const GroupReshape& reshape, const std::vector<std::string>& next,
                            std::vector<HostPlan>& plan, int& world) {
  if (!reshape) return {0, "the job has no elastic shape"};
  try {
    auto [p, w] = reshape(next, false);
    plan = std::move(p);
    world = w;
    return {world, {}};
  } catch (const ConfigError& e) {
    return {0, e.message()};
  }
}

bool can_reshape(const GroupReshape& reshape, const std::vector<std::string>& next) {
  try {
    reshape(next, true);
    return true;
  } catch (const ConfigError&) {
    return false;
  }
}

std::vector<std::string> plan_host_names(const std::vector<HostPlan>& plan) {
  std::vector<std::string> out;
  for (const auto& p : plan) out.push_back(p.host);
  return out;
}

ReshapeResult SshWorkerGroup::shrink(const std::vector<std::string>& lost) {
  std::vector<std::string> next;
  for (const auto& h : plan_host_names(opt_.plan))
    if (std::find(lost.begin(), lost.end(), h) == lost.end()) next.push_back(h);
  ReshapeResult r = apply_reshape(opt_.reshape, next, opt_.plan, opt_.world_size);
  if (!r.refused.empty()) return r;
  for (const auto& h : lost)
    if (std::find(left_out_.begin(), left_out_.end(), h) == left_out_.end()) left_out_.push_back(h);
  return r;
}

std::vector<std::string> SshWorkerGroup::joining() {
  if (left_out_.empty() || !opt_.probe || !opt_.reshape) return {};
  if (!prober_) prober_ = std::make_unique<Prober>();
  if (!prober_->busy && Clock::now() - prober_->last_start >= opt_.probe_interval)
    prober_->start(left_out_, opt_.probe);
  std::set<std::string> answered;
  {
    std::lock_guard lock(prober_->mu);
    answered = prober_->answered;
  }
  // The hosts that answer, each taken only if the job can be re-formed with it.
  std::vector<std::string> out, next = plan_host_names(opt_.plan);
  for (const auto& h : left_out_) {
    if (!answered.count(h)) continue;
    next.push_back(h);
    if (can_reshape(opt_.reshape, next))
      out.push_back(h);
    else
      next.pop_back();
  }
  return out;
}

ReshapeResult SshWorkerGroup::grow(const std::vector<std::string>& hosts) {
  std::vector<std::string> next = plan_host_names(opt_.plan);
  next.insert(next.end(), hosts.begin(), hosts.end());
  ReshapeResult r = apply_reshape(opt_.reshape, next, opt_.plan, opt_.world_size);
  if (!r.refused.empty()) return r;
  for (const auto& h : hosts) {
    left_out_.erase(std::remove(left_out_.begin(), left_out_.end(), h), left_out_.end());
    if (prober_) {
      std::lock_guard lock(prober_->mu);
      prober_->answered.erase(h);
    }
  }
  return r;
}

int SshWorkerGroup::running() const {
  int n = 0;
  for (const auto& s : sessions_)
    if (!s->ended) ++n;
  return n;
}

std::string SshWorkerGroup::host_of(int rank) const {
  if (rank >= opt_.world_size) {
    for (const auto& [host, servers] : opt_.servers_of_host)
      for (int i : servers)
        if (opt_.world_size + i == rank) return opt_.plan[static_cast<size_t>(host)].host;
    return "?";
  }
  for (const auto& p : opt_.plan)
    if (rank >= p.first_rank && rank < p.first_rank + p.procs) return p.host;
  return "?";
}

pid_t SshWorkerGroup::pid_of(int rank) const {
  for (const auto& s : sessions_)
    if (auto it = s->pids.find(rank); it != s->pids.end()) return it->second;
  return -1;
}

std::vector<std::string> SshWorkerGroup::hosts() const {
  std::vector<std::string> out;
  for (const auto& p : opt_.plan) out.push_back(p.host);
  return out;
}

std::string SshWorkerGroup::log_path(int rank) const {
  if (rank >= opt_.world_size)
    return fmt::format("{}/server-{}.log", opt_.run_dir, rank - opt_.world_size);
  return fmt::format("{}/rank-{}.log", opt_.run_dir, rank);
}

std::string SshWorkerGroup::log_note(int rank) const {
  const std::string host = host_of(rank);
  std::string file = log_path(rank);
  file = file.substr(file.find_last_of('/') + 1);
  return fmt::format("ptrain: the full log is on {}: {}/{}\n", host, agent_dir(opt_.run_dir, host),
                     file);
}

void SshWorkerGroup::on_streamed_line(const rendezvous::LogLineView& l) {
  if (l.rank < 0) return;
  auto it = log_fds_.find(l.rank);
  if (it == log_fds_.end()) {
    std::string path = log_path(l.rank);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    it = log_fds_.emplace(l.rank, fd).first;
  }
  if (it->second < 0) return;
  std::string line = format_log_line(l.time_us, l.text);
  ssize_t n = ::write(it->second, line.data(), line.size());
  (void)n;
}

}  // namespace ptrain::launch
