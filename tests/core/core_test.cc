#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/core/time.h"

namespace ptrain {

TEST(Check, ThrowsInternalErrorWithFileAndLine) {
  try {
    PTRAIN_CHECK(1 + 1 == 3, "math is {}", "broken");
    FAIL() << "no throw";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("core_test.cc:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("math is broken"), std::string::npos) << e.what();
  }
}

TEST(Syscall, ThrowsIoErrorNamingTheCall) {
  try {
    PTRAIN_SYSCALL(::close(-1));
    FAIL() << "no throw";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("close(-1)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Bad file descriptor"), std::string::npos) << e.what();
  }
}

TEST(Error, ExitCodesFollowTheKind) {
  EXPECT_EQ(ConfigError("x").exit_code(), kExitConfig);
  EXPECT_EQ(TimeoutError("x").exit_code(), kExitTimeout);
  EXPECT_EQ(IoError("x").exit_code(), kExitFailure);
  EXPECT_EQ(ConfigError("bad", "fix it").message(), "bad; fix it");
}

TEST(Env, IntParsesAndRejectsGarbage) {
  ::setenv("PTRAIN_TEST_INT", "42", 1);
  EXPECT_EQ(env_int("PTRAIN_TEST_INT", 7), 42);
  ::setenv("PTRAIN_TEST_INT", "4x", 1);
  EXPECT_THROW(env_int("PTRAIN_TEST_INT", 7), ConfigError);
  ::unsetenv("PTRAIN_TEST_INT");
  EXPECT_EQ(env_int("PTRAIN_TEST_INT", 7), 7);
}

TEST(Deadline, RemainingNeverNegative) {
  Deadline d(Millis(0));
  EXPECT_TRUE(d.expired());
  EXPECT_EQ(d.remaining().count(), 0);
}

}  // namespace ptrain
