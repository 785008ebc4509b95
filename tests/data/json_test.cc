#include "ptrain/data/json.h"

#include <gtest/gtest.h>

#include "ptrain/core/error.h"
#include "ptrain/core/strings.h"
#include "test_util.h"

namespace ptrain::data {
namespace {

TEST(Json, ParsesNestedValuesInOrder) {
  Json v = parse_json(R"( {"a": [1, -2.5e3, true, null], "b": {"c": "d\u00e9\n"}} )", "t");
  ASSERT_TRUE(v.is_object());
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v.begin().key(), "a");
  const Json& a = *json_member(v, "a");
  ASSERT_EQ(a.size(), 4u);
  int64_t one = 0;
  EXPECT_TRUE(json_int64(a[0], &one));
  EXPECT_EQ(one, 1);
  EXPECT_EQ(a[1].get<double>(), -2500.0);
  EXPECT_FALSE(json_int64(a[1], &one));
  EXPECT_TRUE(a[2].get<bool>());
  EXPECT_TRUE(a[3].is_null());
  EXPECT_EQ(v["b"]["c"].get<std::string>(), "d\xc3\xa9\n");
  EXPECT_EQ(json_member(v, "z"), nullptr);
  EXPECT_EQ(json_member(a, "a"), nullptr);  // not an object
}

TEST(Json, DecodesSurrogatePairs) {
  Json v = parse_json(R"("\ud83d\ude00")", "t");
  EXPECT_EQ(v.get<std::string>(), "\xf0\x9f\x98\x80");
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
                       "nan",
                       "\xef\xbb\xbf{}",
                       "[1] // comment"};
  for (const char* text : bad) {
    EXPECT_THROW_MSG(parse_json(text, "origin.json"), ConfigError, "origin.json: invalid JSON");
  }
}

TEST(Json, NamesTheDuplicateKey) {
  EXPECT_THROW_MSG(parse_json(R"({"x": 1, "x": 2})", "h"), ConfigError, "duplicate key \"x\"");
}

TEST(Json, ErrorsGiveTheByteOffset) {
  EXPECT_THROW_MSG(parse_json(R"({"x": 1, "x": 2})", "h"), ConfigError,
                   "h: invalid JSON at byte 9: duplicate key");
  EXPECT_THROW_MSG(parse_json("[1,]", "h"), ConfigError, "h: invalid JSON at byte 3: ");
  EXPECT_THROW_MSG(parse_json(R"({"a": {"a": 1}, "b": {"b": 1, "b": 2}})", "h"), ConfigError,
                   "at byte 30: duplicate key \"b\"");
  EXPECT_THROW_MSG(parse_json(R"({"q\"": 1, "q\"": 2})", "h"), ConfigError,
                   "at byte 11: duplicate key");
}

TEST(Json, ShortensTheLastReadTokenInMessages) {
  std::string unterminated = "\"" + std::string(1000, 'x');
  try {
    parse_json(unterminated, "h");
    FAIL() << "an unterminated string parsed";
  } catch (const ConfigError& e) {
    std::string what = e.what();
    EXPECT_LT(what.size(), 300u) << what;
    EXPECT_NE(what.find("missing closing quote"), std::string::npos) << what;
  }
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
  EXPECT_TRUE(json_int64(parse_json("9223372036854775807", "t"), &v));
  EXPECT_EQ(v, INT64_MAX);
  EXPECT_FALSE(json_int64(parse_json("9223372036854775808", "t"), &v));
  EXPECT_TRUE(json_int64(parse_json("-9223372036854775808", "t"), &v));
  EXPECT_EQ(v, INT64_MIN);
  EXPECT_FALSE(json_int64(parse_json("-9223372036854775809", "t"), &v));
  EXPECT_FALSE(json_int64(parse_json("1.0", "t"), &v));
  EXPECT_FALSE(json_int64(parse_json("\"1\"", "t"), &v));
}

TEST(Json, QuoteEscapesControlCharacters) {
  EXPECT_EQ(json_quote("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
  EXPECT_EQ(parse_json(json_quote("a\"b\\c\n\x01"), "t").get<std::string>(), "a\"b\\c\n\x01");
}

}  // namespace
}  // namespace ptrain::data
