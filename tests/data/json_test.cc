#include "ptrain/data/json.h"

#include <gtest/gtest.h>

#include "ptrain/core/error.h"
#include "test_util.h"

namespace ptrain::data {
namespace {

TEST(Json, ParsesNestedValuesInOrder) {
  JsonValue v = parse_json(R"( {"a": [1, -2.5e3, true, null], "b": {"c": "d\u00e9\n"}} )", "t");
  ASSERT_TRUE(v.is_object());
  ASSERT_EQ(v.as_object().size(), 2u);
  EXPECT_EQ(v.as_object()[0].first, "a");
  const auto& a = v.find("a")->as_array();
  ASSERT_EQ(a.size(), 4u);
  int64_t one = 0;
  EXPECT_TRUE(a[0].to_int64(&one));
  EXPECT_EQ(one, 1);
  EXPECT_EQ(a[1].as_string(), "-2.5e3");
  EXPECT_FALSE(a[1].to_int64(&one));
  EXPECT_TRUE(a[2].as_bool());
  EXPECT_EQ(a[3].kind(), JsonValue::Kind::kNull);
  EXPECT_EQ(v.find("b")->find("c")->as_string(), "d\xc3\xa9\n");
}

TEST(Json, DecodesSurrogatePairs) {
  JsonValue v = parse_json(R"("\ud83d\ude00")", "t");
  EXPECT_EQ(v.as_string(), "\xf0\x9f\x98\x80");
}

TEST(Json, RejectsMalformedInputWithByteOffset) {
  const char* bad[] = {"",
                       "{",
                       "{\"a\":}",
                       "[1,]",
                       "{\"a\" 1}",
                       "01",
                       "1.",
                       "-",
                       "tru",
                       "\"abc",
                       "\"\\x\"",
                       "\"\\ud800\"",
                       "{\"a\":1,\"a\":2}",
                       "[1] [2]",
                       "{'a':1}",
                       "\"\x01\"",
                       "\"\xff\"",
                       "nan"};
  for (const char* text : bad) {
    EXPECT_THROW_MSG(parse_json(text, "origin.json"), ConfigError, "origin.json: invalid JSON");
  }
}

TEST(Json, NamesTheDuplicateKey) {
  EXPECT_THROW_MSG(parse_json(R"({"x": 1, "x": 2})", "h"), ConfigError, "duplicate key \"x\"");
}

TEST(Json, LimitsNestingDepth) {
  std::string deep(kMaxJsonDepth + 5, '[');
  deep += std::string(kMaxJsonDepth + 5, ']');
  EXPECT_THROW_MSG(parse_json(deep, "d"), ConfigError, "nesting deeper");
  std::string ok(10, '[');
  ok += std::string(10, ']');
  EXPECT_NO_THROW(parse_json(ok, "d"));
}

TEST(Json, IntegerConversionRejectsOverflow) {
  int64_t v;
  EXPECT_TRUE(parse_json("9223372036854775807", "t").to_int64(&v));
  EXPECT_EQ(v, INT64_MAX);
  EXPECT_FALSE(parse_json("9223372036854775808", "t").to_int64(&v));
}

TEST(Json, QuoteEscapesControlCharacters) {
  EXPECT_EQ(json_quote("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
  EXPECT_EQ(parse_json(json_quote("a\"b\\c\n\x01"), "t").as_string(), "a\"b\\c\n\x01");
}

}  // namespace
}  // namespace ptrain::data
