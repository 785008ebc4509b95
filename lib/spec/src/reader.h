// Typed, position-aware reads from a yaml-cpp node tree: every error names the file, line,
// column and key path (or the `--set` that supplied the value) and carries a hint.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ptrain::spec::detail {

// Optimal string alignment distance (edits, with adjacent transpositions counted as one).
int edit_distance(const std::string& a, const std::string& b);
// The closest of `choices` to `word` when it is close enough to be a likely typo.
std::optional<std::string> closest(const std::string& word,
                                   const std::vector<std::string>& choices);

struct Override {
  std::string path;                  // key.path
  std::string text;                  // the whole `key.path=value` as given
  std::vector<std::string> created;  // sections the override added to the tree
};

class Reader {
 public:
  Reader(std::string display, std::vector<Override> overrides)
      : display_(std::move(display)), overrides_(std::move(overrides)) {}

  const std::string& display() const { return display_; }

  // "file:line:col" of `node`, or "--set k=v" when an override supplied `path`.
  std::string where(const std::string& path, const YAML::Node& node) const;
  [[noreturn]] void fail(const std::string& path, const YAML::Node& node, const std::string& what,
                         const std::string& hint) const;
  // Fails at the first of `paths` that the spec set (or its nearest section that it set).
  [[noreturn]] void fail_at(std::initializer_list<std::string> paths, const std::string& what,
                            const std::string& hint) const;
  // The position fail_at would use.
  std::string where_any(std::initializer_list<std::string> paths) const;
  void warn_at(std::initializer_list<std::string> paths, const std::string& what) const;

  void record(const std::string& path, const YAML::Node& node) { seen_[path] = where(path, node); }
  bool was_set(const std::string& path) const { return seen_.count(path) > 0; }

  // Scalar text with `${VAR}` / `${VAR:-default}` expanded (`$${` stands for a literal `${`).
  std::string scalar(const std::string& path, const YAML::Node& node) const;
  int64_t as_int(const std::string& path, const YAML::Node& node, int64_t lo, int64_t hi) const;
  double as_double(const std::string& path, const YAML::Node& node, double lo, double hi,
                   bool lo_exclusive = false) const;
  bool as_bool(const std::string& path, const YAML::Node& node) const;
  std::string as_string(const std::string& path, const YAML::Node& node) const;
  std::string as_enum(const std::string& path, const YAML::Node& node,
                      const std::vector<std::string>& choices) const;
  std::vector<std::string> as_string_list(const std::string& path, const YAML::Node& node) const;
  std::vector<int> as_int_list(const std::string& path, const YAML::Node& node, int lo,
                               int hi) const;

 private:
  std::string display_;
  std::vector<Override> overrides_;
  std::map<std::string, std::string> seen_;  // key path -> position
};

std::string join_path(const std::string& parent, const std::string& key);

// One mapping of the spec: checks that it is a mapping with unique scalar keys, all known.
class MapView {
 public:
  MapView(Reader& reader, const YAML::Node& node, std::string path);
  // Refuses keys outside `known` (with a "did you mean" hint).
  void allow(const std::vector<std::string>& known) const;
  bool has(const std::string& key) const { return values_.count(key) > 0; }
  const YAML::Node& get(const std::string& key) const { return values_.at(key); }
  const YAML::Node& key_node(const std::string& key) const { return keys_.at(key); }
  std::string path(const std::string& key) const { return join_path(path_, key); }
  const std::string& path() const { return path_; }
  const std::vector<std::string>& keys() const { return order_; }
  Reader& reader() const { return reader_; }

  // Typed reads that leave `out` alone when the key is absent.
  void read(const std::string& key, int& out, int64_t lo, int64_t hi) const;
  void read(const std::string& key, int64_t& out, int64_t lo, int64_t hi) const;
  void read(const std::string& key, uint64_t& out) const;
  void read(const std::string& key, double& out, double lo, double hi,
            bool lo_exclusive = false) const;
  void read(const std::string& key, bool& out) const;
  void read(const std::string& key, std::string& out) const;
  void read_enum(const std::string& key, std::string& out,
                 const std::vector<std::string>& choices) const;

 private:
  Reader& reader_;
  std::string path_;
  std::map<std::string, YAML::Node> values_;
  std::map<std::string, YAML::Node> keys_;
  std::vector<std::string> order_;
};

}  // namespace ptrain::spec::detail
