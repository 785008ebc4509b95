#!/usr/bin/env bash
# Makes a portable bundle of ptrain: dist/ptrain-<version>-linux-x86_64/ and its .tar.gz.
#   bin/ptrain        wrapper: finds the CUDA libraries, then runs libexec/ptrain
#   bin/ptrain-env    the same lookup, then runs any command (e.g. bin/ptrain-env bin/tests/X)
#   bin/tests/        the GPU test binaries (ctest label gpu)
#   libexec/ptrain    the real binary, rpath $ORIGIN/../lib; links no CUDA library
#   lib/              every shared library the binaries need except libc's family and CUDA's,
#                     and libptrain_cuda.so, the CUDA backend (op table + NCCL) that ptrain loads
#                     with dlopen on first use
# CUDA libraries (libcudart, libcublas, libnccl, ...) stay out: they are large and tied to the
# driver; the wrapper looks for them on the target machine. Without them ptrain runs on CPU and
# says why when a job asks for device cuda.
#
# Environment: PTRAIN_BUILD_DIR (default build), PTRAIN_DIST_DIR (default dist),
# PTRAIN_BUNDLE_NO_BUILD=1 (use the build as it is), PTRAIN_JOBS (default 2), PTRAIN_BUNDLE_MAX_MIB
# (default 60: the size limit).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=$(realpath -m "${PTRAIN_BUILD_DIR:-build}")
DIST_DIR=$(realpath -m "${PTRAIN_DIST_DIR:-dist}")
MAX_MIB=${PTRAIN_BUNDLE_MAX_MIB:-60}

die() { echo "bundle: $*" >&2; exit 1; }
for tool in patchelf strip ldd tar; do
  command -v "$tool" >/dev/null || die "$tool is missing; run scripts/setup.sh"
done

# --- build (only what the bundle holds) ---
has_plugin() {  # the build compiles the CUDA plugin (the toolkit was found)
  grep -q '^build lib/libptrain_cuda\.so:' "$BUILD_DIR/build.ninja" 2>/dev/null
}
gpu_tests() {  # names of the ctest tests labelled gpu
  ctest --test-dir "$BUILD_DIR" -N -L gpu 2>/dev/null | sed -n 's/^ *Test *#[0-9]*: *//p'
}
if [[ ${PTRAIN_BUNDLE_NO_BUILD:-0} != 1 ]]; then
  if [[ ! -f $BUILD_DIR/build.ninja ]]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  # shellcheck disable=SC2046
  targets=(ptrain)
  has_plugin && targets+=(ptrain_cuda)
  # shellcheck disable=SC2046
  cmake --build "$BUILD_DIR" -j "${PTRAIN_JOBS:-2}" --target "${targets[@]}" $(gpu_tests)
fi
PTRAIN_BIN=$BUILD_DIR/apps/ptrain/ptrain
[[ -x $PTRAIN_BIN ]] || die "$PTRAIN_BIN is missing; build first or unset PTRAIN_BUNDLE_NO_BUILD"

VERSION=$(sed -n 's/^project(ptrain VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")
[[ -n $VERSION ]] || die "cannot read the version from CMakeLists.txt"
NAME=ptrain-$VERSION-linux-x86_64
OUT=$DIST_DIR/$NAME
rm -rf "$OUT" "$OUT.tar.gz"
mkdir -p "$OUT/bin/tests" "$OUT/libexec" "$OUT/lib"

# --- binaries ---
install -m 755 "$PTRAIN_BIN" "$OUT/libexec/ptrain"
binaries=("$OUT/libexec/ptrain")
PLUGIN=$BUILD_DIR/lib/libptrain_cuda.so
if has_plugin; then
  [[ -f $PLUGIN ]] || die "$PLUGIN is missing; build the ptrain_cuda target"
  install -m 644 "$PLUGIN" "$OUT/lib/libptrain_cuda.so"
  binaries+=("$OUT/lib/libptrain_cuda.so")
fi
for t in $(gpu_tests); do
  exe=$(find "$BUILD_DIR/tests" -type f -name "$t" -perm -u+x | head -n 1)
  if [[ -n $exe ]]; then
    install -m 755 "$exe" "$OUT/bin/tests/$t"
    binaries+=("$OUT/bin/tests/$t")
  else
    echo "bundle: warning: gpu test $t is not built; left out" >&2
  fi
done

# --- shared libraries: everything ldd resolves except libc's family and CUDA's ---
is_system_lib() {
  case "$1" in
    linux-vdso.so* | ld-linux*.so* | libc.so* | libm.so* | libdl.so* | libpthread.so* | \
      librt.so* | libutil.so* | libresolv.so* | libstdc++.so* | libgcc_s.so*) return 0 ;;
  esac
  return 1
}
is_cuda_lib() {
  case "$1" in
    libcuda.so* | libcudart.so* | libcublas*.so* | libnccl.so* | libnvidia-*.so* | libcufft*.so* | \
      libcurand.so* | libcusparse*.so* | libcusolver*.so* | libnvJitLink.so* | libnvrtc*.so* | \
      libcudnn*.so*) return 0 ;;
  esac
  return 1
}
declare -A cuda_needed=()
for bin in "${binaries[@]}"; do
  while read -r soname path; do
    [[ -z $soname ]] && continue
    if is_cuda_lib "$soname"; then
      cuda_needed[$soname]=1
      continue
    fi
    is_system_lib "$soname" && continue
    [[ $path == /* && -f $path ]] || die "$bin needs $soname, which ldd cannot find"
    if [[ ! -f $OUT/lib/$soname ]]; then
      cp -L "$path" "$OUT/lib/$soname"
      chmod 644 "$OUT/lib/$soname"
    fi
  done < <(ldd "$bin" | awk '/=>/ {print $1, $3}')
done

for lib in "$OUT"/lib/*.so*; do
  [[ -e $lib ]] || continue
  strip --strip-unneeded "$lib"
  patchelf --set-rpath '$ORIGIN' "$lib"
done
# The plugin also looks in the CUDA toolkit's usual place (LD_LIBRARY_PATH, set by the wrapper,
# still comes first), so libexec/ptrain finds CUDA there without the wrapper.
if [[ -f $OUT/lib/libptrain_cuda.so ]]; then
  patchelf --set-rpath '$ORIGIN:/usr/local/cuda/lib64' "$OUT/lib/libptrain_cuda.so"
fi
strip --strip-unneeded "${binaries[@]}"
# Remove the build RUNPATH first: patchelf 0.14 overwrites the old string with 'X's when it
# sets a new one, and the linker may have merged a symbol name into its tail (".../openblas-
# pthread" ends in "read": `read` became `XXXX`). Removing leaves the string alone.
patchelf --remove-rpath "$OUT/libexec/ptrain"
patchelf --set-rpath '$ORIGIN/../lib' "$OUT/libexec/ptrain"
for bin in "$OUT"/bin/tests/*; do
  [[ -e $bin ]] && patchelf --remove-rpath "$bin" && patchelf --set-rpath '$ORIGIN/../../lib' "$bin"
done
# A clobbered symbol name would only fail when first called; refuse such a bundle now.
for bin in "${binaries[@]}"; do
  if nm -D "$bin" 2>/dev/null | grep -qE ' U X+@'; then die "$bin: patchelf clobbered a symbol name"; fi
done

# --- the wrapper scripts ---
CUDA_LIBS="${!cuda_needed[*]}"
cat >"$OUT/bin/ptrain-env" <<EOF
#!/bin/bash
# ptrain-env COMMAND...: runs COMMAND with LD_LIBRARY_PATH set to the folders that hold the CUDA
# libraries this bundle of ptrain $VERSION needs ($CUDA_LIBS).
# Looked for, in order: \$PTRAIN_CUDA_LIB_DIR, \$CUDA_HOME/lib64, /usr/local/cuda*/lib64,
# /usr/lib/x86_64-linux-gnu, /usr/local/nvidia/lib64, and Python wheel folders
# (site-packages/nvidia/*/lib, e.g. from pip install nvidia-cublas nvidia-nccl-cu13).
export PATH=\${PATH:-/usr/local/bin:/usr/bin:/bin}
needed=($CUDA_LIBS)
EOF
cat >>"$OUT/bin/ptrain-env" <<'EOF'
here=${BASH_SOURCE[0]%/*}
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.
export PTRAIN_BUNDLE_ROOT=$(cd "$here/.." && pwd)
shopt -s nullglob
candidates=()
[[ -n ${PTRAIN_CUDA_LIB_DIR:-} ]] && candidates+=("$PTRAIN_CUDA_LIB_DIR")
[[ -n ${CUDA_HOME:-} ]] && candidates+=("$CUDA_HOME/lib64")
candidates+=(/usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/lib/x86_64-linux-gnu
             /usr/local/nvidia/lib64)
[[ -n ${VIRTUAL_ENV:-} ]] && candidates+=("$VIRTUAL_ENV"/lib/python3*/site-packages/nvidia/*/lib)
candidates+=(/usr/local/lib/python3*/dist-packages/nvidia/*/lib
             /usr/lib/python3/dist-packages/nvidia/*/lib
             /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib
             /opt/conda/lib/python3*/site-packages/nvidia/*/lib)
[[ -n ${HOME:-} ]] && candidates+=("$HOME"/.local/lib/python3*/site-packages/nvidia/*/lib)
dirs=()
missing=()
for lib in "${needed[@]}"; do
  found=""
  for d in "${candidates[@]}"; do
    if [[ -e $d/$lib ]]; then found=$d; break; fi
  done
  if [[ -z $found ]]; then missing+=("$lib"); continue; fi
  [[ " ${dirs[*]} " == *" $found "* ]] || dirs+=("$found")
done
# Missing CUDA libraries are not fatal: ptrain runs on CPU, and a job that asks for device cuda
# fails with the loader's reason. PTRAIN_CUDA_LIB_DIR set but wrong is worth a warning now.
if ((${#missing[@]})) && [[ -n ${PTRAIN_CUDA_LIB_DIR:-} || -n ${PTRAIN_CUDA_VERBOSE:-} ]]; then
  echo "ptrain: warning: cannot find ${missing[*]} (looked in \$PTRAIN_CUDA_LIB_DIR," \
       "\$CUDA_HOME/lib64, /usr/local/cuda*/lib64, /usr/lib/x86_64-linux-gnu and Python" \
       "site-packages/nvidia/*/lib); CUDA stays off. Install the CUDA 13 runtime, cuBLAS and NCCL" \
       "(or pip install nvidia-cublas nvidia-nccl-cu13), or set PTRAIN_CUDA_LIB_DIR" >&2
fi
if ((${#dirs[@]})); then
  path=$(IFS=:; echo "${dirs[*]}")
  export LD_LIBRARY_PATH=$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
exec "$@"
EOF
cat >"$OUT/bin/ptrain" <<'EOF'
#!/bin/bash
# ptrain, from a bundle: finds the CUDA libraries (bin/ptrain-env), then runs libexec/ptrain.
here=${BASH_SOURCE[0]%/*}
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.
exec "$here/ptrain-env" "$here/../libexec/ptrain" "$@"
EOF
if [[ -z $CUDA_LIBS ]]; then  # a CPU-only build needs no lookup
  cat >"$OUT/bin/ptrain-env" <<'EOF'
#!/bin/bash
# ptrain-env COMMAND...: runs COMMAND (this bundle was built without CUDA; nothing to find).
exec "$@"
EOF
fi
chmod 755 "$OUT/bin/ptrain" "$OUT/bin/ptrain-env"
install -m 755 "$ROOT/scripts/gpu-check.sh" "$OUT/bin/gpu-check.sh"
# Example job specs (small; data files are left out), for the 2-rank run of gpu-check.sh.
mkdir -p "$OUT/share/ptrain/configs"
cp "$ROOT"/configs/*.yaml "$OUT/share/ptrain/configs/" 2>/dev/null || true

# --- size check and archive ---
# Bytes, not du -sm (which rounds up: 59.05 MiB would read as 60), as the bundle test counts.
size_mib=$(($(du -sb "$OUT" | cut -f1) / 1048576))
((size_mib < MAX_MIB)) || die "$OUT is ${size_mib} MiB, over the ${MAX_MIB} MiB limit"
tar -C "$DIST_DIR" -czf "$OUT.tar.gz" "$NAME"
echo "bundle: $OUT (${size_mib} MiB; CUDA libraries looked up at run time: ${CUDA_LIBS:-none})"
echo "bundle: $OUT.tar.gz"
