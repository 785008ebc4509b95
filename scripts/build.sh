#!/usr/bin/env bash
# Configures and builds ptrain into build/ (Release, ninja). Extra arguments go to cmake's
# configure step, e.g. scripts/build.sh -DPTRAIN_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${PTRAIN_BUILD_DIR:-build}
# ccache hits across clones in different folders: paths below the root are hashed relative.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
if [[ ! -f "$BUILD_DIR/build.ninja" || $# -gt 0 ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
fi
jobs=$(nproc)
cmake --build "$BUILD_DIR" -j "$jobs"
