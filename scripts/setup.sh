#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, test and run ptrain.
# Idempotent: one `apt-get update` only when something is missing; quiet when all is present.
# dataset-fashion-mnist is the real Fashion-MNIST (/usr/share/datasets/fashion-mnist/*-ubyte.gz)
# that configs/resnet-fashion-mnist.yaml trains on. PyTorch (python3-torch, python3-torchvision)
# is optional: the torchvision interop test and `scripts/bench.sh resnet` use it when present
# (PTRAIN_SETUP_TORCH=1 installs it).
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libcli11-dev libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libgloo-dev libopenblas-dev zlib1g-dev
  libdnnl-dev
  dataset-fashion-mnist
  openssh-client openssh-server clang-format iproute2 procps patchelf file
  libpcre2-dev chromium libxxhash-dev slurm-wlm munge libssl-dev
)

if [[ "${PTRAIN_SETUP_TORCH:-0}" == 1 ]]; then PKGS+=(python3-torch python3-torchvision); fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
