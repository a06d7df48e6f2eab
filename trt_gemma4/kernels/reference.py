"""Pure-torch reference of the block-FP8 weight-only GEMM (CPU or GPU, no extension needed).

Semantics shared with the CUDA kernel (``plugins/kernels/block_fp8_gemm.cuh``)::

    Y[M, N] = X[M, K] · dequant(W, S)ᵀ,   dequant(W, S)[n, k] = float(W[n, k]) · S[n // 128, k // 128]

``W`` is float8_e4m3fn ``[N, K]``; ``S`` holds one float32 scale per 128x128 block (``[ceil(N/128),
ceil(K/128)]``, partial blocks at the bottom/right edges). The reference dequantizes in the compute dtype
(float32 by default, float64 for tests), multiplies, and rounds the result to the output dtype once.
"""

from __future__ import annotations

import torch

BLOCK = 128


def normalize_block_scale(s: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Return the block scale as a ``[ceil(n/128), ceil(k/128)]`` tensor.

    Accepts the checkpoint layout ``[nb, kb]``, the broadcastable ``[nb, 1, kb, 1]`` form, and a 0-D (or
    one-element) scale for a matrix that is a single block.
    """
    nb, kb = -(-n // BLOCK), -(-k // BLOCK)
    if s.numel() != nb * kb:
        raise ValueError(
            f"block scale: expected ceil(N/128)*ceil(K/128) = {nb}*{kb} = {nb * kb} values for weight [{n}, {k}], "
            f"got shape {tuple(s.shape)}"
        )
    if s.dim() == 4 and (s.shape[1] != 1 or s.shape[3] != 1):
        raise ValueError(f"block scale: a 4-D scale must be [nb, 1, kb, 1], got shape {tuple(s.shape)}")
    if s.dim() not in (0, 1, 2, 4):
        raise ValueError(f"block scale: expected 0-D, [nb, kb] or [nb, 1, kb, 1], got shape {tuple(s.shape)}")
    if s.dim() == 2 and tuple(s.shape) != (nb, kb):
        raise ValueError(f"block scale: expected shape ({nb}, {kb}), got {tuple(s.shape)}")
    return s.reshape(nb, kb)


def dequantize_block_fp8(w: torch.Tensor, s: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantize FP8 ``w [N, K]`` with 128x128 block scales ``s`` to ``dtype`` (product formed in ``dtype``)."""
    if w.dim() != 2:
        raise ValueError(f"block-FP8 weight: expected [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    s2 = normalize_block_scale(s, n, k).to(dtype)
    # Expand each scale to its 128x128 tile and crop the zero-padded edge blocks back to [N, K].
    full = s2.repeat_interleave(BLOCK, dim=0).repeat_interleave(BLOCK, dim=1)[:n, :k]
    return w.to(dtype) * full


def block_fp8_gemm_reference(
    x: torch.Tensor,
    w: torch.Tensor,
    s: torch.Tensor,
    *,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x [..., K] · dequant(w, s)ᵀ`` computed in ``compute_dtype``, returned as ``out_dtype`` (default x.dtype)."""
    if x.shape[-1] != w.shape[-1]:
        raise ValueError(f"block_fp8_gemm: x has K={x.shape[-1]} but w is {tuple(w.shape)}")
    wd = dequantize_block_fp8(w, s, compute_dtype)
    y = torch.matmul(x.to(compute_dtype), wd.t())
    return y.to(out_dtype if out_dtype is not None else x.dtype)
