#include "ptrain/data/csv.h"

#include <charconv>
#include <cmath>
#include <string_view>

#include "mapped_file.h"
#include "ptrain/core/error.h"

namespace ptrain::data {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    size_t comma = line.find(',', start);
    if (comma == std::string_view::npos) {
      out.push_back(trim(line.substr(start)));
      return out;
    }
    out.push_back(trim(line.substr(start, comma - start)));
    start = comma + 1;
  }
}

bool parse_float(std::string_view s, float* out) {
  if (s.empty()) return false;
  if (s.front() == '+') s.remove_prefix(1);
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

bool parse_label(std::string_view s, int64_t* out) {
  if (s.empty()) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  if (ec == std::errc() && ptr == s.data() + s.size()) return true;
  // Accept "3.0"-style labels that are exact integers.
  float f;
  if (!parse_float(s, &f) || !std::isfinite(f) || f != std::floor(f) || std::fabs(f) > 1e9f) {
    return false;
  }
  *out = static_cast<int64_t>(f);
  return true;
}

}  // namespace

CsvData CsvData::load(const std::string& path, const CsvOptions& options) {
  MappedFile file(path, "csv file");
  std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
  CsvData d;
  d.path_ = path;
  d.features_ = options.features;
  int64_t max_label = -1;
  size_t pos = 0;
  int64_t line_no = 0;
  bool first_content = true;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? text.npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line_no;
    if (trim(line).empty()) continue;
    auto fields = split_fields(line);
    bool is_first = first_content;
    first_content = false;
    if (is_first) {
      float probe;
      bool numeric = true;
      for (auto f : fields) numeric = numeric && parse_float(f, &probe);
      if (!numeric) continue;  // header line
    }
    if (fields.size() < 2) {
      throw ConfigError(fmt::format("{}:{}: expected features then a label, found {} column(s)",
                                    path, line_no, fields.size()));
    }
    int nf = static_cast<int>(fields.size()) - 1;
    if (d.features_ == 0) d.features_ = nf;
    if (nf != d.features_) {
      throw ConfigError(
          fmt::format("{}:{}: {} feature columns, expected {}", path, line_no, nf, d.features_));
    }
    for (int i = 0; i < nf; ++i) {
      float v;
      if (!parse_float(fields[i], &v) || !std::isfinite(v)) {
        throw ConfigError(fmt::format("{}:{}: column {}: '{}' is not a finite number", path,
                                      line_no, i + 1, fields[i]));
      }
      d.features_data_.push_back(v);
    }
    int64_t label;
    if (!parse_label(fields.back(), &label) || label < 0) {
      throw ConfigError(fmt::format("{}:{}: label '{}' is not a non-negative integer", path,
                                    line_no, fields.back()));
    }
    if (options.classes > 0 && label >= options.classes) {
      throw ConfigError(
          fmt::format("{}:{}: label {} is >= classes {}", path, line_no, label, options.classes),
          "raise model.classes or fix the labels");
    }
    if (label > INT32_MAX) {
      throw ConfigError(fmt::format("{}:{}: label {} is too large", path, line_no, label));
    }
    max_label = std::max(max_label, label);
    d.labels_.push_back(static_cast<int32_t>(label));
  }
  if (d.labels_.empty()) {
    throw ConfigError(fmt::format("csv file '{}' has no data rows", path),
                      "each row is numeric features followed by an integer label");
  }
  d.classes_ = options.classes > 0 ? options.classes : static_cast<int>(max_label + 1);
  return d;
}

}  // namespace ptrain::data
