// The resolved plan: rank placement, parameter counts and a per-rank memory estimate.
#include "ptrain/spec/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "ptrain/core/mesh.h"
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

int64_t gpt_parameters(const ModelSpec& m) {
  const int64_t V = m.vocab, T = m.seq_len, D = m.dim, L = m.layers;
  // wte V·D, wpe T·D, per block 12·D² + 13·D, ln_f 2·D; the LM head is tied to wte.
  return V * D + T * D + L * (12 * D * D + 13 * D) + 2 * D;
}

// The parameters one rank of stage `stage` holds. Tensor parallelism splits the attention and
// MLP matrices (column-parallel biases too) and the vocabulary; layer norms, wpe and
// row-parallel biases stay replicated. With a pipeline the last stage keeps its own copy of
// the wte shard for the tied LM head.
int64_t gpt_stage_parameters(const ModelSpec& m, int t, int stage, int stages, int layers) {
  const int64_t V = m.vocab, T = m.seq_len, D = m.dim;
  int64_t block = 6 * D + (12 * D * D + 7 * D) / t;
  int64_t n = layers * block;
  if (stage == 0) n += V * D / t + T * D;
  if (stage == stages - 1) {
    n += 2 * D;
    if (stages > 1) n += V * D / t;
  }
  return n;
}

// Layers per stage balanced by parameter count: the partition into `pipeline` contiguous runs
// of at least one layer that minimises the largest stage's parameters (stage 0 holds the
// embeddings, the last stage ln_f and its copy of the tied wte); among those, the one with the
// smallest sum of squared stage sizes (the most even).
std::vector<int> balanced_gpt_stages(const ModelSpec& m, int tensor, int pipeline) {
  const int L = m.layers, P = pipeline;
  using Cost = std::pair<int64_t, double>;  // (largest stage, sum of squared stage sizes)
  const Cost kInf{std::numeric_limits<int64_t>::max(), 0};
  // best[s][l]: the cost when stages [0, s) hold layers [0, l).
  std::vector<std::vector<Cost>> best(P + 1, std::vector<Cost>(L + 1, kInf));
  std::vector<std::vector<int>> take(P + 1, std::vector<int>(L + 1, 0));
  best[0][0] = {0, 0};
  for (int st = 1; st <= P; ++st)
    for (int l = st; l <= L - (P - st); ++l)
      for (int n = 1; n <= l - (st - 1); ++n) {
        const Cost& prev = best[st - 1][l - n];
        if (prev.first == kInf.first) continue;
        int64_t size = gpt_stage_parameters(m, tensor, st - 1, P, n);
        Cost cost{std::max(prev.first, size), prev.second + double(size) * double(size)};
        if (cost < best[st][l]) {
          best[st][l] = cost;
          take[st][l] = n;
        }
      }
  std::vector<int> out(static_cast<size_t>(P));
  for (int st = P, l = L; st > 0; --st) {
    out[static_cast<size_t>(st - 1)] = take[st][l];
    l -= take[st][l];
  }
  return out;
}

std::vector<int64_t> mlp_widths(const ModelSpec& m) {
  std::vector<int64_t> w{m.input};
  for (int h : m.hidden) w.push_back(h);
  w.push_back(m.classes);
  return w;
}

int64_t mlp_parameters(const ModelSpec& m) {
  auto w = mlp_widths(m);
  int64_t n = 0;
  for (size_t i = 0; i + 1 < w.size(); ++i) n += w[i] * w[i + 1] + w[i + 1];
  return n;
}

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
  const auto& p = s.parallel;
  if (!p.stages.empty()) return p.stages;
  if (s.model.type == "gpt" && p.pipeline > 1 && s.model.layers >= p.pipeline)
    return balanced_gpt_stages(s.model, p.tensor, p.pipeline);
  int layers = s.model.type == "gpt" ? s.model.layers : static_cast<int>(s.model.hidden.size()) + 1;
  std::vector<int> out(static_cast<size_t>(p.pipeline), layers / p.pipeline);
  for (int i = 0; i < layers % p.pipeline; ++i) ++out[static_cast<size_t>(i)];
  return out;
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
  plan.model_type = m.type;
  plan.global_batch = s.data.batch_size;
  plan.microbatches = p.microbatches;
  plan.grad_accum = t.grad_accum;
  plan.micro_batch = s.data.batch_size / (p.data * p.microbatches * t.grad_accum);
  plan.steps = t.steps;
  const int64_t b = plan.micro_batch;

  plan.stage_layers = stage_layers(s);
  plan.parameters = m.type == "gpt" ? gpt_parameters(m) : mlp_parameters(m);
  plan.tokens_per_step =
      m.type == "gpt" ? int64_t{s.data.batch_size} * m.seq_len : s.data.batch_size;

  const int64_t elem = t.precision == "bf16" ? 2 : 4;
  int64_t state_floats = t.optimizer.type == "adamw" ? 2 : (t.optimizer.momentum > 0 ? 1 : 0);
  if (t.precision == "bf16") ++state_floats;  // fp32 master weights
  const bool async = p.data_mode == "async";

  auto widths = mlp_widths(m);
  int first_layer = 0;
  for (int stage = 0; stage < p.pipeline; ++stage) {
    int n_layers = plan.stage_layers[static_cast<size_t>(stage)];
    RankMemory mem;
    // Microbatches whose activations a stage holds at once: all of them for GPipe, at most
    // pipeline - stage for 1F1B.
    int64_t in_flight = 1;
    if (p.pipeline > 1)
      in_flight =
          p.schedule == "gpipe" ? p.microbatches : std::min(p.microbatches, p.pipeline - stage);
    if (m.type == "gpt") {
      mem.parameters = gpt_stage_parameters(m, p.tensor, stage, p.pipeline, n_layers);
      // Per block, per microbatch (Korthikanti et al. 2022, no recomputation), in 16-bit
      // bytes: seq·b·dim·(10 + 24/t + 5·heads·seq/(dim·t)); scaled to the element size.
      const double S = m.seq_len, D = m.dim, A = m.heads, tp = p.tensor;
      double per_block = S * b * D * (10 + 24 / tp + 5 * A * S / (D * tp)) * (elem / 2.0);
      double act = per_block * n_layers * in_flight;
      if (stage == p.pipeline - 1) act += 2.0 * S * b * m.vocab / tp * 4;  // logits and grad
      mem.activation_bytes = static_cast<int64_t>(act);
    } else {
      int64_t n = 0, outs = 0;
      // Tensor parallel (nn/mlp.h): even layers column-parallel (weight and bias split), odd
      // layers row-parallel (weight split, bias whole), a final even layer whole.
      const int last = static_cast<int>(widths.size()) - 2;
      for (int l = first_layer; l < first_layer + n_layers; ++l) {
        const int64_t w = widths[l] * widths[l + 1], b = widths[l + 1];
        if (p.tensor == 1 || (l % 2 == 0 && l == last))
          n += w + b, outs += b;
        else if (l % 2 == 0)
          n += ceil_div(w + b, p.tensor), outs += ceil_div(b, p.tensor);
        else
          n += ceil_div(w, p.tensor) + b, outs += b;
      }
      mem.parameters = n;
      mem.activation_bytes = 2 * b * outs * elem * in_flight;  // pre- and post-activation
    }
    first_layer += n_layers;
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
      "memory     per rank{}: {} parameters; params {}, grads {}, optimizer {}{}, "
      "activations ~{}; total ~{}",
      plan.pipeline > 1 ? fmt::format(" (largest: stage {})", plan.largest_stage) : std::string(),
      with_commas(m.parameters), format_bytes(m.param_bytes), format_bytes(m.grad_bytes),
      format_bytes(m.optimizer_bytes),
      plan.data_mode == "async" ? " (held by the parameter servers)" : "",
      format_bytes(m.activation_bytes), format_bytes(m.total_bytes())));
  const char* unit = plan.model_type == "gpt" ? "sequences" : "samples";
  line(fmt::format(
      "batch      global {} {} = data {} x grad_accum {} x microbatches {} x micro "
      "batch {}",
      plan.global_batch, unit, plan.data, plan.grad_accum, plan.microbatches, plan.micro_batch));
  if (plan.model_type == "gpt")
    line(fmt::format("step       {} tokens per step, {} steps", with_commas(plan.tokens_per_step),
                     with_commas(plan.steps)));
  else
    line(fmt::format("step       {} samples per step, {} steps", with_commas(plan.tokens_per_step),
                     with_commas(plan.steps)));
  return out;
}

}  // namespace ptrain::spec
