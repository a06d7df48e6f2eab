#!/usr/bin/env bash
# Speed-of-light probes of the Hopper wgmma GEMM (GPU machine, nvcc 12.8+): builds scripts/sol_gemm_sm90.cu once per
# probe value (block_fp8_gemm_sm90.cu, TRT_GEMMA4_SOL: 0 = the real kernel, 1 = no FP8 conversion, 2 = no weight
# loads or conversion, 4 = no rescale (persistent kernels), 6 = 2 and 4, 8 = no stream-K fix-up, 16 = the hardware
# FP8 -> FP16 conversion instead of ours, which also times the activation pre-pass an FP16-operand kernel would need)
# and runs each on the 12B shapes (SOL_SHAPE=NxK: one other shape instead; SOL_DATA=normal: Gaussian data instead of
# masked random bytes).
#   scripts/sol_gemm_sm90.sh OUT_DIR "TILE SPLITS M..." ["TILE SPLITS M..." ...]   (probes: $SOL_PROBES, default 0 1 2 4 6)
set -euo pipefail
out=$1; shift
mkdir -p "$out/bin"
here=$(cd "$(dirname "$0")/.." && pwd)
nvcc=${NVCC:-nvcc}
for p in ${SOL_PROBES:-0 1 2 4 6}; do
  "$nvcc" -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
    -DTRT_GEMMA4_SOL="$p" -o "$out/bin/sol_$p" \
    "$here/scripts/sol_gemm_sm90.cu" "$here/plugins/kernels/block_fp8_gemm.cu" \
    "$here/plugins/kernels/block_fp8_gemm_sm90.cu" -lcublas &
done
wait
for cfg in "$@"; do
  for p in ${SOL_PROBES:-0 1 2 4 6}; do
    # shellcheck disable=SC2086
    "$out/bin/sol_$p" $cfg | tee -a "$out/sol.jsonl"
  done
done
