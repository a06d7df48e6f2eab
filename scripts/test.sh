#!/usr/bin/env bash
# Set up everything the test suite needs in .venv (idempotent), then lint and run the whole suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# torch first: a plain `pip install torch` can resolve to a multi-GB CUDA build; the suite needs the CPU one.
$VPY -c "import torch" 2>/dev/null || $VPY -m pip install -q "torch==2.13.0"
$VPY -m pip install -q -e ".[dev]"
# The real Triton server (CPU, python backend) for the serving tests, in its own environment.
if [ -f scripts/install_tritonserver.sh ]; then
  bash scripts/install_tritonserver.sh
fi
export TRT_GEMMA4_REQUIRE_NVCC=${TRT_GEMMA4_REQUIRE_NVCC:-1}
export TRT_GEMMA4_REQUIRE_TRITON=${TRT_GEMMA4_REQUIRE_TRITON:-1}
export TRT_GEMMA4_CACHE=${TRT_GEMMA4_CACHE:-$PWD/.cache/trt_gemma4}
$VPY -m ruff check .
$VPY -m ruff format --check .
$VPY -m pytest -q "$@"
