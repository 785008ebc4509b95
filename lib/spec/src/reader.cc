#include "reader.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "input_guard.h"
#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/core/strings.h"

namespace ptrain::spec::detail {

int edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<int>> d(n + 1, std::vector<int>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = static_cast<int>(i);
  for (size_t j = 0; j <= m; ++j) d[0][j] = static_cast<int>(j);
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

static std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::optional<std::string> closest(const std::string& word,
                                   const std::vector<std::string>& choices) {
  std::optional<std::string> best;
  int best_d = 1 << 30;
  for (const auto& c : choices) {
    int dist = edit_distance(lower(word), lower(c));
    if (dist < best_d) {
      best_d = dist;
      best = c;
    }
  }
  // Allow about one edit per three letters, at least one.
  int budget =
      std::max<int>(1, static_cast<int>(std::min(word.size(), best ? best->size() : 0)) / 3);
  if (best && best_d <= budget) return best;
  return std::nullopt;
}

static std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::string Reader::where(const std::string& path, const YAML::Node& node) const {
  for (auto it = overrides_.rbegin(); it != overrides_.rend(); ++it) {
    if (path == it->path || path.rfind(it->path + ".", 0) == 0 ||
        std::find(it->created.begin(), it->created.end(), path) != it->created.end())
      return "--set " + it->text;
  }
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return position(display_, 0, 0);
  return position(display_, mark.line, mark.column);
}

void Reader::fail(const std::string& path, const YAML::Node& node, const std::string& what,
                  const std::string& hint) const {
  std::string at = where(path, node);
  if (path.empty()) throw ConfigError(printable(fmt::format("{}: {}", at, what)), printable(hint));
  throw ConfigError(printable(fmt::format("{}: {}: {}", at, path, what)), printable(hint));
}

std::string Reader::where_any(std::initializer_list<std::string> paths) const {
  for (const auto& p : paths) {
    auto it = seen_.find(p);
    if (it != seen_.end()) return it->second + ": " + p;
  }
  // None was set: point at the nearest section of the first path that was.
  std::string p = paths.size() ? *paths.begin() : std::string();
  while (!p.empty()) {
    auto dot = p.rfind('.');
    p = dot == std::string::npos ? std::string() : p.substr(0, dot);
    auto it = seen_.find(p);
    if (!p.empty() && it != seen_.end()) return it->second + ": " + *paths.begin();
  }
  return position(display_, 0, 0) + ": " + (paths.size() ? *paths.begin() : std::string());
}

void Reader::fail_at(std::initializer_list<std::string> paths, const std::string& what,
                     const std::string& hint) const {
  throw ConfigError(printable(fmt::format("{}: {}", where_any(paths), what)), printable(hint));
}

void Reader::warn_at(std::initializer_list<std::string> paths, const std::string& what) const {
  spdlog::warn("{}", printable(fmt::format("{}: {}", where_any(paths), what)));
}

static const char* kind_name(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Null:
      return "nothing";
    default:
      return "a scalar";
  }
}

std::string Reader::scalar(const std::string& path, const YAML::Node& node) const {
  if (node.IsNull()) return "";
  if (!node.IsScalar())
    fail(path, node, fmt::format("expected a single value, got {}", kind_name(node)),
         "write a plain value such as `4` or `name`");
  const std::string& raw = node.Scalar();
  std::string out;
  for (size_t i = 0; i < raw.size();) {
    if (raw.compare(i, 3, "$${") == 0) {
      out += "${";
      i += 3;
      continue;
    }
    if (raw.compare(i, 2, "${") != 0) {
      out += raw[i++];
      continue;
    }
    size_t close = raw.find('}', i + 2);
    if (close == std::string::npos)
      fail(path, node, fmt::format("unterminated `${{` in `{}`", raw),
           "write ${NAME} or ${NAME:-default}; $${ stands for a literal ${");
    std::string inner = raw.substr(i + 2, close - i - 2);
    std::string name = inner, fallback;
    bool has_fallback = false;
    if (auto sep = inner.find(":-"); sep != std::string::npos) {
      name = inner.substr(0, sep);
      fallback = inner.substr(sep + 2);
      has_fallback = true;
    }
    bool valid = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0])) &&
                 std::all_of(name.begin(), name.end(), [](char c) {
                   return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                 });
    if (!valid)
      fail(path, node,
           fmt::format("`${{{}}}` is not a valid environment variable reference", inner),
           "names are letters, digits and _; write ${NAME} or ${NAME:-default}");
    auto value = env_get(name.c_str());
    if (value && !value->empty()) {
      out += *value;
    } else if (has_fallback) {
      out += fallback;
    } else {
      fail(path, node, fmt::format("environment variable {} is not set", name),
           fmt::format("export {}=... before running, or write ${{{}:-default}}", name, name));
    }
    i = close + 1;
  }
  return out;
}

int64_t Reader::as_int(const std::string& path, const YAML::Node& node, int64_t lo,
                       int64_t hi) const {
  std::string text = scalar(path, node);
  int64_t value = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  if (begin != end && *begin == '+') ++begin;
  auto [ptr, ec] = std::from_chars(begin, end, value);
  if (text.empty() || ec != std::errc() || ptr != end) {
    if (ec == std::errc::result_out_of_range)
      fail(path, node, fmt::format("`{}` is out of range", text),
           fmt::format("use a whole number from {} to {}", lo, hi));
    fail(path, node,
         fmt::format("expected an integer, got {}",
                     node.IsScalar() ? fmt::format("`{}`", text) : kind_name(node)),
         fmt::format("use a whole number from {} to {}", lo, hi));
  }
  if (value < lo || value > hi) {
    std::string hint = lo >= 1 && value <= 0
                           ? fmt::format("sizes and counts start at {}", lo)
                           : fmt::format("use a whole number from {} to {}", lo, hi);
    if (value < lo) fail(path, node, fmt::format("must be at least {}, got {}", lo, value), hint);
    fail(path, node, fmt::format("must be at most {}, got {}", hi, value), hint);
  }
  return value;
}

double Reader::as_double(const std::string& path, const YAML::Node& node, double lo, double hi,
                         bool lo_exclusive) const {
  std::string text = scalar(path, node);
  char* end = nullptr;
  double value = text.empty() ? 0 : std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(value))
    fail(path, node,
         fmt::format("expected a number, got {}",
                     node.IsScalar() ? fmt::format("`{}`", text) : kind_name(node)),
         "write a number such as `0.5` or `3.0e-4`");
  bool low = lo_exclusive ? value <= lo : value < lo;
  if (low || value > hi) {
    std::string range =
        lo_exclusive ? fmt::format("greater than {}", lo) : fmt::format("at least {}", lo);
    if (hi < 1e300) range += fmt::format(" and at most {}", hi);
    fail(path, node, fmt::format("must be {}, got {}", range, text),
         "check the value against configs/README.md");
  }
  return value;
}

bool Reader::as_bool(const std::string& path, const YAML::Node& node) const {
  std::string text = lower(scalar(path, node));
  if (text == "true" || text == "yes" || text == "on") return true;
  if (text == "false" || text == "no" || text == "off") return false;
  fail(path, node,
       fmt::format("expected true or false, got {}",
                   node.IsScalar() ? fmt::format("`{}`", node.Scalar()) : kind_name(node)),
       "write `true` or `false`");
}

std::string Reader::as_string(const std::string& path, const YAML::Node& node) const {
  return scalar(path, node);
}

std::string Reader::as_enum(const std::string& path, const YAML::Node& node,
                            const std::vector<std::string>& choices) const {
  std::string text = scalar(path, node);
  if (std::find(choices.begin(), choices.end(), text) != choices.end()) return text;
  auto guess = closest(text, choices);
  fail(path, node,
       fmt::format("expected one of {}, got {}", join(choices, "|"),
                   node.IsScalar() ? fmt::format("`{}`", text) : kind_name(node)),
       guess ? fmt::format("did you mean `{}`?", *guess)
             : fmt::format("use one of {}", join(choices, ", ")));
}

std::vector<std::string> Reader::as_string_list(const std::string& path,
                                                const YAML::Node& node) const {
  if (!node.IsSequence())
    fail(path, node, fmt::format("expected a list, got {}", kind_name(node)),
         "write a list such as `[a, b]`");
  std::vector<std::string> out;
  for (size_t i = 0; i < node.size(); ++i) {
    out.push_back(scalar(fmt::format("{}[{}]", path, i), node[i]));
  }
  return out;
}

std::vector<int> Reader::as_int_list(const std::string& path, const YAML::Node& node, int lo,
                                     int hi) const {
  if (!node.IsSequence())
    fail(path, node, fmt::format("expected a list of integers, got {}", kind_name(node)),
         "write a list such as `[2, 2]`");
  std::vector<int> out;
  for (size_t i = 0; i < node.size(); ++i)
    out.push_back(static_cast<int>(as_int(fmt::format("{}[{}]", path, i), node[i], lo, hi)));
  return out;
}

MapView::MapView(Reader& reader, const YAML::Node& node, std::string path)
    : reader_(reader), path_(std::move(path)) {
  if (node.IsNull()) return;
  if (!node.IsMap())
    reader_.fail(path_, node,
                 fmt::format("expected a mapping of `key: value` lines, got {}", kind_name(node)),
                 "indent the keys of this section under it");
  for (auto it = node.begin(); it != node.end(); ++it) {
    YAML::Node key = it->first;  // copies: the iterator's proxy is a temporary
    YAML::Node value = it->second;
    if (!key.IsScalar()) reader_.fail(path_, key, "keys must be plain words", "write `key: value`");
    const std::string& name = key.Scalar();
    std::string child = join_path(path_, name);
    if (name == "<<")
      reader_.fail(child, key, "merge keys (`<<`) are not supported",
                   "write the keys out in this section");
    if (auto seen = keys_.find(name); seen != keys_.end()) {
      const YAML::Mark first = seen->second.Mark();
      reader_.fail(
          child, key,
          fmt::format("duplicate key; `{}` is already set on line {}", name, first.line + 1),
          "YAML keys must be unique within a section; keep one of them");
    }
    keys_.emplace(name, key);
    values_.emplace(name, value);
    order_.push_back(name);
    if (value.Mark().is_null())
      reader_.record(child, key);
    else
      reader_.record(child, value);
  }
}

void MapView::allow(const std::vector<std::string>& known) const {
  for (const auto& name : order_) {
    if (std::find(known.begin(), known.end(), name) != known.end()) continue;
    auto guess = closest(name, known);
    reader_.fail(join_path(path_, name), keys_.at(name), "unknown key",
                 guess ? fmt::format("did you mean `{}`?", *guess)
                       : fmt::format("the keys here are: {}", join(known, ", ")));
  }
}

void MapView::read(const std::string& key, int& out, int64_t lo, int64_t hi) const {
  if (has(key)) out = static_cast<int>(reader_.as_int(path(key), get(key), lo, hi));
}
void MapView::read(const std::string& key, int64_t& out, int64_t lo, int64_t hi) const {
  if (has(key)) out = reader_.as_int(path(key), get(key), lo, hi);
}
void MapView::read(const std::string& key, uint64_t& out) const {
  if (has(key)) out = static_cast<uint64_t>(reader_.as_int(path(key), get(key), 0, INT64_MAX));
}
void MapView::read(const std::string& key, double& out, double lo, double hi,
                   bool lo_exclusive) const {
  if (has(key)) out = reader_.as_double(path(key), get(key), lo, hi, lo_exclusive);
}
void MapView::read(const std::string& key, bool& out) const {
  if (has(key)) out = reader_.as_bool(path(key), get(key));
}
void MapView::read(const std::string& key, std::string& out) const {
  if (has(key)) out = reader_.as_string(path(key), get(key));
}
void MapView::read_enum(const std::string& key, std::string& out,
                        const std::vector<std::string>& choices) const {
  if (has(key)) out = reader_.as_enum(path(key), get(key), choices);
}

}  // namespace ptrain::spec::detail
