// The main of every test binary: registers the built-in model families (as the CLI's main
// does) before GoogleTest runs, so specs load the same way in tests as in `ptrain`.
#include <gtest/gtest.h>

#include "ptrain/models/registry.h"

int main(int argc, char** argv) {
  ptrain::models::register_builtin_families();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
