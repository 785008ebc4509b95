#include "ptrain/data/csv.h"

#include <gtest/gtest.h>

#include "ptrain/core/error.h"
#include "test_util.h"

namespace ptrain::data {
namespace {

using testing::TempDir;

TEST(Csv, ReadsFeaturesAndLabelsSkippingHeaderAndBlankLines) {
  TempDir dir;
  testing::write_bytes(dir.file("d.csv"), "x1,x2,label\n0.5, -1 ,2\r\n\n3e-1,4,0\n");
  CsvData d = CsvData::load(dir.file("d.csv"));
  ASSERT_EQ(d.rows(), 2);
  EXPECT_EQ(d.features(), 2);
  EXPECT_EQ(d.classes(), 3);
  EXPECT_FLOAT_EQ(d.row(0)[0], 0.5f);
  EXPECT_FLOAT_EQ(d.row(0)[1], -1.0f);
  EXPECT_FLOAT_EQ(d.row(1)[0], 0.3f);
  EXPECT_EQ(d.label(0), 2);
  EXPECT_EQ(d.label(1), 0);
}

TEST(Csv, ErrorsCarryLineNumbers) {
  TempDir dir;
  struct Case {
    const char* text;
    const char* message;
  } cases[] = {
      {"1,2,0\n1,2\n", "d.csv:2: 1 feature columns, expected 2"},
      {"1,2,0\n\n1,abc,1\n", "d.csv:3: column 2: 'abc' is not a finite number"},
      {"1,2,0\n1,2,-1\n", "d.csv:2: label '-1' is not a non-negative integer"},
      {"1,2,0\n1,2,1.5\n", "d.csv:2: label '1.5'"},
      {"1,2,0\n1,inf,1\n", "d.csv:2: column 2"},
      {"5\n", "d.csv:1: expected features then a label"},
      {"a,b\n", "has no data rows"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    testing::write_bytes(dir.file("d.csv"), c.text);
    EXPECT_THROW_MSG(CsvData::load(dir.file("d.csv")), ConfigError, c.message);
  }
}

TEST(Csv, LabelAboveDeclaredClassesIsAnError) {
  TempDir dir;
  testing::write_bytes(dir.file("d.csv"), "1,0\n1,3\n");
  EXPECT_THROW_MSG(CsvData::load(dir.file("d.csv"), {.features = 0, .classes = 3}), ConfigError,
                   "d.csv:2: label 3 is >= classes 3");
}

TEST(Csv, MissingFileIsAConfigError) {
  TempDir dir;
  EXPECT_THROW_MSG(CsvData::load(dir.file("none.csv")), ConfigError, "none.csv' does not exist");
}

}  // namespace
}  // namespace ptrain::data
