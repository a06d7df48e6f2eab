#!/usr/bin/env bash
# Put the TensorRT 10.14 headers the plugins compile against into .trt_headers/ (git-ignored: never commit them).
#
# Usage: bash scripts/fetch_trt_headers.sh [TENSORRT_GIT_DIR]
#   with a local clone of github.com/NVIDIA/TensorRT: read the files at tag $TRT_TAG (default v10.14) from it;
#   without: download them from that tag on GitHub (needs curl and internet access).
# Tag v10.14 of the TensorRT OSS repository is TensorRT 10.14.1.48, the version TRT-LLM 1.2.1 pins.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TRT_TAG:-v10.14}
DEST=.trt_headers
# NvInferRuntime.h and everything it includes.
FILES="NvInferRuntime.h NvInferRuntimeBase.h NvInferRuntimeCommon.h NvInferRuntimePlugin.h NvInferPluginBase.h
NvInferImpl.h NvInferLegacyDims.h NvInferVersion.h"
mkdir -p "$DEST"
for f in $FILES; do
  if [ $# -ge 1 ]; then
    git -C "$1" show "$TAG:include/$f" > "$DEST/$f"
  else
    curl -fsSL "https://raw.githubusercontent.com/NVIDIA/TensorRT/$TAG/include/$f" -o "$DEST/$f"
  fi
done
echo "TensorRT OSS tag $TAG, include/ ($(grep -E 'define TRT_(MAJOR|MINOR|PATCH|BUILD)_ENTERPRISE' "$DEST/NvInferVersion.h" \
  | awk '{print $3}' | paste -sd.))" > "$DEST/SOURCE"
cat "$DEST/SOURCE"
