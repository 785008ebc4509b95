#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (labels: unit, integration, gpu, slow).
# Extra arguments go to ctest, e.g. scripts/test.sh -L unit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
cd "${PTRAIN_BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" "$@"
