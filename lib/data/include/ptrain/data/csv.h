// Tabular data for the MLP: a CSV file whose rows are numeric features followed by an integer
// class label. Loaded once into memory (row-major float features, int32 labels).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain::data {

struct CsvOptions {
  int features = 0;  // expected feature columns; 0 = from the first data row
  int classes = 0;   // labels must be < classes; 0 = max label + 1
};

class CsvData {
 public:
  // Reads the file. A first line that does not parse as numbers is taken as a header and skipped;
  // blank lines are skipped. Throws ConfigError "file:line: what" on a wrong column count, a
  // non-numeric or non-finite feature, a label that is not an integer in [0, classes), or a file
  // without data rows; IoError/ConfigError when the file cannot be read.
  static CsvData load(const std::string& path, const CsvOptions& options = {});

  int64_t rows() const { return static_cast<int64_t>(labels_.size()); }
  int features() const { return features_; }
  int classes() const { return classes_; }
  const float* row(int64_t i) const { return features_data_.data() + i * features_; }  // [features]
  int32_t label(int64_t i) const { return labels_[static_cast<size_t>(i)]; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int features_ = 0;
  int classes_ = 0;
  std::vector<float> features_data_;  // [rows, features]
  std::vector<int32_t> labels_;       // [rows]
};

}  // namespace ptrain::data
