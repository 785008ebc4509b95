#include "ptrain/launch/hosts.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <set>

#include "ptrain/core/error.h"

namespace ptrain::launch {

namespace {

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(c); });
}

int to_count(const std::string& s, const std::string& what, const std::string& context) {
  if (!all_digits(s) || s.size() > 6)
    throw ConfigError(fmt::format("{}: `{}` is not a whole number ({})", context, s, what));
  return std::stoi(s);
}

// Splits at commas that are not inside brackets.
std::vector<std::string> split_top(const std::string& text, const std::string& context) {
  std::vector<std::string> parts;
  std::string cur;
  int depth = 0;
  for (char c : text) {
    if (c == '[') ++depth;
    if (c == ']' && --depth < 0)
      throw ConfigError(fmt::format("{}: unbalanced `]` in `{}`", context, text));
    if (c == ',' && depth == 0) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (depth != 0) throw ConfigError(fmt::format("{}: unbalanced `[` in `{}`", context, text));
  parts.push_back(cur);
  return parts;
}

// Expands one item ("prefix[01-03,7]suffix[1-2]..."), recursively over its bracket groups.
void expand_item(const std::string& item, std::vector<std::string>& out) {
  const std::string ctx = "SLURM_JOB_NODELIST";
  size_t open = item.find('[');
  if (open == std::string::npos) {
    if (item.empty()) throw ConfigError(ctx + ": empty node name in the list");
    out.push_back(item);
    return;
  }
  size_t close = item.find(']', open);
  if (close == std::string::npos)
    throw ConfigError(fmt::format("{}: unbalanced `[` in `{}`", ctx, item));
  std::string prefix = item.substr(0, open);
  std::string rest = item.substr(close + 1);
  std::string body = item.substr(open + 1, close - open - 1);
  for (const auto& range : split_top(body, ctx)) {
    size_t dash = range.find('-');
    std::string lo = range.substr(0, dash);
    std::string hi = dash == std::string::npos ? lo : range.substr(dash + 1);
    if (!all_digits(lo) || !all_digits(hi) || lo.size() > 9 || hi.size() > 9)
      throw ConfigError(fmt::format("{}: bad range `{}` in `{}`", ctx, range, item),
                        "ranges look like `node[01-04,07]`");
    long a = std::stol(lo), b = std::stol(hi);
    if (b < a || b - a > 100000)
      throw ConfigError(fmt::format("{}: bad range `{}` in `{}`", ctx, range, item));
    size_t width = lo.size();
    for (long v = a; v <= b; ++v) {
      std::string num = std::to_string(v);
      if (num.size() < width) num.insert(0, width - num.size(), '0');
      expand_item(prefix + num + rest, out);
    }
  }
}

}  // namespace

std::vector<spec::HostSlots> parse_hosts_flag(const std::string& text) {
  std::vector<spec::HostSlots> hosts;
  for (const auto& part : split_top(text, "--hosts")) {
    spec::HostSlots h;
    size_t colon = part.rfind(':');
    // "[::1]:4" and bare IPv6 addresses: the slots follow the closing bracket only.
    bool bracketed = !part.empty() && part.front() == '[';
    if (bracketed) {
      size_t close = part.find(']');
      h.host = part.substr(1, close == std::string::npos ? std::string::npos : close - 1);
      if (close != std::string::npos && close + 1 < part.size() && part[close + 1] == ':')
        h.slots = to_count(part.substr(close + 2), "slots", "--hosts");
    } else if (colon != std::string::npos && part.find(':') == colon) {
      h.host = part.substr(0, colon);
      h.slots = to_count(part.substr(colon + 1), "slots", "--hosts " + part);
      if (h.slots == 0)
        throw ConfigError(fmt::format("--hosts: host `{}` has zero slots", h.host),
                          "give every host at least one slot, e.g. `a:4`");
    } else {
      h.host = part;
    }
    if (h.host.empty())
      throw ConfigError(fmt::format("--hosts: empty host name in `{}`", text),
                        "write `--hosts a:4,b:4`");
    hosts.push_back(h);
  }
  return hosts;
}

std::vector<std::string> expand_slurm_nodelist(const std::string& list) {
  std::vector<std::string> out;
  for (const auto& item : split_top(list, "SLURM_JOB_NODELIST")) expand_item(item, out);
  return out;
}

std::vector<int> expand_slurm_tasks(const std::string& text) {
  std::vector<int> out;
  for (const auto& part : split_top(text, "SLURM_NTASKS_PER_NODE")) {
    size_t paren = part.find('(');
    int count = to_count(part.substr(0, paren), "tasks", "SLURM_NTASKS_PER_NODE");
    int repeat = 1;
    if (paren != std::string::npos) {
      if (part.size() < paren + 4 || part.compare(paren, 2, "(x") != 0 || part.back() != ')')
        throw ConfigError(fmt::format("SLURM_NTASKS_PER_NODE: bad item `{}`", part),
                          "items look like `2` or `2(x3)`");
      repeat = to_count(part.substr(paren + 2, part.size() - paren - 3), "repeat",
                        "SLURM_NTASKS_PER_NODE");
    }
    for (int i = 0; i < repeat; ++i) out.push_back(count);
  }
  return out;
}

std::vector<spec::HostSlots> slurm_hosts(const std::function<const char*(const char*)>& getenv_fn) {
  auto get = [&](const char* key) -> std::string {
    const char* v = getenv_fn ? getenv_fn(key) : std::getenv(key);
    return v ? v : "";
  };
  std::string nodelist = get("SLURM_JOB_NODELIST");
  if (nodelist.empty()) nodelist = get("SLURM_NODELIST");
  if (nodelist.empty())
    throw ConfigError("--slurm: SLURM_JOB_NODELIST is not set",
                      "run inside an allocation (salloc/sbatch), or pass --hosts");
  auto names = expand_slurm_nodelist(nodelist);
  std::vector<int> slots(names.size(), 0);
  std::string tasks = get("SLURM_NTASKS_PER_NODE");
  if (tasks.empty()) tasks = get("SLURM_TASKS_PER_NODE");
  if (!tasks.empty()) {
    auto counts = expand_slurm_tasks(tasks);
    // A single number applies to every node.
    if (counts.size() == 1) counts.assign(names.size(), counts[0]);
    if (counts.size() != names.size())
      throw ConfigError(fmt::format("--slurm: {} task counts for {} nodes ({} = `{}`)",
                                    counts.size(), names.size(), "SLURM_NTASKS_PER_NODE", tasks));
    slots = counts;
  } else if (std::string gpus = get("SLURM_GPUS_ON_NODE"); all_digits(gpus)) {
    slots.assign(names.size(), to_count(gpus, "GPUs", "SLURM_GPUS_ON_NODE"));
  }
  std::vector<spec::HostSlots> hosts;
  for (size_t i = 0; i < names.size(); ++i) hosts.push_back({names[i], slots[i]});
  return hosts;
}

std::vector<HostPlan> plan_hosts(const std::vector<spec::HostSlots>& hosts, int procs_per_node,
                                 int world_size) {
  if (hosts.empty()) throw ConfigError("no hosts to launch on", "pass --hosts a:4,b:4");
  std::set<std::string> seen;
  int total = 0;
  for (const auto& h : hosts) {
    if (!seen.insert(h.host).second)
      throw ConfigError(fmt::format("host `{}` is listed twice", h.host),
                        "list each host once with its slots");
    int slots = h.slots > 0 ? h.slots : procs_per_node;
    if (h.slots < 0 || slots <= 0)
      throw ConfigError(fmt::format("host `{}` has zero slots", h.host),
                        "give every host at least one slot (`host:N` or `host slots=N`)");
    total += slots;
  }
  if (world_size > total)
    throw ConfigError(fmt::format("the job needs {} ranks but the {} host(s) have {} slot(s)",
                                  world_size, hosts.size(), total),
                      "add hosts or slots, or lower parallel.data/tensor/pipeline");
  std::vector<HostPlan> plan;
  int next = 0;
  for (const auto& h : hosts) {
    if (next >= world_size) break;
    HostPlan p;
    p.host = h.host;
    p.node_rank = static_cast<int>(plan.size());
    p.slots = h.slots > 0 ? h.slots : procs_per_node;
    p.first_rank = next;
    p.procs = std::min(p.slots, world_size - next);
    next += p.procs;
    plan.push_back(p);
  }
  return plan;
}

}  // namespace ptrain::launch

namespace ptrain::launch {

std::vector<size_t> place_servers(const std::vector<HostPlan>& plan, int servers,
                                  const std::vector<std::string>& server_hosts) {
  std::vector<size_t> out;
  if (servers <= 0 || plan.empty()) return out;
  std::string names;
  for (const auto& p : plan) names += fmt::format("{}{}", names.empty() ? "" : ", ", p.host);
  std::vector<size_t> named;
  for (const auto& h : server_hosts) {
    size_t i = 0;
    while (i < plan.size() && plan[i].host != h) ++i;
    if (i == plan.size())
      throw ConfigError(
          fmt::format("parallel.server_hosts names host `{}`, which is not a host of this job ({})",
                      h, names),
          "name hosts of --hosts / nodes.hosts");
    named.push_back(i);
  }
  std::vector<int> count(plan.size(), 0);
  for (int s = 0; s < servers; ++s) {
    size_t host = named.empty() ? static_cast<size_t>(s) % plan.size()
                                : named[static_cast<size_t>(s) % named.size()];
    out.push_back(host);
    ++count[host];
  }
  for (size_t i = 0; i < plan.size(); ++i)
    if (count[i] > plan[i].procs)
      throw ConfigError(
          fmt::format("parallel.servers: {} parameter server(s) on host {}, which runs {} rank(s)",
                      count[i], plan[i].host, plan[i].procs),
          "a host runs at most one server per rank: use fewer parallel.servers, or give that host "
          "more ranks");
  return out;
}

}  // namespace ptrain::launch
