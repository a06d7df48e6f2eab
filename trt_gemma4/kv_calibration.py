"""Measure the FP8 KV cache: K/V amax per layer, their analytic bounds, and the attention-output error of each
storage choice (BF16; FP8 with identity scales; FP8 with the checkpoint's scales), per layer.

Why identity scales are the default (DESIGN.md, KV cache): V = RMSNorm(k_raw) without a scale, so every element
obeys |V_i| ≤ √d (the squares of a d-vector with mean square 1 sum to d); K = RoPE(k_norm ⊙ RMSNorm(k_raw)) and a
rotation keeps each pair's length, so |K_i| ≤ max|k_norm| · √d. For the 12B (d = 256 / 512) that is ≤ 22.6 for V,
far inside E4M3's ±448 with scale 1; a calibrated scale (amax/448) only moves the values into the range where
E4M3's relative precision is the same, so it cannot help the relative error, and a scale fitted on too little data
clips. The attention-output error per layer says which choice is better on real prompts.

Method: one fp32 run with an fp32 cache records each attention op's inputs (q, k, v after the norms) and output;
each layer is then replayed alone through a cache of the storage under test, so a layer's error is its own, not
accumulated from earlier layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from trt_gemma4.backends.torch_backend import CacheConfig, PagedKVCache, Segment, Step, TorchBackend, TorchOps
from trt_gemma4.backends.weights import KVScales, WeightSource
from trt_gemma4.checkpoint.names import trt_layer
from trt_gemma4.graph.ops import AttentionLayer
from trt_gemma4.kv import FP8, FP8_MAX


@dataclass
class LayerKVReport:
    """One layer: measured amax, analytic bounds, checkpoint scales, and the relative attention-output error
    max|o - o_fp32| / max|o_fp32| of each storage choice."""

    layer: int
    kind: str
    k_amax: float
    v_amax: float
    k_bound: float  # max|k_norm| · √d
    v_bound: float  # √d
    checkpoint_k_scale: float | None
    checkpoint_v_scale: float | None
    error_bf16: float
    error_fp8_identity: float
    error_fp8_checkpoint: float | None
    checkpoint_scales_clip: bool | None  # amax beyond 448 x the scale the cache applies (merged on sliding layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Call:
    layer: AttentionLayer
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    n: int


def capture_attention(backend: TorchBackend, prompts: Sequence[Sequence[int]]) -> dict[int, list[_Call]]:
    """Run each prompt once (one-shot prefill) and record every attention op's inputs and output."""
    calls: dict[int, list[_Call]] = {}
    ops = backend.ops
    inner = ops.attention

    def record(layer: AttentionLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = inner(layer, q, k, v)
        calls.setdefault(layer.index, []).append(_Call(layer, q.clone(), k.clone(), v.clone(), out.clone(), q.shape[0]))
        return out

    ops.attention = record  # type: ignore[method-assign]
    try:
        for p in prompts:
            sid = backend.add_sequence()
            try:
                backend.forward([(sid, p)])
            finally:
                backend.free(sid)
    finally:
        del ops.attention
    return calls


def replay_error(
    weights: WeightSource, calls: list[_Call], dtype: torch.dtype, scales: KVScales | None, tokens_per_block: int = 16
) -> float:
    """Relative attention-output error of one layer's recorded calls replayed through a `dtype` cache."""
    spec = weights.spec
    num, den = 0.0, 1e-30
    max_len = max(c.n for c in calls)
    for c in calls:
        cfg = CacheConfig(dtype=dtype, tokens_per_block=tokens_per_block, max_seq_len=max(max_len, 1), max_sequences=1)
        cache = PagedKVCache(spec, cfg, {c.layer.index: scales} if scales else {}, "cpu")
        ops = TorchOps(weights, cache, torch.float32, "cpu")
        sid = cache.add()
        cache.reserve(sid, c.n)
        ops.step = Step([Segment(sid, 0, 0, c.n)])
        out = ops.attention(c.layer, c.q, c.k, c.v)
        num = max(num, (out - c.out).abs().max().item())
        den = max(den, c.out.abs().max().item())
    return num / den


def calibrate(weights: WeightSource, prompts: Sequence[Sequence[int]]) -> list[LayerKVReport]:
    """Per-layer K/V amax (as stored: K after RoPE), bounds, checkpoint scales and attention-output errors."""
    spec = weights.spec
    max_len = max(len(p) for p in prompts)
    backend = TorchBackend(
        weights, dtype=torch.float32, cache=CacheConfig(dtype=torch.float32, max_seq_len=max_len, max_sequences=1)
    )
    calls = capture_attention(backend, prompts)
    reports = []
    for i in spec.layer_range:
        layer_calls = calls[i]
        hd = spec.head_dim(i)
        k_amax = v_amax = 0.0
        for c in layer_calls:
            pos = torch.arange(c.n)
            k_rot = backend.ops._rope(c.layer, c.k.reshape(c.n, -1, hd), pos)
            k_amax = max(k_amax, k_rot.abs().max().item())
            v_amax = max(v_amax, c.v.abs().max().item())
        k_norm = weights.get(trt_layer(i, "attention.k_layernorm.weight")).float().abs().max().item()
        ck = weights.checkpoint_kv_scales(i)
        clip = None
        if ck is not None:
            ek, ev = (ck.k, ck.v) if spec.is_global(i) else (max(ck.k, ck.v),) * 2
            clip = k_amax > FP8_MAX * ek or v_amax > FP8_MAX * ev
        reports.append(
            LayerKVReport(
                layer=i,
                kind=spec.layer_types[i],
                k_amax=k_amax,
                v_amax=v_amax,
                k_bound=k_norm * math.sqrt(hd),
                v_bound=math.sqrt(hd),
                checkpoint_k_scale=ck.k if ck else None,
                checkpoint_v_scale=ck.v if ck else None,
                error_bf16=replay_error(weights, layer_calls, torch.bfloat16, None),
                error_fp8_identity=replay_error(weights, layer_calls, FP8, None),
                error_fp8_checkpoint=replay_error(weights, layer_calls, FP8, ck) if ck else None,
                checkpoint_scales_clip=clip,
            )
        )
    return reports
