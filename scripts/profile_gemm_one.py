"""Run one block-FP8 GEMM configuration a few times (a target for Nsight Compute).

    ncu --clock-control none -k regex:wgmma --launch-skip 1 --launch-count 1 \
        python scripts/profile_gemm_one.py M N K KERNEL TILE SPLITS

KERNEL/TILE/SPLITS as in ``torch.ops.trt_gemma4.block_fp8_gemm_config`` (plugins/kernels/block_fp8_gemm.cuh).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trt_gemma4 import kernels  # noqa: E402


def main() -> None:
    m, n, k, kernel, tile, splits = map(int, sys.argv[1:7])
    kernels.load()
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    w = (torch.randn(n, k, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand((n + 127) // 128, (k + 127) // 128, device="cuda") + 0.5
    for _ in range(3):
        torch.ops.trt_gemma4.block_fp8_gemm_config(x, w, s, kernel, tile, 1, 8, splits, depth=2)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
