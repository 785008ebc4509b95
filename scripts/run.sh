#!/usr/bin/env bash
# Installs what is missing, builds ptrain, and runs the quickstart job (configs/quickstart.yaml):
# a tiny byte-level GPT trained by 2 data-parallel CPU workers. Extra arguments go to
# `ptrain run`, e.g. scripts/run.sh --set train.steps=20.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
BIN="${PTRAIN_BUILD_DIR:-build}/apps/ptrain/ptrain"
exec "$BIN" run configs/quickstart.yaml "$@"
