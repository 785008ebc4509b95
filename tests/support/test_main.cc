// The main of every test binary: registers the built-in model families (as the CLI's main
// does) before GoogleTest runs, so specs load the same way in tests as in `ptrain`. Like the
// worker and parameter-server processes, a test ignores SIGPIPE: a collective's write to a peer
// that has gone (the dead-peer cases) must surface as that op's error, not end the binary.
#include <gtest/gtest.h>
#include <signal.h>

#include "ptrain/models/registry.h"

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  ptrain::models::register_builtin_families();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
