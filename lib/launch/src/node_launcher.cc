#include "ptrain/launch/node_launcher.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <filesystem>
#include <set>
#include <thread>

#include "ptrain/core/error.h"
#include "ptrain/launch/console.h"
#include "ptrain/launch/hosts.h"
#include "ptrain/launch/job_tls.h"
#include "ptrain/launch/node_relay_policy.h"
#include "ptrain/launch/remote_agent.h"
#include "ptrain/launch/run_dir.h"
#include "ptrain/launch/ssh_group.h"
#include "ptrain/launch/supervisor.h"
#include "ptrain/rendezvous/client.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/spec/elastic.h"
#include "ptrain/spec/spec.h"

extern char** environ;

namespace ptrain::launch {

namespace {

Millis seconds_ms(double s) {
  return Millis(static_cast<int64_t>(s * 1000));
}

// The store keys between node 0's supervisor and every node's relay. A node's keys are under
// its slot: its node rank for the nodes the job started with, nnodes + k for the k-th node that
// joined later (`ptrain node --join`); the slot stays when the node ranks are re-numbered.
constexpr const char* kResultKey = "ptrain/node/result";
constexpr const char* kRunKey = "ptrain/node/run";
constexpr const char* kJoinersKey = "ptrain/node/joiners";
// Set (to nnodes) by node 0 when the job is elastic: only then may nodes join.
constexpr const char* kElasticKey = "ptrain/node/elastic";
std::string node_key(int node, const std::string& what) {
  return fmt::format("ptrain/node/{}/{}", node, what);
}
std::string setup_key(int node, int round) {
  return node_key(node, fmt::format("setup/{}", round));
}
std::string event_key(int node, int round, int seq) {
  return node_key(node, fmt::format("ev/{}/{}", round, seq));
}
std::string command_key(int node, int round, int seq) {
  return node_key(node, fmt::format("cmd/{}/{}", round, seq));
}
// The newest round whose setup node 0 published for the node.
std::string next_round_key(int node) {
  return node_key(node, "next");
}
std::string node_name(int node) {
  return fmt::format("node-{}", node);
}

int parse_int(const std::string& what, const std::string& v) {
  try {
    size_t used = 0;
    int x = std::stoi(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw ConfigError(fmt::format("{} is not a whole number: `{}`", what, v),
                    "set it to the number the scheduler gives (e.g. 2)");
}

std::pair<std::string, int> split_host_port(const std::string& text, int default_port) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos) return {text, default_port};
  std::string host = text.substr(0, colon);
  std::string port = text.substr(colon + 1);
  if (host.empty())
    throw ConfigError(fmt::format("--coordinator {}: no host before the port", text),
                      "give HOST:PORT, e.g. --coordinator node0:29500");
  return {host, port.empty() ? default_port : parse_int("the coordinator's port", port)};
}

bool is_ipv4_literal(const std::string& host) {
  int a, b, c, d;
  char extra;
  return std::sscanf(host.c_str(), "%d.%d.%d.%d%c", &a, &b, &c, &d, &extra) == 4;
}

// Reads lines from a descriptor without blocking.
struct LineReader {
  std::string buf;
  // Appends what is there; returns false at the end of the stream.
  bool read(int fd, std::vector<std::string>& lines) {
    char chunk[65536];
    for (int i = 0; i < 16; ++i) {
      ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return true;
      if (n <= 0) {
        if (!buf.empty()) lines.push_back(std::move(buf));
        buf.clear();
        return false;
      }
      buf.append(chunk, static_cast<size_t>(n));
      size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        lines.push_back(buf.substr(0, nl));
        buf.erase(0, nl + 1);
      }
    }
    return true;
  }
};

void write_blocking(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 100);
      continue;
    }
    if (n <= 0) return;  // the agent is gone: its exit tells the rest
    done += static_cast<size_t>(n);
  }
}

// One node's side: waits for the setup of each round in the store, runs `ptrain agent` with it
// (the setup on its stdin, as over ssh), publishes the agent's lines and its end, and passes the
// supervisor's commands on. Returns the job's exit code once node 0 publishes it. Store errors
// (the coordinator went away) are thrown after the agent was stopped.
// With `tls` (this node's identity) the agent gets it in its setup, as over ssh.
int run_relay(rendezvous::Store& store, int node, const std::string& program,
              const std::string& log_level, const std::optional<rendezvous::TlsIdentity>& tls,
              const std::atomic<bool>& cancel) {
  const std::string alive = node_key(node, "alive");
  auto last_beat = Clock::now() - Millis(10000);
  auto beat = [&] {
    if (Clock::now() - last_beat < Millis(300)) return;
    store.add(alive, 1);
    last_beat = Clock::now();
  };
  // The rounds this node takes part in: a node left out of some rounds (an elastic job that
  // shrank) or that joined later waits for the next one that has a setup for it.
  for (int last = -1;;) {
    int round = -1;
    while (round <= last) {
      if (store.check({next_round_key(node)}))
        round = parse_int("the node's round", store.get(next_round_key(node)));
      if (round > last) break;
      if (store.check({kResultKey})) return parse_int("the job's result", store.get(kResultKey));
      if (cancel) return kExitFailure;
      beat();
      ::usleep(50 * 1000);
    }
    last = round;
    std::string setup = store.get(setup_key(node, round), Millis(5000));
    if (tls) setup = add_agent_setup_tls(setup, *tls);
    ProcessOptions po;
    po.argv = {program, "--log-level", log_level, "agent"};
    // The agent decides its workers' identity from its setup: a $PTRAIN_TLS_DIR inherited from
    // this node's environment would make them use TLS in a plaintext job.
    const std::string tls_env = std::string(rendezvous::kTlsDirEnv) + "=";
    for (char** e = ::environ; e && *e; ++e)
      if (std::string(*e).rfind(tls_env, 0) != 0) po.env.emplace_back(*e);
    po.pipe_input = true;
    ChildProcess agent = ChildProcess::spawn(po);
    write_blocking(agent.stdin_fd(), setup);
    ::fcntl(agent.stdin_fd(), F_SETFL, ::fcntl(agent.stdin_fd(), F_GETFL) | O_NONBLOCK);
    ::fcntl(agent.stdout_fd(), F_SETFL, ::fcntl(agent.stdout_fd(), F_GETFL) | O_NONBLOCK);
    ::fcntl(agent.stderr_fd(), F_SETFL, ::fcntl(agent.stderr_fd(), F_GETFL) | O_NONBLOCK);
    LineReader out, err;
    int seq = 0, cmd = 0;
    auto publish = [&](const std::string& kind, const std::vector<std::string>& lines) {
      for (const auto& l : lines) store.set(event_key(node, round, seq++), kind + " " + l);
    };
    try {
      std::optional<ExitStatus> status;
      while (!status) {
        std::vector<pollfd> fds;
        if (agent.stdout_fd() >= 0) fds.push_back({agent.stdout_fd(), POLLIN, 0});
        if (agent.stderr_fd() >= 0) fds.push_back({agent.stderr_fd(), POLLIN, 0});
        ::poll(fds.data(), fds.size(), 50);
        std::vector<std::string> o, e;
        if (agent.stdout_fd() >= 0 && !out.read(agent.stdout_fd(), o)) agent.close_stdout();
        if (agent.stderr_fd() >= 0 && !err.read(agent.stderr_fd(), e)) agent.close_stderr();
        publish("E", e);
        publish("O", o);
        while (store.check({command_key(node, round, cmd)}))
          write_blocking(agent.stdin_fd(), store.get(command_key(node, round, cmd++)));
        beat();
        if (cancel) agent.close_stdin();  // the agent stops its workers
        if (agent.stdout_fd() < 0 && agent.stderr_fd() < 0) status = agent.wait(Millis(1000));
      }
      store.set(event_key(node, round, seq++),
                fmt::format("X {} {}", status->code, status->signal));
    } catch (const Error&) {
      // The coordinator is gone: closing stdin makes the agent stop its workers.
      agent.close_stdin();
      if (!agent.wait(Millis(10000))) agent.signal_group(SIGKILL);
      throw;
    }
  }
}

struct NodeState {
  HostPlan plan;
  int slot = 0;  // the node's store keys
  int next_event = 0;
  int next_command = 0;
  bool ended = false;
  bool done = false;
  std::map<int, pid_t> pids;
  std::set<int> finished;
  std::string last_err;
  int64_t alive = -1;
  Clock::time_point alive_at;
};

int slot_of(const std::string& node) {
  return parse_int("a node's slot", node.substr(node.find('-') + 1));
}

// Node 0's view of every node's agent, behind the WorkerGroup interface.
class NodeWorkerGroup : public WorkerGroup {
 public:
  NodeWorkerGroup(rendezvous::Store& store, std::vector<HostPlan> plan, std::string run_dir,
                  int world_size, Millis loss, std::function<RemoteAgentSetup(size_t, int)> setup,
                  int nnodes = 0, GroupReshape reshape = {})
      : store_(store),
        plan_(std::move(plan)),
        run_dir_(std::move(run_dir)),
        world_size_(world_size),
        loss_(loss),
        setup_(std::move(setup)),
        nnodes_(nnodes),
        reshape_(std::move(reshape)) {}
  ~NodeWorkerGroup() override {
    for (auto& [r, fd] : log_fds_)
      if (fd >= 0) ::close(fd);
  }

  void start(int round) override {
    round_ = round;
    nodes_.clear();
    for (size_t i = 0; i < plan_.size(); ++i) {
      NodeState n;
      n.plan = plan_[i];
      n.slot = slot_of(n.plan.host);
      n.alive = store_.add(node_key(n.slot, "alive"), 0);
      n.alive_at = Clock::now();
      nodes_.push_back(n);
      store_.set(setup_key(n.slot, round), encode_agent_setup(setup_(i, round)));
      store_.set(next_round_key(n.slot), std::to_string(round));
      note(n,
           fmt::format("agent (node {}, ranks {}..{}, round {}): setup published", n.plan.node_rank,
                       n.plan.first_rank, n.plan.first_rank + n.plan.procs - 1, round));
    }
  }
  void signal(int sig) override {
    for (auto& n : nodes_)
      if (!n.ended)
        store_.set(command_key(n.slot, round_, n.next_command++), agent_signal_command(sig));
  }
  void force_stop(int stage) override {
    if (stage == 1) return signal(SIGKILL);
    for (auto& n : nodes_)
      if (!n.ended) lose(n, "its agent did not report its workers' end after SIGKILL");
  }
  void add_poll_fds(std::vector<struct pollfd>& fds) const override { (void)fds; }
  void handle_ready(const std::vector<struct pollfd>& fds) override { (void)fds; }
  std::vector<GroupEvent> poll() override {
    for (auto& n : nodes_) {
      const int node = n.slot;
      while (!n.ended && store_.check({event_key(node, round_, n.next_event)})) {
        std::string ev = store_.get(event_key(node, round_, n.next_event++));
        const std::string text = ev.size() > 2 ? ev.substr(2) : "";
        if (ev[0] == 'O') {
          on_agent_line(n, text);
        } else if (ev[0] == 'E') {
          if (text.empty()) continue;
          n.last_err = text;
          GroupEvent e;
          e.kind = GroupEvent::Kind::Message;
          e.host = n.plan.host;
          e.text = text;
          pending_.push_back(std::move(e));
        } else {
          n.ended = true;
          note(n, fmt::format("agent ended ({})", text));
          if (!n.done)
            lose(n, fmt::format("the agent on {} ended before it finished{}", n.plan.host,
                                n.last_err.empty() ? "" : ": " + n.last_err));
        }
      }
      if (n.ended) continue;
      const int64_t v = store_.add(node_key(node, "alive"), 0);
      if (v != n.alive) {
        n.alive = v;
        n.alive_at = Clock::now();
      } else if (Clock::now() - n.alive_at > loss_) {
        lose(n, fmt::format("{} (node rank {}) stopped answering for {} s", n.plan.host,
                            n.plan.node_rank, loss_.count() / 1000));
      }
    }
    std::vector<GroupEvent> out = std::move(pending_);
    pending_.clear();
    return out;
  }
  int running() const override {
    int k = 0;
    for (const auto& n : nodes_)
      if (!n.ended) ++k;
    return k;
  }
  std::string host_of(int rank) const override {
    for (const auto& p : plan_)
      if (rank >= p.first_rank && rank < p.first_rank + p.procs) return p.host;
    return "?";
  }
  pid_t pid_of(int rank) const override {
    for (const auto& n : nodes_)
      if (auto it = n.pids.find(rank); it != n.pids.end()) return it->second;
    return -1;
  }
  std::vector<std::string> hosts() const override {
    std::vector<std::string> out;
    for (const auto& p : plan_) out.push_back(p.host);
    return out;
  }
  std::string log_path(int rank) const override {
    if (rank >= world_size_) return fmt::format("{}/server-{}.log", run_dir_, rank - world_size_);
    return fmt::format("{}/rank-{}.log", run_dir_, rank);
  }
  std::string log_note(int rank) const override {
    const std::string host = host_of(rank);
    std::string file = log_path(rank);
    file = file.substr(file.find_last_of('/') + 1);
    return fmt::format("ptrain: the full log is on {}: {}/{}\n", host, agent_dir(run_dir_, host),
                       file);
  }
  void on_streamed_line(const rendezvous::LogLineView& l) override {
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
  bool multi_host() const override { return true; }

  ReshapeResult shrink(const std::vector<std::string>& lost) override {
    std::vector<std::string> next;
    for (const auto& h : plan_host_names(plan_))
      if (std::find(lost.begin(), lost.end(), h) == lost.end()) next.push_back(h);
    ReshapeResult r = apply_reshape(reshape_, next, plan_, world_size_);
    if (r.refused.empty())
      for (const auto& h : lost) left_out_.insert(slot_of(h));
    return r;
  }
  // The nodes left out that beat again, and the nodes that joined with `ptrain node --join`,
  // while the job has fewer than its nnodes nodes.
  std::vector<std::string> joining() override {
    if (!reshape_) return {};
    std::set<int> candidates = left_out_;
    const int joiners = static_cast<int>(store_.add(kJoinersKey, 0));
    for (int k = 0; k < joiners; ++k) candidates.insert(nnodes_ + k);
    std::vector<std::string> out, next = plan_host_names(plan_);
    const auto now = Clock::now();
    for (int slot : candidates) {
      if (static_cast<int>(next.size()) >= nnodes_) break;
      if (std::find(next.begin(), next.end(), node_name(slot)) != next.end()) continue;
      // Alive: its relay's counter moved within the last two seconds. The first sight of a
      // counter is no sign of life (a dead node's counter stays put).
      const int64_t v = store_.add(node_key(slot, "alive"), 0);
      auto [it, first] = beats_.try_emplace(slot, v, Clock::time_point{});
      if (!first && v != it->second.first) it->second = {v, now};
      if (now - it->second.second > Millis(2000)) continue;
      next.push_back(node_name(slot));
      if (can_reshape(reshape_, next))
        out.push_back(node_name(slot));
      else
        next.pop_back();
    }
    return out;
  }
  ReshapeResult grow(const std::vector<std::string>& hosts) override {
    std::vector<std::string> next = plan_host_names(plan_);
    next.insert(next.end(), hosts.begin(), hosts.end());
    std::sort(next.begin(), next.end(),
              [](const std::string& a, const std::string& b) { return slot_of(a) < slot_of(b); });
    ReshapeResult r = apply_reshape(reshape_, next, plan_, world_size_);
    if (r.refused.empty())
      for (const auto& h : hosts) left_out_.erase(slot_of(h));
    return r;
  }

 private:
  void note(const NodeState& n, const std::string& text) {
    GroupEvent e;
    e.kind = GroupEvent::Kind::Note;
    e.host = n.plan.host;
    e.text = text;
    pending_.push_back(std::move(e));
  }
  void lose(NodeState& n, const std::string& why) {
    n.ended = true;
    int rank = n.plan.first_rank;
    for (int r = n.plan.first_rank; r < n.plan.first_rank + n.plan.procs; ++r)
      if (!n.finished.count(r)) {
        rank = r;
        break;
      }
    GroupEvent e;
    e.kind = GroupEvent::Kind::Lost;
    e.rank = rank;
    e.host = n.plan.host;
    e.pid = n.pids.count(rank) ? n.pids[rank] : -1;
    e.text = "lost its node: " + why;
    pending_.push_back(std::move(e));
  }
  void on_agent_line(NodeState& n, const std::string& line) {
    if (auto e = agent_line_event(n.plan.host, line, n.pids, n.finished, n.done))
      pending_.push_back(std::move(*e));
  }

  rendezvous::Store& store_;
  std::vector<HostPlan> plan_;
  std::string run_dir_;
  int world_size_;
  Millis loss_;
  std::function<RemoteAgentSetup(size_t, int)> setup_;
  int nnodes_;  // the most nodes the job runs on
  GroupReshape reshape_;
  std::set<int> left_out_;                                      // slots shrink() left out
  std::map<int, std::pair<int64_t, Clock::time_point>> beats_;  // slot → alive counter, seen at
  int round_ = 0;
  std::vector<NodeState> nodes_;
  std::vector<GroupEvent> pending_;
  std::map<int, int> log_fds_;
};

struct Endpoint {
  std::string host;
  int port = 0;
  std::string address() const { return fmt::format("{}:{}", host, port); }
};

Endpoint coordinator_endpoint(const NodeLaunchOptions& o, const spec::JobSpec& spec) {
  if (!o.coordinator.empty()) {
    auto [host, port] = split_host_port(o.coordinator, spec.rendezvous.port);
    return {host, port};
  }
  std::string host = spec.rendezvous.bind;
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  return {host, spec.rendezvous.port};
}

void claim_rank(rendezvous::Store& store, int node) {
  if (store.add(node_key(node, "claim"), 1) > 1)
    throw ConfigError(
        fmt::format("node rank {} is already taken: another `ptrain node` joined with it", node),
        "give every node its own --node-rank, 0 .. nnodes-1");
}

using NodeTls = std::optional<rendezvous::TlsIdentity>;
JobResult run_node_zero(spec::JobSpec spec, const NodeLaunchOptions& opt, const Endpoint& ep,
                        const NodeTls& tls);
JobResult run_other_node(const spec::JobSpec& spec, const NodeLaunchOptions& opt,
                         const Endpoint& ep, const NodeTls& tls);

}  // namespace

std::map<std::string, std::string> process_environment() {
  std::map<std::string, std::string> out;
  for (char** e = ::environ; e && *e; ++e) {
    std::string kv = *e;
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) out[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return out;
}

NodeEnvironment node_environment(const std::map<std::string, std::string>& env, int spec_port) {
  auto get = [&](const char* k) -> std::string {
    auto it = env.find(k);
    return it == env.end() ? "" : it->second;
  };
  NodeEnvironment n;
  if (!get("PET_NNODES").empty() || !get("MASTER_ADDR").empty()) {
    n.source = "kubernetes";
    // PET_NNODES may be a range "MIN:MAX" (elastic); a fixed world takes MAX.
    std::string nn = get("PET_NNODES");
    if (const size_t c = nn.find(':'); c != std::string::npos) nn = nn.substr(c + 1);
    if (!nn.empty())
      n.nnodes = parse_int("PET_NNODES", nn);
    else if (!get("WORLD_SIZE").empty())
      n.nnodes = parse_int("WORLD_SIZE", get("WORLD_SIZE"));
    if (!get("PET_NODE_RANK").empty())
      n.node_rank = parse_int("PET_NODE_RANK", get("PET_NODE_RANK"));
    else if (!get("RANK").empty())
      n.node_rank = parse_int("RANK", get("RANK"));
    if (!get("PET_NPROC_PER_NODE").empty() && get("PET_NPROC_PER_NODE") != "auto")
      n.procs_per_node = parse_int("PET_NPROC_PER_NODE", get("PET_NPROC_PER_NODE"));
    if (!get("MASTER_ADDR").empty())
      n.coordinator = get("MASTER_ADDR") + ":" +
                      (get("MASTER_PORT").empty()
                           ? std::to_string(spec_port)
                           : std::to_string(parse_int("MASTER_PORT", get("MASTER_PORT"))));
    return n;
  }
  if (!get("SLURM_JOB_NODELIST").empty() || !get("SLURM_NODEID").empty()) {
    n.source = "slurm";
    if (!get("SLURM_NNODES").empty()) n.nnodes = parse_int("SLURM_NNODES", get("SLURM_NNODES"));
    if (!get("SLURM_NODEID").empty()) n.node_rank = parse_int("SLURM_NODEID", get("SLURM_NODEID"));
    const std::string list = get("SLURM_JOB_NODELIST");
    if (!list.empty()) {
      std::vector<std::string> hosts = expand_slurm_nodelist(list);
      if (hosts.empty())
        throw ConfigError(fmt::format("SLURM_JOB_NODELIST `{}` names no host", list),
                          "run `ptrain node` inside a Slurm allocation (srun)");
      int port = spec_port;
      if (port == 0 && !get("SLURM_JOB_ID").empty())
        port = 15000 + parse_int("SLURM_JOB_ID", get("SLURM_JOB_ID")) % 20000;
      n.coordinator = fmt::format("{}:{}", hosts.front(), port);
    }
  }
  return n;
}

void check_node_options(const NodeLaunchOptions& o, const spec::JobSpec& spec) {
  if (o.nnodes < 1)
    throw ConfigError(fmt::format("--nnodes {}: a job needs at least one node", o.nnodes),
                      "give --nnodes N (or PET_NNODES / SLURM_NNODES)");
  if (o.join && o.node_rank >= 0)
    throw ConfigError(fmt::format("--join with --node-rank {}: a node that joins gets its place "
                                  "from the job",
                                  o.node_rank),
                      "give either --node-rank R (the nodes the job starts with) or --join");
  if (!o.join && (o.node_rank < 0 || o.node_rank >= o.nnodes))
    throw ConfigError(fmt::format("--node-rank {} is outside 0..{} (--nnodes {})", o.node_rank,
                                  o.nnodes - 1, o.nnodes),
                      "give each node a rank below the node count");
  if (o.token.empty())
    throw ConfigError("no job token: `ptrain node` needs the same token on every node",
                      "export PTRAIN_TOKEN=<secret> or give --token-file FILE (never on argv)");
  Endpoint ep = coordinator_endpoint(o, spec);
  if (ep.port <= 0)
    throw ConfigError("no coordinator port: rendezvous.port is 0 and no --coordinator was given",
                      "give --coordinator HOST:PORT or --set rendezvous.port=29500");
}

JobResult run_node(spec::JobSpec spec, NodeLaunchOptions options) {
  if (options.procs_per_node > 0) spec.nodes.procs_per_node = options.procs_per_node;
  check_node_options(options, spec);
  Endpoint ep = coordinator_endpoint(options, spec);
  // A write to an agent or a peer that has gone is that one's failure, reported as such, not a
  // SIGPIPE of this node (children start with every signal at its default).
  ::signal(SIGPIPE, SIG_IGN);
  // Every channel and server of this process (the coordinator on node 0, the store client
  // elsewhere) and every agent's setup use this identity.
  const NodeTls tls = node_tls(spec.rendezvous.tls, options.tls_dir);
  rendezvous::set_process_tls(tls);
  if (!tls && !rendezvous::is_loopback_host(ep.host))
    std::fprintf(options.out,
                 "ptrain: warning: rendezvous.tls: auto stays plaintext: no job certificate was "
                 "given (see `ptrain tls init` and --tls-dir)\n");
  if (!options.join && options.node_rank == 0)
    return run_node_zero(std::move(spec), options, ep, tls);
  return run_other_node(spec, options, ep, tls);
}

namespace {

JobResult run_other_node(const spec::JobSpec& spec, const NodeLaunchOptions& opt,
                         const Endpoint& ep, const NodeTls& tls) {
  const std::string self = opt.local_binary.empty() ? this_executable() : opt.local_binary;
  Deadline deadline(seconds_ms(spec.rendezvous.timeout_s));
  std::unique_ptr<rendezvous::CoordinatorClient> client;
  std::shared_ptr<rendezvous::Store> store;
  std::string last;
  // Node 0 may start later: retry until rendezvous.timeout_s.
  while (!store) {
    try {
      client = std::make_unique<rendezvous::CoordinatorClient>(ep.address(), opt.token,
                                                               Millis(1000), Millis(10000));
      auto s = client->store();
      if (s->check({kRunKey})) store = s;
    } catch (const Error& e) {
      last = e.what();
      client.reset();
      // A coordinator that answers but refuses the token will not change its mind.
      if (last.find("wrong or missing job token") != std::string::npos)
        throw ConfigError(fmt::format("node {}: {}", opt.node_rank, last),
                          "give every node the same PTRAIN_TOKEN (or --token-file)");
    }
    if (store) break;
    if (deadline.expired())
      throw TimeoutError(
          fmt::format("node {}: the coordinator at {} did not answer within {} s{}", opt.node_rank,
                      ep.address(), spec.rendezvous.timeout_s, last.empty() ? "" : ": " + last),
          "start node 0 (`ptrain node --node-rank 0`) with the same token, or raise "
          "rendezvous.timeout_s");
    ::usleep(200 * 1000);
  }
  int slot = opt.node_rank;
  const std::string run_dir = store->get(kRunKey);
  if (opt.join) {
    // A node that joins a running elastic job takes the next free slot after the nnodes ones.
    if (!store->check({kElasticKey}))
      throw ConfigError(
          fmt::format("--join: the job at {} is not elastic, so it takes no node that joins",
                      ep.address()),
          "start the job with nodes.min_nodes below its node count (e.g. --set "
          "nodes.min_nodes=1)");
    const int nnodes = parse_int("the job's node count", store->get(kElasticKey));
    slot = nnodes + static_cast<int>(store->add(kJoinersKey, 1)) - 1;
    claim_rank(*store, slot);
    std::fprintf(opt.out,
                 "ptrain: joined the job at %s as %s; it is taken in at the job's next "
                 "checkpoint while the job has fewer than %d nodes (run folder %s)\n",
                 ep.address().c_str(), node_name(slot).c_str(), nnodes, run_dir.c_str());
  } else {
    claim_rank(*store, opt.node_rank);
    std::fprintf(opt.out, "ptrain: node %d of %d joined the coordinator at %s (run folder %s)\n",
                 opt.node_rank, opt.nnodes, ep.address().c_str(), run_dir.c_str());
  }
  std::fflush(opt.out);
  std::atomic<bool> cancel{false};
  JobResult r;
  r.run_dir = run_dir;
  try {
    r.exit_code = run_relay(*store, slot, self, spec.logging.level, tls, cancel);
    store->set(node_key(slot, "bye"), "1");
  } catch (const Error& e) {
    throw RemoteError(
        fmt::format("{}: lost the coordinator at {}: {}", node_name(slot), ep.address(), e.what()),
        "see node 0's output and launcher.log");
  }
  r.status = r.exit_code == 0 ? "succeeded" : "failed";
  return r;
}

JobResult run_node_zero(spec::JobSpec spec, const NodeLaunchOptions& opt, const Endpoint& ep,
                        const NodeTls& tls) {
  const bool builtin = !spec.launcher_only();
  int world_size = spec.world_size();  // an elastic job re-forms it between rounds
  std::vector<spec::HostSlots> hosts;
  for (int i = 0; i < opt.nnodes; ++i) hosts.push_back({node_name(i), spec.nodes.procs_per_node});
  auto plan = plan_hosts(hosts, spec.nodes.procs_per_node, world_size);
  if (plan.size() != static_cast<size_t>(opt.nnodes))
    throw ConfigError(
        fmt::format("{} node(s) given, but the job's {} worker(s) at {} per node fill {}",
                    opt.nnodes, world_size, spec.nodes.procs_per_node, plan.size()),
        "match --nnodes to world size / nodes.procs_per_node");
  if (builtin && spec.parallel.data_mode == "async")
    throw ConfigError("data_mode: async is not supported by `ptrain node` yet",
                      "use `ptrain launch` for jobs with parameter servers");
  const std::string self = opt.local_binary.empty() ? this_executable() : opt.local_binary;

  PollWaiter waiter;  // before any thread starts
  bool tty = opt.tty >= 0 ? opt.tty != 0 : ::isatty(::fileno(opt.out)) != 0;
  Console console(opt.out, tty, parse_console_mode(spec.logging.console), spec.train.log_every);
  if (builtin) console.set_total_steps(spec.train.steps);

  EventQueue events(waiter);
  rendezvous::CoordinatorOptions co;
  co.bind = !spec.rendezvous.bind.empty() ? spec.rendezvous.bind
            : is_ipv4_literal(ep.host)    ? ep.host
                                          : "0.0.0.0";
  co.port = ep.port;
  co.token = opt.token;
  co.world_size = world_size;
  co.mesh = builtin ? rendezvous::MeshShape{spec.parallel.data, spec.parallel.tensor,
                                            spec.parallel.pipeline}
                    : rendezvous::MeshShape{world_size, 1, 1};
  co.join_timeout = seconds_ms(spec.rendezvous.timeout_s);
  co.heartbeat_timeout = seconds_ms(spec.fault_tolerance.hang_timeout_s);
  // The run folder exists only once the coordinator listens: a second node 0 stops before it.
  std::error_code ec;
  std::string root = std::filesystem::absolute(spec.logging.dir, ec).string();
  apply_file_mode(spec.logging.mode);
  std::unique_ptr<rendezvous::Coordinator> coordinator;
  std::unique_ptr<RunDir> dir_holder;
  {
    // The coordinator needs the run id and folder; bind a probe first so that a port in use
    // (another node 0) fails before the folder is made.
    rendezvous::CoordinatorOptions probe = co;
    auto c = std::make_unique<rendezvous::Coordinator>(probe);
    try {
      c->start();
    } catch (const Error& e) {
      throw ConfigError(
          fmt::format("node 0: cannot listen on {}:{}: {}", co.bind, co.port, e.what()),
          "another node already holds node rank 0, or the port is taken: give --coordinator "
          "HOST:FREE_PORT");
    }
  }
  RunDir dir = RunDir::create(root, spec.name);
  // env: values stay out of the copies (the workers get them in their environment).
  std::string spec_yaml = opt.spec_yaml.empty() ? spec::to_yaml_redacted(spec) : opt.spec_yaml;
  dir.write_file("job.yaml", spec_yaml);
  if (spec.logging.tensorboard && builtin) dir.enable_tensorboard();
  const std::string run_id = dir.path().substr(dir.path().find_last_of('/') + 1);
  dir.log(fmt::format("job {}: {} worker(s) on {} node(s) (ptrain node), run id {}", spec.name,
                      world_size, plan.size(), run_id));
  std::vector<std::string> host_names;
  for (const auto& p : plan) host_names.push_back(p.host);
  co.run_id = run_id;
  co.run_dir = dir.path();
  co.spec_yaml = spec_yaml;
  coordinator = std::make_unique<rendezvous::Coordinator>(co, events.coordinator_events(dir));
  try {
    coordinator->start();
  } catch (const Error& e) {
    dir.log(std::string("cannot start the coordinator: ") + e.what());
    Supervisor::write_start_failure(dir, spec.name, world_size, host_names, e.exit_code(),
                                    std::string("cannot start the coordinator: ") + e.what());
    throw;
  }
  rendezvous::Store& store = coordinator->store();
  claim_rank(store, 0);
  store.set(kRunKey, dir.path());
  dir.log("coordinator listening on " + coordinator->address());
  if (tls)
    dir.log("rendezvous.tls: mutual TLS on every gRPC channel (the certificate of --tls-dir)");
  console.message(fmt::format("ptrain: {} worker(s) on {} node(s), coordinator {}, run folder {}",
                              world_size, plan.size(), ep.address(), dir.path()));

  std::string agent_yaml = spec_yaml;
  std::string shared_checkpoints;
  if (builtin && spec.fault_tolerance.max_restarts > 0 && spec.checkpoint.dir.empty()) {
    // As with `ptrain launch`: restarted rounds resume from node 0's checkpoints, which must be
    // on a shared filesystem across machines (or set checkpoint.dir to a shared path).
    shared_checkpoints = agent_dir(dir.path(), plan.front().host) + "/checkpoints";
    spec::JobSpec agent_spec = spec;
    agent_spec.checkpoint.dir = shared_checkpoints;
    agent_yaml = spec::to_yaml_redacted(agent_spec);
  }
  // Elastic (nodes.min_nodes below nnodes): the job on the nodes it has left or that joined, as
  // `ptrain launch` re-forms it on hosts (spec::reshape_for_hosts of the job as given).
  GroupReshape reshape;
  if (spec.nodes.min_nodes > 0 && spec.nodes.min_nodes < opt.nnodes) {
    store.set(kElasticKey, std::to_string(opt.nnodes));
    reshape = [&](const std::vector<std::string>& names, bool dry_run) {
      std::vector<spec::HostSlots> next;
      for (const auto& n : names) next.push_back({n, spec.nodes.procs_per_node});
      spec::Reshape r = spec::reshape_for_hosts(spec, next);
      if (!r.ok) throw ConfigError(r.reason);
      const int new_world = r.spec.world_size();
      auto new_plan = plan_hosts(next, r.spec.nodes.procs_per_node, new_world);
      if (dry_run) return std::make_pair(new_plan, new_world);
      coordinator->reshape(new_world,
                           builtin
                               ? rendezvous::MeshShape{r.spec.parallel.data, r.spec.parallel.tensor,
                                                       r.spec.parallel.pipeline}
                               : rendezvous::MeshShape{new_world, 1, 1},
                           spec::to_yaml_redacted(r.spec));
      spec::JobSpec agent_spec = r.spec;
      if (!shared_checkpoints.empty()) agent_spec.checkpoint.dir = shared_checkpoints;
      agent_yaml = spec::to_yaml_redacted(agent_spec);
      plan = new_plan;
      world_size = new_world;
      dir.log(fmt::format("elastic: {} worker(s) on {} node(s), data {} x grad_accum {}", new_world,
                          plan.size(), r.spec.parallel.data, r.spec.train.grad_accum));
      return std::make_pair(plan, new_world);
    };
  }
  const std::string coordinator_address = ep.address();
  auto setup = [&](size_t i, int round) {
    const HostPlan& p = plan[i];
    for (int r = p.first_rank; r < p.first_rank + p.procs; ++r) coordinator->expect(r, p.host);
    RemoteAgentSetup s;
    AgentOptions& a = s.agent;
    a.node = p.host;
    a.node_rank = p.node_rank;
    a.num_nodes = static_cast<int>(plan.size());
    a.first_rank = p.first_rank;
    a.local_world_size = p.procs;
    a.world_size = world_size;
    a.argv = builtin ? std::vector<std::string>{self, "--log-level", spec.logging.level, "worker"}
                     : spec.command;
    a.coordinator = coordinator_address;
    a.token = opt.token;
    a.run_dir = dir.path();
    a.run_id = run_id;
    a.master_addr = ep.host;
    a.master_port = 0;  // node 0's agent picks a free one (agree_master_port)
    a.max_restarts = spec.fault_tolerance.max_restarts;
    a.threads_per_proc = spec.nodes.threads_per_proc;
    a.cuda = spec.nodes.device == "cuda";
    a.extra_env = spec.env;
    set_node_relay(spec, a);
    s.spec_yaml = agent_yaml;
    s.round = round;
    s.umask = spec.logging.mode == "private" ? 077 : -1;
    s.restore_umask = !builtin;
    s.heartbeat_s = spec.fault_tolerance.heartbeat_s;
    s.coordinator_loss_s = 3 * spec.fault_tolerance.heartbeat_s;
    s.term_grace_s = spec.fault_tolerance.term_grace_s;
    return s;
  };
  const Millis loss = std::max(Millis(5000), seconds_ms(3 * spec.fault_tolerance.heartbeat_s));
  NodeWorkerGroup group(store, plan, dir.path(), world_size, loss, setup, opt.nnodes, reshape);

  // Node 0's own agent runs through the same relay as every other node's.
  std::atomic<bool> cancel{false};
  std::string relay_error;
  std::thread relay([&] {
    try {
      run_relay(store, 0, self, spec.logging.level, tls, cancel);
    } catch (const std::exception& e) {
      relay_error = e.what();
    }
  });
  CoordinatorControl control(*coordinator);
  SupervisorOptions so = supervisor_options(spec);
  so.tick = Millis(200);
  Supervisor supervisor(so, group, control, waiter, events, console, dir);
  JobResult result = supervisor.run();
  store.set(kResultKey, std::to_string(result.exit_code));
  // The other nodes read the result before the coordinator goes away.
  Deadline bye(Millis(5000));
  const int slots = opt.nnodes + static_cast<int>(store.add(kJoinersKey, 0));
  for (int i = 1; i < slots; ++i)
    while (store.check({node_key(i, "claim")}) && !store.check({node_key(i, "bye")}) &&
           !bye.expired())
      ::usleep(50 * 1000);
  cancel = true;
  relay.join();
  if (!relay_error.empty()) dir.log("node 0's relay: " + relay_error);
  return result;
}

}  // namespace

}  // namespace ptrain::launch
