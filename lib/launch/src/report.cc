#include "ptrain/launch/report.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "ptrain/core/error.h"
#include "ptrain/launch/run_dir.h"
#include "svg_chart.h"

namespace ptrain::launch {
namespace {

namespace fs = std::filesystem;
using detail::Chart;
using detail::ChartMarker;
using detail::ChartSeries;
using detail::html_escape;
using nlohmann::json;

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return "";
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct RunData {
  std::string dir;
  std::string job_yaml;
  json summary;  // null when the run has not finished (or predates summary.json)
  // key -> one series, or one per rank when the metric is a list (rank i at index i).
  std::map<std::string, std::vector<ChartSeries>> metrics;
  std::vector<std::string> order;  // keys in first-seen order
  std::vector<ChartMarker> markers;
  size_t lines = 0, bad_lines = 0;
  double last_step = 0;
};

RunData load(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw ConfigError(fmt::format("'{}' is not a folder", dir),
                      "pass a run folder (runs/<name>-<time>/)");
  const fs::path d(dir);
  bool is_run = false;
  for (const char* f : {"job.yaml", "launcher.log", "metrics.jsonl", "summary.json"})
    is_run = is_run || fs::exists(d / f, ec);
  if (!is_run)
    throw ConfigError(
        fmt::format("'{}' is not a run folder (it has no job.yaml, launcher.log or metrics.jsonl)",
                    dir),
        "pass a folder under the spec's logging.dir, e.g. runs/<name>-<time>/");
  RunData r;
  r.dir = dir;
  r.job_yaml = read_text(d / "job.yaml");
  std::string summary = read_text(d / "summary.json");
  if (!summary.empty()) {
    r.summary = json::parse(summary, nullptr, false);
    if (r.summary.is_discarded() || !r.summary.is_object()) r.summary = nullptr;
  }
  std::ifstream in(d / "metrics.jsonl");
  std::string line;
  double prev_step = -std::numeric_limits<double>::infinity();
  std::set<std::string> seen;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number()) {
      ++r.bad_lines;
      continue;
    }
    ++r.lines;
    double step = j["step"].get<double>();
    bool rewound = step < prev_step;
    if (rewound) r.markers.push_back({step, fmt::format("resumed at step {:g}", step)});
    prev_step = step;
    r.last_step = std::max(r.last_step, step);
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& key = it.key();
      if (key == "step" || key == "total_steps") continue;
      std::vector<double> values;
      if (it->is_number()) {
        values.push_back(it->get<double>());
      } else if (it->is_array() && !it->empty()) {
        for (const auto& v : *it) values.push_back(v.is_number() ? v.get<double>() : NAN);
      } else {
        continue;
      }
      if (seen.insert(key).second) r.order.push_back(key);
      auto& list = r.metrics[key];
      const bool per_rank = it->is_array();
      for (size_t i = 0; i < values.size(); ++i) {
        if (list.size() <= i)
          list.push_back({per_rank ? fmt::format("{} rank {}", key, i) : key, {}, {}, {}});
        ChartSeries& s = list[i];
        if (rewound) s.breaks.push_back(s.x.size());
        s.x.push_back(step);
        s.y.push_back(values[i]);
      }
    }
  }
  if (r.lines == 0)
    throw ConfigError(
        fmt::format(
            "run '{}' has no metrics ({})", dir,
            fs::exists(d / "metrics.jsonl", ec)
                ? (r.bad_lines ? "metrics.jsonl has no valid line" : "metrics.jsonl is empty")
                : "no metrics.jsonl"),
        "a training run writes metrics from its first logged step; a `command:` job writes none");
  // Restarts the launcher recorded: marked where the failed round last reported.
  if (r.summary.is_object() && r.summary.contains("restarts") && r.summary["restarts"].is_array()) {
    r.markers.clear();  // the summary's account replaces the rewinds seen in the metrics
    for (const auto& x : r.summary["restarts"]) {
      double at = x.value("last_step", json()).is_number() ? x["last_step"].get<double>() : 0;
      r.markers.push_back(
          {at, fmt::format("restart {}: rank {} {}", x.value("round", 0), x.value("rank", -1),
                           x.value("reason", std::string("failed")))});
    }
  }
  return r;
}

std::string fmt_value(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return fmt::format("{:.6g}", v.get<double>());
  if (v.is_null()) return "—";
  return v.dump();
}

// Charts in a fixed order of known groups, then every other numeric metric alone.
struct Group {
  const char* id;
  const char* title;
  const char* y_label;
  std::vector<std::string> keys;
};

const std::vector<Group>& groups() {
  static const std::vector<Group> g = {
      {"loss", "Loss", "loss", {"loss", "eval_loss"}},
      {"throughput", "Throughput", "tokens/s", {"tokens_per_s", "samples_per_s"}},
      {"step-time", "Step time", "ms", {"step_ms"}},
      {"memory", "Memory", "MB", {"mem_mb", "optimizer_mb", "gpu_mem_mb"}},
      {"lr", "Learning rate", "lr", {"lr"}},
      {"grad-norm", "Gradient norm", "norm", {"grad_norm"}},
      {"comm", "Communication time", "ms", {"comm_wait_ms", "comm_span_ms"}},
      {"comm-volume", "Communication volume per step", "MB", {"tp_comm_mb", "dp_stat_mb"}},
      {"bubble", "Pipeline bubble", "share of the step", {"bubble"}},
      {"mfu", "Model FLOPs utilisation", "MFU", {"mfu"}},
      {"gflops", "Achieved GFLOP/s", "GFLOP/s", {"gflops"}},
  };
  return g;
}

std::string chart_html(const RunData& r, const std::string& id, const std::string& title,
                       const std::string& y_label, const std::vector<std::string>& keys) {
  Chart c;
  c.id = "chart-" + id;
  c.title = title;
  c.x_label = "step";
  c.y_label = y_label;
  c.markers = r.markers;
  for (const auto& k : keys) {
    auto it = r.metrics.find(k);
    if (it == r.metrics.end()) continue;
    for (const auto& s : it->second) c.series.push_back(s);
  }
  return detail::render_chart(c);
}

std::string mesh_html(const YAML::Node& spec) {
  auto get_int = [&](const char* section, const char* key, int dflt) {
    try {
      if (spec[section] && spec[section][key]) return spec[section][key].as<int>();
    } catch (const YAML::Exception&) {
    }
    return dflt;
  };
  const int dp = get_int("parallel", "data", 1), tp = get_int("parallel", "tensor", 1),
            pp = get_int("parallel", "pipeline", 1), micro = get_int("parallel", "microbatches", 1);
  const int64_t world = int64_t(dp) * tp * pp;
  std::string o = fmt::format(
      "<p>world size <b>{}</b> = data {} × tensor {} × pipeline {}; rank r has tp = r % {}, "
      "dp = (r / {}) % {}, pp = r / {}.",
      world, dp, tp, pp, tp, tp, dp, tp * dp);
  if (pp > 1)
    o +=
        fmt::format(" With {} microbatches the ideal 1F1B/GPipe bubble is (p−1)/(m+p−1) = {:.1f}%.",
                    micro, 100.0 * (pp - 1) / (micro + pp - 1));
  o += "</p>\n";
  if (world > 256 || world < 1) return o;
  // Stages left to right, data ranks top to bottom, tensor ranks side by side in a cell.
  const int cw = 34, ch = 26, gap = 14;
  const int width = 60 + pp * (tp * cw + gap), height = 30 + dp * (ch + 6);
  o += fmt::format(
      "<svg id=\"mesh\" class=\"mesh\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {}\" "
      "width=\"{}\" height=\"{}\">\n",
      width, height, width, height);
  for (int p = 0; p < pp; ++p)
    o += fmt::format("<text x=\"{}\" y=\"14\" class=\"tick\">stage {}</text>\n",
                     60 + p * (tp * cw + gap), p);
  for (int d = 0; d < dp; ++d) {
    o += fmt::format("<text x=\"4\" y=\"{}\" class=\"tick\">dp {}</text>\n", 30 + d * (ch + 6) + 17,
                     d);
    for (int p = 0; p < pp; ++p)
      for (int t = 0; t < tp; ++t) {
        int rank = t + tp * (d + dp * p);
        int x = 60 + p * (tp * cw + gap) + t * cw, y = 22 + d * (ch + 6);
        o += fmt::format(
            "<g class=\"rank\"><title>rank {} (dp {}, tp {}, pp {})</title><rect x=\"{}\" y=\"{}\" "
            "width=\"{}\" height=\"{}\" fill=\"hsl({}, 55%, 80%)\" stroke=\"#555\"/><text x=\"{}\" "
            "y=\"{}\" text-anchor=\"middle\" class=\"tick\">{}</text></g>\n",
            rank, d, t, p, x, y, cw - 2, ch, (p * 67 + t * 23) % 360, x + cw / 2 - 1, y + 17, rank);
      }
  }
  o += "</svg>\n";
  return o;
}

constexpr const char* kStyle = R"(
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1180px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 26px 0 8px; }
table.kv td { padding: 2px 14px 2px 0; vertical-align: top; } table.kv td:first-child { color: #666; }
.status-succeeded { color: #070; font-weight: 600; } .status-failed { color: #b00; font-weight: 600; }
.status-interrupted, .status-running { color: #a60; font-weight: 600; }
.cause { border-left: 4px solid #b00; background: #fff4f4; padding: 8px 12px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { background: #fff; border: 1px solid #ddd; }
svg text { font: 11px system-ui, sans-serif; fill: #333; } svg .title { font-size: 13px; font-weight: 600; }
svg .mark { fill: #c00; }
pre { background: #f6f6f6; padding: 10px; overflow: auto; max-height: 420px; }
table.restarts { border-collapse: collapse; } table.restarts td, table.restarts th { border: 1px solid #ddd; padding: 3px 8px; }
)";

}  // namespace

std::string render_report(const std::string& run_dir) {
  RunData r = load(run_dir);
  YAML::Node spec;
  try {
    spec = YAML::Load(r.job_yaml);
  } catch (const YAML::Exception&) {
    spec = YAML::Node();
  }
  std::string name = spec.IsMap() && spec["name"] && spec["name"].IsScalar()
                         ? spec["name"].as<std::string>()
                         : fs::path(run_dir).filename().string();
  const json& s = r.summary;
  std::string status = s.is_object() && s.contains("status") && s["status"].is_string()
                           ? s["status"].get<std::string>()
                           : "running";
  std::string o = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
  // Nothing may be fetched: the page is the one file.
  o += "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src "
       "'unsafe-inline'; img-src data:\">\n";
  o += fmt::format("<title>ptrain report: {}</title>\n<style>{}</style></head><body>\n",
                   html_escape(name), kStyle);
  o += fmt::format("<h1>{}</h1>\n<p>{} · <span class=\"status-{}\">{}</span></p>\n",
                   html_escape(name), html_escape(fs::absolute(run_dir).string()),
                   html_escape(status), html_escape(status));

  // Summary figures.
  o += "<table class=\"kv\" id=\"summary\">\n";
  auto row = [&](const std::string& k, const std::string& v) {
    o += fmt::format("<tr><td>{}</td><td>{}</td></tr>\n", html_escape(k), html_escape(v));
  };
  if (s.is_object())
    for (const char* k : {"steps", "total_steps", "final_loss", "tokens_per_s", "wall_time_s",
                          "world_size", "exit_code"})
      if (s.contains(k)) row(k, fmt_value(s[k]));
  row("logged steps", fmt::format("{} (last step {:g})", r.lines, r.last_step));
  if (r.bad_lines) row("unreadable metric lines", std::to_string(r.bad_lines));
  o += "</table>\n";

  // Root cause.
  if (status == "failed" || status == "interrupted") {
    o += "<h2>Root cause</h2>\n<div class=\"cause\" id=\"root-cause\">";
    if (s.contains("reason")) o += "<p><b>" + html_escape(fmt_value(s["reason"])) + "</b></p>";
    std::string where;
    if (s.contains("failed_rank")) where += "rank " + fmt_value(s["failed_rank"]);
    if (s.contains("failed_host")) where += " on " + fmt_value(s["failed_host"]);
    if (!where.empty()) o += "<p>" + html_escape(where) + "</p>";
    if (s.contains("exit_codes"))
      o += "<p>exit codes: " + html_escape(s["exit_codes"].dump()) + "</p>";
    o += "</div>\n";
  }
  if (s.is_object() && s.contains("restarts") && s["restarts"].is_array() &&
      !s["restarts"].empty()) {
    o += "<h2>Restarts</h2>\n<table class=\"restarts\" id=\"restarts\"><tr><th>round</th><th>rank"
         "</th><th>reason</th><th>exit code</th><th>time</th><th>last step</th><th>recovery s</th>"
         "</tr>\n";
    for (const auto& x : s["restarts"]) {
      o += "<tr>";
      for (const char* k :
           {"round", "rank", "reason", "exit_code", "time", "last_step", "recovery_s"})
        o += "<td>" + html_escape(x.contains(k) ? fmt_value(x[k]) : "") + "</td>";
      o += "</tr>\n";
    }
    o += "</table>\n";
  }

  // Charts.
  o += "<h2>Training</h2>\n<div class=\"charts\">\n";
  std::set<std::string> charted;
  for (const auto& g : groups()) {
    o += chart_html(r, g.id, g.title, g.y_label, g.keys);
    charted.insert(g.keys.begin(), g.keys.end());
  }
  std::vector<std::string> evals;
  for (const auto& k : r.order)
    if (!charted.count(k) && k.rfind("eval_", 0) == 0) evals.push_back(k);
  if (!evals.empty()) o += chart_html(r, "eval", "Evaluation", "value", evals);
  charted.insert(evals.begin(), evals.end());
  for (const auto& k : r.order)
    if (!charted.count(k)) o += chart_html(r, k, k, k, {k});
  o += "</div>\n";

  o += "<h2>Mesh</h2>\n" + mesh_html(spec);
  o += "<h2>Spec (job.yaml)</h2>\n<pre id=\"spec\">" +
       html_escape(r.job_yaml.empty() ? "(no job.yaml)" : r.job_yaml) + "</pre>\n";
  o += "<p style=\"color:#888\">written by ptrain report</p>\n</body></html>\n";
  return o;
}

std::string write_report(const std::string& run_dir) {
  std::string html = render_report(run_dir);
  RunDir::open(run_dir).write_file("report.html", html);
  return (fs::path(run_dir) / "report.html").string();
}

}  // namespace ptrain::launch
