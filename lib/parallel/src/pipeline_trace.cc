// Chrome trace (Perfetto) output: each rank writes its spans as a fragment, one rank joins the
// fragments into RUN_DIR/trace.json.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/parallel/pipeline.h"

namespace ptrain::parallel {

TraceRecorder::TraceRecorder(size_t max_spans)
    : max_spans_(max_spans), mono_origin_(mono_seconds()), unix_origin_us_(double(unix_micros())) {}

void TraceRecorder::add(std::string name, std::string cat, double mono_begin, double mono_end) {
  if (spans_.size() >= max_spans_) {
    ++dropped_;
    return;
  }
  spans_.push_back({std::move(name), std::move(cat),
                    unix_origin_us_ + (mono_begin - mono_origin_) * 1e6,
                    (mono_end - mono_begin) * 1e6});
}

namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\')
      out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20)
      out += fmt::format("\\u{:04x}", int(c));
    else
      out += c;
  }
  return out + "\"";
}

std::string piece_path(const std::string& dir, int rank) {
  return fmt::format("{}/trace-rank-{}.json", dir, rank);
}

}  // namespace

std::string trace_events_json(const std::vector<TraceSpan>& spans, int rank,
                              const std::string& label) {
  std::string out = fmt::format(
      R"({{"name": "process_name", "ph": "M", "pid": {}, "tid": 0, "args": {{"name": {}}}}})", rank,
      json_string(label));
  out += fmt::format(
      R"(,
{{"name": "process_sort_index", "ph": "M", "pid": {}, "tid": 0, "args": {{"sort_index": {}}}}})",
      rank, rank);
  for (const auto& s : spans)
    out += fmt::format(
        R"(,
{{"name": {}, "cat": {}, "ph": "X", "ts": {:.3f}, "dur": {:.3f}, "pid": {}, "tid": 0}})",
        json_string(s.name), json_string(s.cat), s.start_us, s.dur_us, rank);
  return out;
}

void write_trace_piece(const std::string& dir, int rank, const std::vector<TraceSpan>& spans,
                       const std::string& label) {
  const std::string path = piece_path(dir, rank);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << trace_events_json(spans, rank, label);
    if (!f.good()) throw IoError(fmt::format("cannot write trace piece '{}'", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw IoError(fmt::format("cannot rename '{}' to '{}'", tmp, path));
}

int merge_trace_pieces(const std::string& dir, int world) {
  const std::string path = dir + "/trace.json";
  const std::string tmp = path + ".tmp";
  int found = 0;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
    for (int r = 0; r < world; ++r) {
      std::ifstream in(piece_path(dir, r), std::ios::binary);
      if (!in) continue;
      std::stringstream body;
      body << in.rdbuf();
      if (found++) out << ",\n";
      out << body.str();
    }
    out << "\n]}\n";
    if (!out.good()) throw IoError(fmt::format("cannot write '{}'", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw IoError(fmt::format("cannot rename '{}' to '{}'", tmp, path));
  for (int r = 0; r < world; ++r) std::remove(piece_path(dir, r).c_str());
  return found;
}

}  // namespace ptrain::parallel
