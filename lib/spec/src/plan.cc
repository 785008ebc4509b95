// The resolved plan: rank placement, parameter counts and a per-rank memory estimate.
#include "ptrain/spec/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "ptrain/core/mesh.h"
#include "ptrain/spec/elastic.h"
#include "ptrain/spec/model_schema.h"
#include "ptrain/spec/spec.h"

namespace ptrain::spec {

RankPlace rank_coords(int rank, int data, int tensor) {
  // The pipeline extent does not change a rank's coordinates, so any pp >= 1 does here.
  ptrain::MeshCoords c =
      ptrain::coords_of(rank, ptrain::MeshShape{.dp = data, .tp = tensor, .pp = 1});
  RankPlace p;
  p.rank = rank;
  p.tp = c.tp;
  p.dp = c.dp;
  p.pp = c.pp;
  return p;
}

namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

std::string rank_range(const std::vector<int>& ranks) {
  if (ranks.empty()) return "-";
  if (ranks.size() == 1) return std::to_string(ranks[0]);
  return fmt::format("{}-{}", ranks.front(), ranks.back());
}

std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out = n < 0 ? "-" : "";
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

}  // namespace

std::vector<int> stage_layers(const JobSpec& s) {
  if (!s.parallel.stages.empty()) return s.parallel.stages;
  return model_schema(s.model.type).default_stages(s);
}

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, units[u]);
}

Plan make_plan(const JobSpec& s) {
  Plan plan;
  const ParallelSpec& p = s.parallel;
  plan.name = s.name;
  plan.launcher_only = s.launcher_only();
  plan.command = s.command;
  plan.device = s.nodes.device;
  plan.data = p.data;
  plan.tensor = p.tensor;
  plan.pipeline = p.pipeline;
  plan.world_size = s.world_size();
  plan.data_mode = p.data_mode;
  plan.zero = p.zero;
  if (s.nodes.min_nodes > 0 && s.nodes.min_nodes < static_cast<int>(s.nodes.hosts.size())) {
    plan.min_nodes = s.nodes.min_nodes;
    plan.shrink_worlds = shrink_world_sizes(s);
  }

  int rank = 0;
  for (size_t i = 0; i < s.nodes.hosts.size(); ++i) {
    const HostSlots& h = s.nodes.hosts[i];
    HostRanks hr{h.host, {}};
    int slots = h.slots ? h.slots : s.nodes.procs_per_node;
    for (int local = 0; local < slots && rank < plan.world_size; ++local, ++rank) {
      RankPlace place = rank_coords(rank, p.data, p.tensor);
      place.host_index = static_cast<int>(i);
      place.local_rank = local;
      plan.ranks.push_back(place);
      hr.ranks.push_back(rank);
    }
    plan.hosts.push_back(std::move(hr));
  }
  if (plan.launcher_only) return plan;

  const ModelSpec& m = s.model;
  const TrainSpec& t = s.train;
  const ModelSchema& schema = model_schema(m.type);
  plan.model_type = m.type;
  plan.sample_word = schema.sample_word();
  plan.target_word = schema.target_word();
  plan.global_batch = s.data.batch_size;
  plan.microbatches = p.microbatches;
  plan.grad_accum = t.grad_accum;
  plan.micro_batch = s.data.batch_size / (p.data * p.microbatches * t.grad_accum);
  plan.steps = t.steps;

  plan.stage_layers = stage_layers(s);
  plan.parameters = schema.parameters(m);
  plan.notes = schema.plan_notes(s);
  plan.tokens_per_step = int64_t{s.data.batch_size} * schema.targets_per_sample(m);

  const int elem = t.precision == "bf16" ? 2 : 4;
  int64_t state_floats = t.optimizer.type == "adamw" ? 2 : (t.optimizer.momentum > 0 ? 1 : 0);
  if (t.precision == "bf16") ++state_floats;  // fp32 master weights
  const bool async = p.data_mode == "async";

  int first_layer = 0;
  for (int stage = 0; stage < p.pipeline; ++stage) {
    int n_layers = plan.stage_layers[static_cast<size_t>(stage)];
    // Microbatches whose activations a stage holds at once: all of them for GPipe, at most
    // pipeline - stage for 1F1B.
    int64_t in_flight = 1;
    if (p.pipeline > 1)
      in_flight =
          p.schedule == "gpipe" ? p.microbatches : std::min(p.microbatches, p.pipeline - stage);
    StageFigures fig =
        schema.stage_figures(s, stage, first_layer, n_layers, plan.micro_batch, in_flight, elem);
    first_layer += n_layers;
    RankMemory mem;
    mem.parameters = fig.parameters;
    mem.activation_bytes = static_cast<int64_t>(fig.activation_bytes);
    mem.buffer_bytes = fig.buffers * 4;
    mem.param_bytes = mem.parameters * elem;
    mem.grad_bytes = mem.parameters * elem;
    int64_t opt = async ? 0 : mem.parameters * state_floats * 4;
    mem.optimizer_bytes = p.zero == 1 ? ceil_div(opt, p.data) : opt;
    if (mem.total_bytes() > plan.memory.total_bytes()) {
      plan.memory = mem;
      plan.largest_stage = stage;
    }
  }
  return plan;
}

std::string format_plan(const Plan& plan) {
  std::string out;
  auto line = [&](const std::string& s) { out += s + "\n"; };
  if (plan.launcher_only) {
    std::string cmd;
    for (const auto& a : plan.command) cmd += (cmd.empty() ? "" : " ") + a;
    line(fmt::format("job {}: launcher only, runs `{}` on every worker", plan.name, cmd));
  } else {
    line(fmt::format("job {}: built-in {} training on device {}", plan.name, plan.model_type,
                     plan.device));
  }
  std::string workers =
      fmt::format("{} worker{}", plan.world_size, plan.world_size == 1 ? "" : "s");
  if (plan.launcher_only)
    line(fmt::format("world      {}", workers));
  else
    line(fmt::format("world      {} = data {} x tensor {} x pipeline {}  ({} data parallel{})",
                     workers, plan.data, plan.tensor, plan.pipeline, plan.data_mode,
                     plan.zero ? ", ZeRO-1" : ""));
  size_t width = 4;
  for (const auto& h : plan.hosts) width = std::max(width, h.host.size());
  line("hosts");
  for (const auto& h : plan.hosts)
    line(fmt::format("  {:<{}}  ranks {}", h.host, width, rank_range(h.ranks)));
  if (plan.world_size <= 64 && plan.world_size > 1) {
    line(fmt::format("ranks      {:>4}  {:<{}}  {:>5}  {:>2} {:>2} {:>2}", "rank", "host", width,
                     "local", "dp", "tp", "pp"));
    for (const auto& r : plan.ranks)
      line(fmt::format("           {:>4}  {:<{}}  {:>5}  {:>2} {:>2} {:>2}", r.rank,
                       plan.hosts[static_cast<size_t>(r.host_index)].host, width, r.local_rank,
                       r.dp, r.tp, r.pp));
  }
  if (plan.min_nodes > 0) {
    std::string worlds;
    for (int w : plan.shrink_worlds) worlds += (worlds.empty() ? "" : ", ") + std::to_string(w);
    line(fmt::format("elastic    min_nodes {} of {} hosts: {}", plan.min_nodes, plan.hosts.size(),
                     worlds.empty() ? std::string("cannot shrink (no smaller set of hosts keeps "
                                                  "the mesh and the global batch)")
                                    : "can shrink to world sizes " + worlds));
  }
  if (plan.launcher_only) return out;
  line(fmt::format("parameters {} ({:.2f} M)", with_commas(plan.parameters),
                   static_cast<double>(plan.parameters) / 1e6));
  if (plan.pipeline > 1) {
    std::string stages;
    for (int n : plan.stage_layers) stages += (stages.empty() ? "" : ", ") + std::to_string(n);
    line(fmt::format("stages     [{}] layers", stages));
  }
  const RankMemory& m = plan.memory;
  line(fmt::format(
      "memory     per rank{}: {} parameters; params {}, grads {}, optimizer {}{}{}, "
      "activations ~{}; total ~{}",
      plan.pipeline > 1 ? fmt::format(" (largest: stage {})", plan.largest_stage) : std::string(),
      with_commas(m.parameters), format_bytes(m.param_bytes), format_bytes(m.grad_bytes),
      format_bytes(m.optimizer_bytes),
      plan.data_mode == "async" ? " (held by the parameter servers)" : "",
      m.buffer_bytes ? fmt::format(", buffers {}", format_bytes(m.buffer_bytes)) : std::string(),
      format_bytes(m.activation_bytes), format_bytes(m.total_bytes())));
  line(
      fmt::format("batch      global {} {} = data {} x grad_accum {} x microbatches {} x micro "
                  "batch {}",
                  plan.global_batch, plan.sample_word, plan.data, plan.grad_accum,
                  plan.microbatches, plan.micro_batch));
  line(fmt::format("step       {} {} per step, {} steps", with_commas(plan.tokens_per_step),
                   plan.target_word, with_commas(plan.steps)));
  for (const auto& n : plan.notes) line(n);
  return out;
}

}  // namespace ptrain::spec
