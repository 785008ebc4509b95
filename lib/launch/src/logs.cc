#include "ptrain/launch/logs.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <thread>

#include "ptrain/core/error.h"

namespace ptrain::launch {

namespace fs = std::filesystem;

namespace {

constexpr size_t kStampLen = 23;  // "2026-11-26 23:42:07.123"

struct Source {
  int rank;
  std::string path;
  std::streamoff offset = 0;
  std::string partial;  // a line still being written
};

struct Entry {
  std::string stamp;
  int rank;
  size_t seq;
  std::string line;  // the whole line, timestamp included
};

// Nodes per rank from launcher.log ("rank R started on NODE: pid P").
std::map<int, std::string> read_nodes(const std::string& run_dir) {
  std::map<int, std::string> nodes;
  std::ifstream in(run_dir + "/launcher.log");
  std::string line;
  static const std::regex re(R"(rank (\d+) started on (\S+): pid)");
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_search(line, m, re)) nodes[std::stoi(m[1])] = m[2];
  return nodes;
}

std::vector<Source> find_sources(const std::string& run_dir, const std::vector<int>& ranks) {
  std::vector<Source> out;
  static const std::regex re(R"(rank-(\d+)\.log)");
  std::smatch m;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    std::string name = entry.path().filename().string();
    if (!std::regex_match(name, m, re)) continue;
    int rank = std::stoi(m[1]);
    if (!ranks.empty() && std::find(ranks.begin(), ranks.end(), rank) == ranks.end()) continue;
    out.push_back({rank, entry.path().string(), 0, {}});
  }
  std::sort(out.begin(), out.end(),
            [](const Source& a, const Source& b) { return a.rank < b.rank; });
  return out;
}

// Reads the complete lines added since the last call.
void read_new(Source& s, std::vector<Entry>& entries, size_t& seq) {
  std::ifstream in(s.path, std::ios::binary);
  if (!in) return;
  in.seekg(s.offset);
  std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  s.offset += static_cast<std::streamoff>(chunk.size());
  s.partial += chunk;
  size_t start = 0, nl;
  while ((nl = s.partial.find('\n', start)) != std::string::npos) {
    std::string line = s.partial.substr(start, nl - start);
    std::string stamp = line.size() >= kStampLen ? line.substr(0, kStampLen) : std::string();
    entries.push_back({stamp, s.rank, seq++, std::move(line)});
    start = nl + 1;
  }
  s.partial.erase(0, start);
}

}  // namespace

size_t print_logs(const std::string& run_dir, const LogsOptions& options, std::FILE* out) {
  if (!fs::is_directory(run_dir) || !fs::exists(fs::path(run_dir) / "job.yaml"))
    throw IoError(fmt::format("'{}' is not a run folder (no job.yaml)", run_dir),
                  "pass a folder under logging.dir, e.g. runs/<name>-<time>");
  std::optional<std::regex> pattern;
  if (!options.grep.empty()) {
    try {
      pattern.emplace(options.grep);
    } catch (const std::regex_error& e) {
      throw ConfigError(fmt::format("--grep '{}': {}", options.grep, e.what()));
    }
  }
  auto nodes = read_nodes(run_dir);
  std::set<std::string> distinct;
  for (const auto& [r, n] : nodes) distinct.insert(n);
  bool show_node = distinct.size() > 1;

  std::vector<Source> sources = find_sources(run_dir, options.ranks);
  // A rank with no log in a run that has ended is a mistake, not an empty log.
  if (!options.follow || fs::exists(fs::path(run_dir) / "summary.json")) {
    std::vector<Source> all = find_sources(run_dir, {});
    for (int r : options.ranks)
      if (std::none_of(all.begin(), all.end(), [&](const Source& s) { return s.rank == r; }))
        throw ConfigError(
            fmt::format("--rank {}: '{}' has no log of rank {}", r, run_dir, r),
            all.empty() ? std::string("the run has no rank logs")
                        : fmt::format("its ranks are {}-{}", all.front().rank, all.back().rank));
  }
  size_t printed = 0, seq = 0;
  Deadline deadline(options.follow_timeout);
  while (true) {
    // Decide before reading: lines written before summary.json are then all seen.
    bool ended = !options.follow || fs::exists(fs::path(run_dir) / "summary.json");
    if (options.follow) {
      // Ranks whose logs appear later (slow start) join the merge.
      for (auto& s : find_sources(run_dir, options.ranks))
        if (std::none_of(sources.begin(), sources.end(),
                         [&](const Source& t) { return t.rank == s.rank; }))
          sources.push_back(std::move(s));
    }
    std::vector<Entry> entries;
    for (auto& s : sources) read_new(s, entries, seq);
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return a.stamp != b.stamp ? a.stamp < b.stamp : a.seq < b.seq;
    });
    for (const auto& e : entries) {
      std::string text = e.line.size() > kStampLen ? e.line.substr(kStampLen + 1) : e.line;
      if (pattern && !std::regex_search(text, *pattern)) continue;
      auto node = nodes.find(e.rank);
      std::string prefix = show_node && node != nodes.end()
                               ? fmt::format("[{}:{}]", node->second, e.rank)
                               : fmt::format("[rank {}]", e.rank);
      fmt::print(out, "{} {}\n", prefix, e.line);
      ++printed;
    }
    std::fflush(out);
    if (ended || deadline.expired()) break;
    std::this_thread::sleep_for(options.poll_interval);
  }
  return printed;
}

}  // namespace ptrain::launch
