#!/usr/bin/env bash
# Configure and build libtrt_gemma4_plugins.so against the TensorRT 10.14 headers, then check its exports.
#
# Usage: bash scripts/plugin_compile_check.sh [sm_90|sm_100|sm_120 ...]   (default: sm_90)
# Headers: $TENSORRT_INCLUDE_DIR, else .trt_headers/ in the repository (NvInferRuntime.h and what it includes,
# from the TensorRT OSS tag v10.14, include/: scripts/fetch_trt_headers.sh puts them there).
# Needs nvcc (CUDA 13; `pip install "trt-gemma4[cuda]"` gives one) and cmake >= 3.24. Nothing runs on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHES=("$@")
[ ${#ARCHES[@]} -eq 0 ] && ARCHES=(sm_90)
HEADERS=${TENSORRT_INCLUDE_DIR:-$PWD/.trt_headers}
if [ ! -f "$HEADERS/NvInferRuntime.h" ]; then
  echo "plugin_compile_check: no NvInferRuntime.h in $HEADERS; set TENSORRT_INCLUDE_DIR or run" \
       "scripts/fetch_trt_headers.sh (TensorRT OSS tag v10.14, include/ -> .trt_headers/)" >&2
  exit 2
fi
NVCC=${CUDACXX:-$(command -v nvcc || true)}
if [ -z "$NVCC" ]; then
  echo "plugin_compile_check: nvcc not found; install the CUDA 13 toolkit or pip install \"trt-gemma4[cuda]\"" >&2
  exit 2
fi
command -v cmake >/dev/null || { echo "plugin_compile_check: cmake not found (pip install cmake)" >&2; exit 2; }
JOBS=${JOBS:-$(nproc)}
for ARCH in "${ARCHES[@]}"; do
  OUT=build/plugins-$ARCH
  mkdir -p build
  echo "== $ARCH: configure ($OUT)"
  cmake -S plugins -B "$OUT" -DTRT_GEMMA4_ARCH="$ARCH" -DTENSORRT_INCLUDE_DIR="$HEADERS" \
    -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_BUILD_TYPE=Release >"$OUT.configure.log" 2>&1 \
    || { cat "$OUT.configure.log" >&2; exit 1; }
  echo "== $ARCH: build"
  START=$(date +%s)
  cmake --build "$OUT" -j "$JOBS"
  LIB="$OUT/libtrt_gemma4_plugins.so"
  echo "== $ARCH: built $LIB in $(( $(date +%s) - START )) s"
  # The entry points TensorRT's loader and our Python code look up.
  # (nm's output is taken whole first: `nm | grep -q` under pipefail fails when grep exits early and nm gets SIGPIPE)
  SYMS=$(nm -D --defined-only "$LIB")
  for SYM in getCreators setLoggerFinder initTrtGemma4Plugins; do
    grep -qw "$SYM" <<<"$SYMS" || { echo "plugin_compile_check: $LIB does not export $SYM" >&2; exit 1; }
  done
  # What the library needs at load time: libnvinfer only where CMake found it, libcudart only where the toolkit
  # had no static runtime (see plugins/CMakeLists.txt).
  NEEDED=$(readelf -d "$LIB" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
  echo "== $ARCH: ok (exports getCreators, setLoggerFinder, initTrtGemma4Plugins; needs: $NEEDED)"
done
