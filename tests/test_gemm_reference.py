"""CPU tests of the pure-torch block-FP8 GEMM reference (the semantics the CUDA kernel is tested against)."""

from __future__ import annotations

import pytest
import torch

from trt_gemma4.kernels.reference import block_fp8_gemm_reference, dequantize_block_fp8, normalize_block_scale


def _fp8(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)


def test_partial_blocks_use_their_own_scale() -> None:
    n, k = 144, 272  # 2 x 3 blocks, the last row/column of blocks partial
    w = _fp8(n, k, 0)
    s = torch.arange(1, 7, dtype=torch.float32).reshape(2, 3) / 64
    wd = dequantize_block_fp8(w, s, torch.float64)
    assert wd.shape == (n, k)
    wf = w.double()
    for bi, rows in enumerate((slice(0, 128), slice(128, 144))):
        for bj, cols in enumerate((slice(0, 128), slice(128, 256), slice(256, 272))):
            torch.testing.assert_close(wd[rows, cols], wf[rows, cols] * s[bi, bj].item(), rtol=0, atol=0)


def test_gemm_matches_explicit_loop() -> None:
    n, k, m = 48, 160, 5
    w = _fp8(n, k, 1)
    s = torch.rand(1, 2, generator=torch.Generator().manual_seed(2)) + 0.1
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    y = block_fp8_gemm_reference(x, w, s, compute_dtype=torch.float64, out_dtype=torch.float64)
    expect = torch.zeros(m, n, dtype=torch.float64)
    for kk in range(k):
        expect += x[:, kk : kk + 1].double() * (w[:, kk].double() * s[0, kk // 128].item())[None, :]
    torch.testing.assert_close(y, expect, rtol=1e-12, atol=1e-9)
    assert block_fp8_gemm_reference(x, w, s).dtype == torch.bfloat16


def test_zero_dim_scale_for_single_block_matrix() -> None:
    w = _fp8(64, 96, 4)
    s0 = torch.tensor(0.5)
    torch.testing.assert_close(dequantize_block_fp8(w, s0), w.float() * 0.5, rtol=0, atol=0)


def test_four_dim_scale_is_normalized() -> None:
    s4 = torch.rand(3, 1, 2, 1)
    s2 = normalize_block_scale(s4, 300, 200)
    assert s2.shape == (3, 2)
    torch.testing.assert_close(s2, s4[:, 0, :, 0])
    w = _fp8(300, 200, 5)
    torch.testing.assert_close(dequantize_block_fp8(w, s4), dequantize_block_fp8(w, s2), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [torch.rand(2, 2), torch.rand(3, 2, 2, 1), torch.rand(2, 3)])
def test_wrong_scale_shape_is_rejected(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="block scale"):
        normalize_block_scale(bad, 300, 200)


def test_k_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="K=64"):
        block_fp8_gemm_reference(torch.zeros(2, 64), _fp8(16, 32, 6), torch.tensor(1.0))
