// Hostfiles in the DeepSpeed/OpenMPI format: `host slots=N` per line, `#` comments.
#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "input_guard.h"
#include "ptrain/core/error.h"
#include "ptrain/spec/spec.h"

namespace ptrain::spec {

std::vector<HostSlots> parse_hostfile(const std::string& text, const std::string& display_name) {
  std::vector<HostSlots> hosts;
  std::istringstream in(text);
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    // Tokens with their columns.
    std::vector<std::pair<std::string, int>> tokens;
    for (size_t i = 0; i < line.size();) {
      if (std::isspace(static_cast<unsigned char>(line[i]))) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < line.size() && !std::isspace(static_cast<unsigned char>(line[j]))) ++j;
      tokens.emplace_back(line.substr(i, j - i), static_cast<int>(i));
      i = j;
    }
    if (tokens.empty()) {
      ++lineno;
      continue;
    }
    auto at = [&](int col) { return detail::position(display_name, lineno, col); };
    HostSlots h{tokens[0].first, 0};
    for (const auto& prev : hosts)
      if (prev.host == h.host)
        throw ConfigError(
            fmt::format("{}: host `{}` is listed twice", at(tokens[0].second), h.host),
            "list each host once with its slots=N");
    for (size_t k = 1; k < tokens.size(); ++k) {
      const auto& [tok, col] = tokens[k];
      auto eq = tok.find('=');
      std::string key = tok.substr(0, eq);
      if (eq == std::string::npos || (key != "slots" && key != "max_slots"))
        throw ConfigError(fmt::format("{}: unexpected `{}`", at(col), tok),
                          "each line is `host slots=N` (max_slots=M is accepted and ignored)");
      std::string num = tok.substr(eq + 1);
      bool ok = !num.empty() && num.size() <= 6 &&
                std::all_of(num.begin(), num.end(), [](char c) { return std::isdigit(c); });
      int value = ok ? std::stoi(num) : 0;
      if (!ok || value < 1 || value > 4096)
        throw ConfigError(fmt::format("{}: {} must be a whole number from 1 to 4096, got `{}`",
                                      at(col + static_cast<int>(eq) + 1), key, num),
                          "write e.g. `node1 slots=4`");
      if (key == "slots") h.slots = value;
    }
    hosts.push_back(h);
    ++lineno;
  }
  if (hosts.empty())
    throw ConfigError(fmt::format("{}: the hostfile lists no hosts", display_name),
                      "write one `host slots=N` line per host");
  return hosts;
}

std::vector<HostSlots> resolve_hosts(const JobSpec& spec) {
  if (spec.nodes.hostfile.empty()) return spec.nodes.hosts;
  std::string text = detail::read_spec_file(spec.nodes.hostfile, kMaxSpecBytes);
  return parse_hostfile(text, spec.nodes.hostfile);
}

}  // namespace ptrain::spec
