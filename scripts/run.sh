#!/usr/bin/env bash
# Installs what is missing, builds ptrain, and runs the quickstart job (configs/quickstart.yaml).
# Extra arguments go to `ptrain run`, e.g. scripts/run.sh --set train.steps=20.
# Until the built-in trainer lands, the job is validated (its plan printed) instead of run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
BIN="${PTRAIN_BUILD_DIR:-build}/apps/ptrain/ptrain"
exec "$BIN" validate configs/quickstart.yaml "$@"
