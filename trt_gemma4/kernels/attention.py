"""Gemma-4 attention over the paged KV cache: CUDA kernels on GPU, a pure-torch reference on CPU.

The same two functions serve both: they run the CUDA kernels (plugins/kernels/gemma4_attention.cu, reached through
``torch.ops.trt_gemma4``) when ``q`` is on a CUDA device and the fp32 reference (built on ``trt_gemma4.kv``) otherwise.
The ``*_reference`` functions are the reference alone, with identical signatures.

Batches are *packed*: the new tokens of all sequences are concatenated ("remove input padding"); sequence b owns
``q_lens[b]`` consecutive rows. ``kv_lens[b]`` counts the tokens in the cache AFTER this step (past + new), so the
new token i of sequence b has position ``kv_lens[b] - q_lens[b] + i``. A whole prompt, a chunk after a cached prefix
(chunked prefill / prefix reuse), one decode token and several speculative tokens are the same case, and one call
may mix them.

global_attention(q, k_raw, k_norm_weight, pool, layer, block_offsets, q_lens, kv_lens, inv_freq,
                 *, k_scale=1.0, v_scale=1.0, eps=1e-6, scale=1.0, out=None) -> Tensor
    A Gemma-4 global (full-attention) layer, one KV head:
    * q:             [num_tokens, num_q_heads, head_dim], after q_norm, before RoPE.
    * k_raw:         [num_tokens, head_dim], the k projection (K and V both come from it).
    * k_norm_weight: [head_dim]. With xn = k_raw / sqrt(mean(k_raw^2) + eps) in fp32:
                     V = xn (the scale-free v_norm), K = RoPE(xn * k_norm_weight).
    * pool, layer:   the ``trt_gemma4.kv.KVPool`` of the global layers (one KV head stored as
                     head_dim / pool.head_size planes) and the model layer index.
    * block_offsets: int32 [batch, 2, max_blocks], TRT-LLM's KVCacheIndex values (``kv.block_offset``).
    * q_lens, kv_lens: int [batch] (tensors on any device).
    * inv_freq:      fp32 [head_dim/2] RoPE inverse frequencies, pairs (i, i + head_dim/2); zeros for pairs that do
                     not rotate (``proportional_inv_freq``).
    * k_scale, v_scale: dequantisation multipliers of an FP8 pool (stored fp8(x / scale)); ignored for BF16 pools.
    Writes K/V of the new tokens into the pool, then returns causal attention of the new queries over the cache:
    [num_tokens, num_q_heads, head_dim] in q's dtype. Softmax scale ``scale`` (Gemma-4: 1.0). Query head h uses KV
    head h // (num_q_heads // kv_heads).

draft_attention(q, pool, layer, block_offsets, kv_lens, q_positions,
                *, inv_freq=None, window=None, k_scale=1.0, v_scale=1.0, scale=1.0, out=None) -> Tensor
    Read-only attention of the drafter over the target's cache; nothing is written.
    * q:           [batch, num_q_heads, head_dim], one query per sequence, after q_norm.
    * pool, layer: any pool (the global one: 512-d heads as two planes; the sliding ring: 256-d heads, 8 KV heads,
                   GQA group num_q_heads / 8). The KV-head count is pool.kv_heads * pool.head_size / head_dim.
    * kv_lens:     [batch] tokens the target has cached; the query sees positions [kv_len - window, kv_len).
    * q_positions: [batch] RoPE position of each query (the drafter uses the last target position kv_len - 1).
    * inv_freq:    RoPE applied to q inside at q_positions; None = q is already rotated (or needs none).
    * window:      keys visible to the query; None = the pool's ring length for a cyclic pool, else all.
    Returns [batch, num_q_heads, head_dim] in q's dtype.

Both accept ``out`` (shaped like q): the result is written there and returned.

GPU specifics: the kernels take bfloat16 q / k_raw (other dtypes are converted, the result converted back) and
compute in fp32 with f16 (FP8 pool) or bf16 (BF16 pool) tensor-core operands, so GPU results match the reference to
bf16 rounding, not bit for bit. A cyclic pool smaller than 64 slots (the tiny test model's ring) is read by the
reference on the GPU. The host needs the batch's maximum lengths to size the launch; they are read from
the length tensors (a device sync when those live on the GPU).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trt_gemma4.kv import KVPool, read_kv, write_kv

__all__ = [
    "default_inv_freq",
    "draft_attention",
    "draft_attention_reference",
    "global_attention",
    "global_attention_reference",
    "proportional_inv_freq",
]

_SUPPORTED_HEAD_DIMS = (64, 128, 256, 512)
_MIN_KERNEL_RING = 64  # smallest cyclic pool the CUDA kernel reads (gemma4_attention.cuh: cyclic_len >= 64)


# ----------------------------------------------------------------------------------------------------------------
# RoPE tables


def proportional_inv_freq(head_dim: int, theta: float, rotated_pairs: int) -> torch.Tensor:
    """Gemma-4 global-layer ("proportional") RoPE: inv_freq[i] = theta^(-2i/head_dim) for i < rotated_pairs, else 0.

    The exponent's denominator is the full head dim, not the rotary dim (research/gemma4_arch.md §2); computed in
    fp32 the way transformers computes it.
    """
    exps = torch.arange(0, 2 * rotated_pairs, 2, dtype=torch.int64).float() / head_dim
    inv = 1.0 / (theta**exps)
    return torch.cat([inv, torch.zeros(head_dim // 2 - rotated_pairs)]).float()


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """Plain RoPE over all head_dim/2 pairs (Gemma-4 sliding layers: theta 1e4)."""
    return proportional_inv_freq(head_dim, theta, head_dim // 2)


def _rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """NeoX RoPE, pairs (i, i + D/2), fp32. x: [n, ..., D]; positions: [n]."""
    ang = positions.float()[:, None] * inv_freq.float().to(x.device)[None, :]  # [n, D/2], one fp32 rounding
    shape = (ang.shape[0],) + (1,) * (x.dim() - 2) + (ang.shape[1],)
    cos, sin = ang.cos().view(shape), ang.sin().view(shape)
    half = x.shape[-1] // 2
    a, b = x[..., :half].float(), x[..., half:].float()
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Validation shared by both paths


def _lengths(t: torch.Tensor | list[int], name: str, batch: int | None = None) -> list[int]:
    vals = [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]
    if batch is not None and len(vals) != batch:
        raise ValueError(f"{name}: expected {batch} entries (one per sequence), found {len(vals)}")
    if any(v < 0 for v in vals):
        raise ValueError(f"{name}: lengths must be >= 0, found {vals}")
    return vals


def _check_pool(pool: KVPool, layer: int, block_offsets: torch.Tensor, batch: int, head_dim: int) -> int:
    """Validate pool/layer/offsets; return the real KV-head count of the layer."""
    if layer not in pool.layers:
        raise ValueError(f"layer {layer} is not stored in this pool (layers {pool.layers})")
    if head_dim not in _SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {_SUPPORTED_HEAD_DIMS}, found {head_dim}")
    if head_dim % pool.head_size:
        raise ValueError(f"head_dim {head_dim} is not a multiple of the pool's head_size {pool.head_size}")
    planes = pool.kv_heads * pool.head_size
    if planes % head_dim:
        raise ValueError(
            f"pool heads {pool.kv_heads} x head_size {pool.head_size} do not hold whole {head_dim}-d heads"
        )
    if block_offsets.dtype != torch.int32 or block_offsets.dim() != 3 or block_offsets.shape[:2] != (batch, 2):
        raise ValueError(
            f"block_offsets: expected int32 [{batch}, 2, max_blocks], found {block_offsets.dtype} "
            f"{list(block_offsets.shape)}"
        )
    return planes // head_dim


# ----------------------------------------------------------------------------------------------------------------
# Reference (fp32, any device; the torch backend's CPU path)


def _attend_reference(
    q: torch.Tensor,
    pool: KVPool,
    layer: int,
    offsets: torch.Tensor,
    limits: torch.Tensor,
    kv_len: int,
    window: int,
    num_kv_heads: int,
    k_scale: float,
    v_scale: float,
    scale: float,
) -> torch.Tensor:
    """q (fp32, rotated): [n, Hq, D]; query r sees keys j with limits[r] - window < j <= limits[r] (window 0: all)."""
    n, hq, d = q.shape
    lo = max(0, int(limits.min()) - window + 1) if window else 0
    positions = torch.arange(lo, kv_len, device=pool.data.device)
    k, v = read_kv(pool, offsets, layer, positions, d, k_scale, v_scale)  # [m, kvh, D] fp32
    k, v = k.to(q.device), v.to(q.device)
    group = hq // num_kv_heads
    qg = q.view(n, num_kv_heads, group, d)  # query head h -> KV head h // group
    scores = torch.einsum("nkgd,mkd->nkgm", qg, k) * scale
    j = positions.to(q.device)[None, :]
    visible = j <= limits[:, None]
    if window:
        visible &= j > limits[:, None] - window
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query with no visible key gets zeros (kernel: same)
    return torch.einsum("nkgm,mkd->nkgd", probs, v).reshape(n, hq, d)


def _write_global_kv_reference(
    k_raw: torch.Tensor,
    k_norm_weight: torch.Tensor,
    pool: KVPool,
    layer: int,
    block_offsets: torch.Tensor,
    q_lens: list[int],
    kv_lens: list[int],
    inv_freq: torch.Tensor,
    k_scale: float,
    v_scale: float,
    eps: float,
) -> None:
    start = 0
    for b, (n, kv_len) in enumerate(zip(q_lens, kv_lens)):
        if n == 0:
            continue
        x = k_raw[start : start + n].float()
        xn = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + eps, -0.5)
        positions = torch.arange(kv_len - n, kv_len)
        k = _rope(xn * k_norm_weight.float().to(x.device), positions.to(x.device), inv_freq)
        dev = pool.data.device
        write_kv(
            pool,
            block_offsets[b].to(dev),
            layer,
            positions.to(dev),
            k[:, None].to(dev),
            xn[:, None].to(dev),
            k_scale,
            v_scale,
        )
        start += n


def global_attention_reference(
    q: torch.Tensor,
    k_raw: torch.Tensor,
    k_norm_weight: torch.Tensor,
    pool: KVPool,
    layer: int,
    block_offsets: torch.Tensor,
    q_lens: torch.Tensor | list[int],
    kv_lens: torch.Tensor | list[int],
    inv_freq: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    eps: float = 1e-6,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 reference of ``global_attention`` (see the module docstring); writes the pool like the kernel does."""
    ql, kl = _check_global_args(q, k_raw, k_norm_weight, pool, layer, block_offsets, q_lens, kv_lens, inv_freq)
    _write_global_kv_reference(
        k_raw, k_norm_weight, pool, layer, block_offsets, ql, kl, inv_freq, k_scale, v_scale, eps
    )
    res = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    start = 0
    for b, (n, kv_len) in enumerate(zip(ql, kl)):
        if n == 0:
            continue
        positions = torch.arange(kv_len - n, kv_len, device=q.device)
        qr = _rope(q[start : start + n].float(), positions, inv_freq)
        res[start : start + n] = _attend_reference(
            qr, pool, layer, block_offsets[b].to(pool.data.device), positions, kv_len, 0, 1, k_scale, v_scale, scale
        )
        start += n
    return _finish(res, q, out)


def draft_attention_reference(
    q: torch.Tensor,
    pool: KVPool,
    layer: int,
    block_offsets: torch.Tensor,
    kv_lens: torch.Tensor | list[int],
    q_positions: torch.Tensor | list[int],
    *,
    inv_freq: torch.Tensor | None = None,
    window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 reference of ``draft_attention`` (see the module docstring); reads the pool only."""
    kl, qp, kvh, win = _check_draft_args(q, pool, layer, block_offsets, kv_lens, q_positions, inv_freq, window)
    res = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for b, kv_len in enumerate(kl):
        qb = q[b : b + 1].float()
        if inv_freq is not None:
            qb = _rope(qb, torch.tensor([qp[b]], device=q.device), inv_freq)
        if kv_len == 0:
            continue
        limits = torch.tensor([kv_len - 1], device=q.device)
        res[b : b + 1] = _attend_reference(
            qb, pool, layer, block_offsets[b].to(pool.data.device), limits, kv_len, win, kvh, k_scale, v_scale, scale
        )
    return _finish(res, q, out)


def _finish(res: torch.Tensor, q: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Return res in q's dtype, or copy it into the caller's out."""
    if out is None:
        return res.to(q.dtype)
    if out.shape != q.shape:
        raise ValueError(f"out: expected shape {list(q.shape)}, found {list(out.shape)}")
    out.copy_(res)
    return out


def _check_global_args(
    q: torch.Tensor,
    k_raw: torch.Tensor,
    k_norm_weight: torch.Tensor,
    pool: KVPool,
    layer: int,
    block_offsets: torch.Tensor,
    q_lens: torch.Tensor | list[int],
    kv_lens: torch.Tensor | list[int],
    inv_freq: torch.Tensor,
) -> tuple[list[int], list[int]]:
    if q.dim() != 3:
        raise ValueError(f"q: expected [num_tokens, num_q_heads, head_dim], found {list(q.shape)}")
    num_tokens, _, head_dim = q.shape
    if tuple(k_raw.shape) != (num_tokens, head_dim):
        raise ValueError(f"k_raw: expected [{num_tokens}, {head_dim}], found {list(k_raw.shape)}")
    if k_norm_weight.numel() != head_dim:
        raise ValueError(f"k_norm_weight: expected {head_dim} values, found {k_norm_weight.numel()}")
    if inv_freq.numel() != head_dim // 2:
        raise ValueError(f"inv_freq: expected {head_dim // 2} values, found {inv_freq.numel()}")
    batch = block_offsets.shape[0] if block_offsets.dim() == 3 else -1
    if _check_pool(pool, layer, block_offsets, batch, head_dim) != 1:
        raise ValueError(f"a global layer has one KV head; the pool holds {pool.kv_heads} x {pool.head_size} dims")
    ql = _lengths(q_lens, "q_lens", batch)
    kl = _lengths(kv_lens, "kv_lens", batch)
    if sum(ql) != num_tokens:
        raise ValueError(f"q_lens sum to {sum(ql)} but q holds {num_tokens} tokens")
    if any(n > k for n, k in zip(ql, kl)):
        raise ValueError(f"kv_lens {kl} must include the new tokens q_lens {ql}")
    _check_capacity(pool, block_offsets, kl)
    return ql, kl


def _check_draft_args(
    q: torch.Tensor,
    pool: KVPool,
    layer: int,
    block_offsets: torch.Tensor,
    kv_lens: torch.Tensor | list[int],
    q_positions: torch.Tensor | list[int],
    inv_freq: torch.Tensor | None,
    window: int | None,
) -> tuple[list[int], list[int], int, int]:
    if q.dim() != 3:
        raise ValueError(f"q: expected [batch, num_q_heads, head_dim], found {list(q.shape)}")
    batch, hq, head_dim = q.shape
    kvh = _check_pool(pool, layer, block_offsets, batch, head_dim)
    if hq % kvh:
        raise ValueError(f"{hq} query heads cannot share {kvh} KV heads evenly")
    if inv_freq is not None and inv_freq.numel() != head_dim // 2:
        raise ValueError(f"inv_freq: expected {head_dim // 2} values, found {inv_freq.numel()}")
    kl = _lengths(kv_lens, "kv_lens", batch)
    qp = _lengths(q_positions, "q_positions", batch)
    win = window if window is not None else (pool.cyclic_len or 0)
    if win < 0:
        raise ValueError(f"window must be >= 0, found {win}")
    if pool.cyclic_len and not 0 < win <= pool.cyclic_len:
        raise ValueError(f"a cyclic pool of {pool.cyclic_len} slots holds at most that many positions; window {win}")
    _check_capacity(pool, block_offsets, kl)
    return kl, qp, kvh, win


def _check_capacity(pool: KVPool, block_offsets: torch.Tensor, kv_lens: list[int]) -> None:
    need = max((pool.blocks_for(k) for k in kv_lens), default=0)
    if need > block_offsets.shape[2]:
        raise ValueError(f"kv_lens need {need} blocks per sequence, block_offsets has {block_offsets.shape[2]}")


# ----------------------------------------------------------------------------------------------------------------
# CUDA path


_PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def _cuda_ops() -> object:
    """torch.ops.trt_gemma4 with the attention ops registered.

    Uses the package's extension loader (``trt_gemma4.kernels.load``) when it exists; otherwise JIT-builds the
    attention sources alone with torch.utils.cpp_extension (sm_90a on Hopper).
    """
    if hasattr(torch.ops.trt_gemma4, "gemma4_paged_attention"):
        return torch.ops.trt_gemma4
    import importlib

    loader = getattr(importlib.import_module("trt_gemma4.kernels"), "load", None)
    if loader is not None:
        loader()
    else:
        import os

        from torch.utils.cpp_extension import load

        major, minor = torch.cuda.get_device_capability()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}{'a' if major == 9 else ''}")
        load(
            name="trt_gemma4_attention",
            sources=[str(_PLUGINS / "kernels" / "gemma4_attention.cu"), str(_PLUGINS / "torch" / "attention_ops.cpp")],
            extra_cuda_cflags=["-O3", "-std=c++17"],
            extra_cflags=["-O3", "-std=c++17"],
            is_python_module=False,
        )
    if not hasattr(torch.ops.trt_gemma4, "gemma4_paged_attention"):
        raise RuntimeError("torch.ops.trt_gemma4.gemma4_paged_attention is not registered after loading the extension")
    return torch.ops.trt_gemma4


def _device_int32(vals: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.int32, device=device)


def _cu(vals: list[int], device: torch.device) -> torch.Tensor:
    cu = [0]
    for v in vals:
        cu.append(cu[-1] + v)
    return _device_int32(cu, device)


def _bf16_io(q: torch.Tensor, out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' bf16 q and output buffer (the caller's out when it is already bf16 and contiguous)."""
    if out is not None and out.shape != q.shape:
        raise ValueError(f"out: expected shape {list(q.shape)}, found {list(out.shape)}")
    q16 = q.to(torch.bfloat16).contiguous()
    if out is not None and out.dtype == torch.bfloat16 and out.is_contiguous() and out.device == q.device:
        return q16, out
    return q16, torch.empty_like(q16)


def _finish_cuda(dst: torch.Tensor, q: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return dst.to(q.dtype)
    if dst is not out:
        out.copy_(dst)
    return out


def global_attention(
    q: torch.Tensor,
    k_raw: torch.Tensor,
    k_norm_weight: torch.Tensor,
    pool: KVPool,
    layer: int,
    block_offsets: torch.Tensor,
    q_lens: torch.Tensor | list[int],
    kv_lens: torch.Tensor | list[int],
    inv_freq: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    eps: float = 1e-6,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gemma-4 global-layer attention with the K/V write (module docstring). CUDA kernels for CUDA q, else reference."""
    if not q.is_cuda:
        return global_attention_reference(
            q,
            k_raw,
            k_norm_weight,
            pool,
            layer,
            block_offsets,
            q_lens,
            kv_lens,
            inv_freq,
            k_scale=k_scale,
            v_scale=v_scale,
            eps=eps,
            scale=scale,
            out=out,
        )
    ql, kl = _check_global_args(q, k_raw, k_norm_weight, pool, layer, block_offsets, q_lens, kv_lens, inv_freq)
    if pool.data.device != q.device or block_offsets.device != q.device:
        raise ValueError(f"pool ({pool.data.device}) and block_offsets ({block_offsets.device}) must be on {q.device}")
    ops = _cuda_ops()
    dev = q.device
    cu, kv = _cu(ql, dev), _device_int32(kl, dev)
    freq = inv_freq.to(device=dev, dtype=torch.float32).contiguous()
    cyclic = pool.cyclic_len or 0
    ops.gemma4_write_global_kv(
        k_raw.to(torch.bfloat16).contiguous(),
        k_norm_weight.to(dev, torch.float32).contiguous(),
        pool.data,
        block_offsets.contiguous(),
        pool.lip(layer),
        cyclic,
        cu,
        kv,
        freq,
        k_scale,
        v_scale,
        eps,
    )
    q16, dst = _bf16_io(q, out)
    ops.gemma4_paged_attention(
        dst,
        q16,
        pool.data,
        block_offsets.contiguous(),
        pool.lip(layer),
        cyclic,
        cu,
        kv,
        None,
        freq,
        1,
        0,
        k_scale,
        v_scale,
        scale,
        max(ql, default=0),
        max(kl, default=0),
        sum(kl),
    )
    return _finish_cuda(dst, q, out)


def draft_attention(
    q: torch.Tensor,
    pool: KVPool,
    layer: int,
    block_offsets: torch.Tensor,
    kv_lens: torch.Tensor | list[int],
    q_positions: torch.Tensor | list[int],
    *,
    inv_freq: torch.Tensor | None = None,
    window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Read-only drafter attention over a pool (module docstring). CUDA kernels for CUDA q, else reference."""
    if not q.is_cuda:
        return draft_attention_reference(
            q,
            pool,
            layer,
            block_offsets,
            kv_lens,
            q_positions,
            inv_freq=inv_freq,
            window=window,
            k_scale=k_scale,
            v_scale=v_scale,
            scale=scale,
            out=out,
        )
    kl, qp, kvh, win = _check_draft_args(q, pool, layer, block_offsets, kv_lens, q_positions, inv_freq, window)
    if pool.data.device != q.device or block_offsets.device != q.device:
        raise ValueError(f"pool ({pool.data.device}) and block_offsets ({block_offsets.device}) must be on {q.device}")
    if pool.cyclic_len and pool.cyclic_len < _MIN_KERNEL_RING:
        # The kernel walks rings of at least one 64-token tile; the tiny test model's 16-slot ring runs the
        # reference, which is plain torch and runs on the GPU as well.
        return draft_attention_reference(
            q,
            pool,
            layer,
            block_offsets,
            kv_lens,
            q_positions,
            inv_freq=inv_freq,
            window=window,
            k_scale=k_scale,
            v_scale=v_scale,
            scale=scale,
            out=out,
        )
    ops = _cuda_ops()
    dev = q.device
    batch = q.shape[0]
    freq = None if inv_freq is None else inv_freq.to(device=dev, dtype=torch.float32).contiguous()
    q16, dst = _bf16_io(q, out)
    ops.gemma4_paged_attention(
        dst,
        q16,
        pool.data,
        block_offsets.contiguous(),
        pool.lip(layer),
        pool.cyclic_len or 0,
        _cu([1] * batch, dev),
        _device_int32(kl, dev),
        _device_int32(qp, dev),
        freq,
        kvh,
        win,
        k_scale,
        v_scale,
        scale,
        1,
        max(kl, default=0),
        sum(kl),
    )
    return _finish_cuda(dst, q, out)
