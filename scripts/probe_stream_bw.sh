#!/usr/bin/env bash
# Read-bandwidth probe for the M = 1 path (GPU machine, nvcc 12.8+): builds scripts/probe_stream_bw.cu with the
# library's kernels and runs it; one JSON line per timing in OUT_DIR/probe.jsonl. BULK_PROBES="0 1 2" also builds
# the bulk kernel without its consumer math (1) or without its activation loads (2) (wrong results, timing only);
# PROBE_FLAGS=-DTRT_GEMMA4_PROBE_SWITCHES adds the streaming kernel's two forms; PROBE_VARIANTS=a,b name prefixes.
#   scripts/probe_stream_bw.sh OUT_DIR
set -euo pipefail
out=$1
mkdir -p "$out/bin"
here=$(cd "$(dirname "$0")/.." && pwd)
for p in ${BULK_PROBES:-0}; do
  "${NVCC:-nvcc}" -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
    -DTRT_GEMMA4_BULK_PROBE="$p" ${PROBE_FLAGS:-} -o "$out/bin/probe_$p" \
    "$here/scripts/probe_stream_bw.cu" "$here/plugins/kernels/block_fp8_gemm.cu" \
    "$here/plugins/kernels/block_fp8_gemm_sm90.cu" &
done
wait
for p in ${BULK_PROBES:-0}; do
  "$out/bin/probe_$p" | sed "s/^{/{\"bulk_probe\": $p, /" | tee -a "$out/probe.jsonl"
done
