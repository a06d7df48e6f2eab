"""CPU tests of the attention reference (trt_gemma4.kernels.attention) against dense fp32 attention on unpaged K/V.

The builders here (pools with shuffled blocks, dense Gemma-4 global attention) are reused by test_attention_gpu.py.
"""

from __future__ import annotations

import pytest
import torch

from trt_gemma4.kernels.attention import (
    default_inv_freq,
    draft_attention,
    draft_attention_reference,
    global_attention,
    global_attention_reference,
    proportional_inv_freq,
)
from trt_gemma4.kv import FP8, KVPool, block_offset, dequantize, quantize, write_kv

# ----------------------------------------------------------------------------------------------------------------
# Builders


def make_pool(
    kv_heads: int,
    head_size: int,
    tokens_per_block: int,
    num_blocks: int,
    dtype: torch.dtype,
    layers: tuple[int, ...] = (5, 11),
    cyclic_len: int | None = None,
    device: str | torch.device = "cpu",
) -> KVPool:
    return KVPool(list(layers), kv_heads, head_size, tokens_per_block, num_blocks, dtype, device, cyclic_len)


def shuffled_offsets(pool: KVPool, max_tokens: list[int], gen: torch.Generator) -> torch.Tensor:
    """Block offsets [batch, 2, max_blocks] giving each sequence its own blocks, drawn from the pool in random order."""
    need = [pool.blocks_for(n) for n in max_tokens]
    if sum(need) > pool.num_blocks:
        raise ValueError(f"pool of {pool.num_blocks} blocks cannot hold {sum(need)}")
    perm = torch.randperm(pool.num_blocks, generator=gen).tolist()
    offsets = torch.zeros(len(max_tokens), 2, max(max(need), 1), dtype=torch.int32)
    k = 0
    for b, n in enumerate(need):
        for i in range(n):
            for kv in range(2):
                offsets[b, kv, i] = block_offset(perm[k], len(pool.layers), kv)
            k += 1
    return offsets


def rope_dense(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Textbook rotate_half RoPE in fp32 (x: [n, ..., D], positions: [n])."""
    ang = positions.double()[:, None] * inv_freq.double()[None, :]
    emb = torch.cat([ang, ang], dim=-1).float()
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * emb.cos().view(shape) + rot * emb.sin().view(shape)


def stored(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """What reading back a value written to a pool of `dtype` gives (fp32)."""
    return dequantize(quantize(x, dtype, 1.0 / scale), scale) if dtype == FP8 else quantize(x, dtype, 1.0).float()


def dense_global(
    q: torch.Tensor,
    k_hist: torch.Tensor,
    k_norm_weight: torch.Tensor,
    inv_freq: torch.Tensor,
    pool_dtype: torch.dtype,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Dense attention of the last len(q) positions of one sequence whose k projections are k_hist [L, D]."""
    n, length = q.shape[0], k_hist.shape[0]
    x = k_hist.float()
    xn = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    pos = torch.arange(length)
    k = stored(rope_dense(xn * k_norm_weight.float(), pos, inv_freq), pool_dtype, k_scale)
    v = stored(xn, pool_dtype, v_scale)
    qr = rope_dense(q.float(), pos[length - n :], inv_freq)
    scores = torch.einsum("nhd,jd->nhj", qr, k)
    causal = pos[None, :] <= pos[length - n :, None]
    scores = scores.masked_fill(~causal[:, None, :], float("-inf"))
    return torch.einsum("nhj,jd->nhd", torch.softmax(scores, -1), v)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------------------------------------------
# Tests


def test_proportional_inv_freq_matches_gemma4_numbers() -> None:
    inv = proportional_inv_freq(512, 1e6, 64)
    assert inv.shape == (256,) and inv.dtype == torch.float32
    assert int((inv != 0).sum()) == 64
    assert inv[0] == 1.0
    assert abs(float(inv[1]) - 0.94746) < 1e-5 and abs(float(inv[63]) - 0.033376) < 1e-6
    assert torch.equal(default_inv_freq(256, 1e4), proportional_inv_freq(256, 1e4, 128))


@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.bfloat16, FP8])
def test_global_prefill_then_decode_matches_dense(pool_dtype: torch.dtype) -> None:
    """Mixed lengths (not multiples of the 8-token block, crossing blocks), prefill then two decode steps."""
    gen = torch.Generator().manual_seed(0)
    hq, d, hs, tpb = 4, 128, 64, 8
    prompt = [13, 1, 8, 30]
    steps = 2
    total = [p + steps for p in prompt]
    pool = make_pool(d // hs, hs, tpb, 40, pool_dtype)
    offsets = shuffled_offsets(pool, total, gen)
    inv = proportional_inv_freq(d, 1e6, d // 8)
    w = 1.0 + 0.3 * torch.randn(d, generator=gen)
    k_scale, v_scale = (0.5, 2.0) if pool_dtype == FP8 else (1.0, 1.0)
    hist = [torch.randn(t, d, generator=gen) * 3 for t in total]
    qs = [torch.randn(t, hq, d, generator=gen) for t in total]
    tol = 1e-5 if pool_dtype == torch.float32 else 1e-6  # dense reads back the same stored values

    out = global_attention_reference(
        torch.cat([q[:p] for q, p in zip(qs, prompt)]),
        torch.cat([h[:p] for h, p in zip(hist, prompt)]),
        w, pool, 11, offsets, prompt, prompt, inv, k_scale=k_scale, v_scale=v_scale,
    )  # fmt: skip
    start = 0
    for b, p in enumerate(prompt):
        ref = dense_global(qs[b][:p], hist[b][:p], w, inv, pool_dtype, k_scale, v_scale)
        assert rel_err(out[start : start + p], ref) < tol * 10
        start += p
    for s in range(steps):
        kv = [p + s + 1 for p in prompt]
        out = global_attention(
            torch.stack([q[k - 1] for q, k in zip(qs, kv)]),
            torch.stack([h[k - 1] for h, k in zip(hist, kv)]),
            w, pool, 11, offsets, [1] * len(kv), torch.tensor(kv), inv, k_scale=k_scale, v_scale=v_scale,
        )  # fmt: skip
        for b, k in enumerate(kv):
            ref = dense_global(qs[b][k - 1 : k], hist[b][:k], w, inv, pool_dtype, k_scale, v_scale)
            assert rel_err(out[b : b + 1], ref) < tol * 10


def test_chunked_prefill_equals_one_shot() -> None:
    """A prompt written in chunks after a cached prefix gives the same outputs and the same cache bytes."""
    gen = torch.Generator().manual_seed(1)
    hq, d, hs, tpb, length = 4, 128, 64, 16, 45
    inv = proportional_inv_freq(d, 1e6, 16)
    w = 1.0 + 0.3 * torch.randn(d, generator=gen)
    q = torch.randn(length, hq, d, generator=gen)
    k_raw = torch.randn(length, d, generator=gen)
    pools = [make_pool(2, hs, tpb, 8, FP8) for _ in range(2)]
    offsets = shuffled_offsets(pools[0], [length], gen)

    one = global_attention_reference(q, k_raw, w, pools[0], 5, offsets, [length], [length], inv)
    parts, done = [], 0
    for chunk in (7, 16, 22):
        sl = slice(done, done + chunk)
        parts.append(
            global_attention_reference(q[sl], k_raw[sl], w, pools[1], 5, offsets, [chunk], [done + chunk], inv)
        )
        done += chunk
    assert torch.allclose(torch.cat(parts), one, rtol=1e-5, atol=1e-6)
    assert torch.equal(pools[0].data.view(torch.uint8), pools[1].data.view(torch.uint8))


def test_global_write_touches_only_its_layer_and_slots() -> None:
    gen = torch.Generator().manual_seed(2)
    pool = make_pool(2, 64, 8, 6, torch.float32)
    offsets = shuffled_offsets(pool, [11], gen)
    global_attention_reference(
        torch.randn(11, 4, 128, generator=gen), torch.randn(11, 128, generator=gen), torch.ones(128),
        pool, 11, offsets, [11], [11], proportional_inv_freq(128, 1e6, 16),
    )  # fmt: skip
    assert pool.data[:, 0].abs().sum() == 0  # layer 5 untouched
    written = (pool.data[:, 1] != 0).flatten(2).any(-1)  # [block, K|V]
    assert int(written.sum()) == 2 * 2  # 11 tokens -> 2 blocks, K and V


def _ring_pool_with_history(
    gen: torch.Generator, kv_heads: int, d: int, hs: int, tpb: int, ring: int, length: int, dtype: torch.dtype
) -> tuple[KVPool, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A cyclic pool holding a sequence of `length` tokens (ring wrapped), plus the unpaged K/V history."""
    pool = make_pool(kv_heads * d // hs, hs, tpb, ring // tpb + 2, dtype, layers=(40, 46), cyclic_len=ring)
    offsets = shuffled_offsets(pool, [length], gen)
    k = torch.randn(length, kv_heads, d, generator=gen)
    v = torch.randn(length, kv_heads, d, generator=gen)
    for p in range(length):  # one token at a time, as decoding does
        write_kv(pool, offsets[0], 46, torch.tensor([p]), k[p : p + 1], v[p : p + 1])
    return pool, offsets, k, v


@pytest.mark.parametrize("length", [5, 32, 77])
def test_draft_attention_on_sliding_ring(length: int) -> None:
    """GQA group 2 over a 32-slot ring; with wrap only the last `window` positions are visible; cache unchanged."""
    gen = torch.Generator().manual_seed(3)
    kvh, hq, d, ring = 2, 4, 64, 32
    pool, offsets, k, v = _ring_pool_with_history(gen, kvh, d, 64, 8, ring, length, torch.float32)
    before = pool.data.clone()
    q = torch.randn(1, hq, d, generator=gen)
    inv = default_inv_freq(d, 1e4)
    out = draft_attention(q, pool, 46, offsets, [length], [length - 1], inv_freq=inv)
    lo = max(0, length - ring)
    qr = rope_dense(q, torch.tensor([length - 1]), inv)
    kk = k[lo:].repeat_interleave(hq // kvh, 1)
    vv = v[lo:].repeat_interleave(hq // kvh, 1)
    ref = torch.einsum("bhj,jhd->bhd", torch.softmax(torch.einsum("bhd,jhd->bhj", qr, kk), -1), vv)
    assert rel_err(out, ref) < 1e-5
    assert torch.equal(pool.data, before)


def test_draft_attention_on_global_planes_and_smaller_window() -> None:
    gen = torch.Generator().manual_seed(4)
    d, hs, hq, length, window = 128, 64, 4, 50, 20
    pool = make_pool(2, hs, 16, 5, torch.float32, layers=(47,))
    offsets = shuffled_offsets(pool, [length, 9], gen)
    k = torch.randn(2, length, 1, d, generator=gen)
    v = torch.randn(2, length, 1, d, generator=gen)
    for b in range(2):
        write_kv(pool, offsets[b], 47, torch.arange(length), k[b], v[b])
    before = pool.data.clone()
    q = torch.randn(2, hq, d, generator=gen)
    out = draft_attention_reference(q, pool, 47, offsets, [length, 9], [length - 1, 8], window=window)
    for b, kv_len in enumerate([length, 9]):
        lo = max(0, kv_len - window)
        probs = torch.softmax(torch.einsum("hd,jd->hj", q[b], k[b, lo:kv_len, 0]), -1)
        assert rel_err(out[b], probs @ v[b, lo:kv_len, 0]) < 1e-5
    assert torch.equal(pool.data, before)


def test_out_argument_and_dtype() -> None:
    gen = torch.Generator().manual_seed(5)
    pool = make_pool(2, 64, 8, 4, torch.float32)
    offsets = shuffled_offsets(pool, [6], gen)
    q = torch.randn(6, 4, 128, generator=gen).to(torch.bfloat16)
    out = torch.full((6, 4, 128), float("nan"), dtype=torch.bfloat16)
    res = global_attention(
        q, torch.randn(6, 128, generator=gen), torch.ones(128), pool, 5, offsets, [6], [6],
        proportional_inv_freq(128, 1e6, 16), out=out,
    )  # fmt: skip
    assert res is out and res.dtype == torch.bfloat16 and not out.isnan().any()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(q_lens=[5]), "q_lens sum"),
        (dict(kv_lens=[2]), "must include the new tokens"),
        (dict(layer=7), "not stored in this pool"),
        (dict(kv_lens=[100]), "blocks per sequence"),
        (dict(kv_lens=[6, 6]), "expected 1 entries"),
    ],
)
def test_global_attention_rejects_bad_arguments(change: dict, message: str) -> None:
    pool = make_pool(2, 64, 8, 8, torch.float32)
    offsets = shuffled_offsets(pool, [6], torch.Generator().manual_seed(6))
    args = dict(q_lens=[6], kv_lens=[6], layer=5) | change
    with pytest.raises(ValueError, match=message):
        global_attention_reference(
            torch.zeros(6, 4, 128), torch.zeros(6, 128), torch.ones(128), pool, args["layer"], offsets,
            args["q_lens"], args["kv_lens"], proportional_inv_freq(128, 1e6, 16),
        )  # fmt: skip
