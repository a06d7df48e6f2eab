"""Eager-torch backend: runs the Gemma-4 graph (graph/gemma4.py) with a paged KV cache in the engine's layout.

On CPU it is the numerical reference: block-FP8 weights dequantized to the compute dtype (fp32 or bf16; float64
for exactness tests), norms, RoPE, softmax and soft-cap in fp32 (or wider). On a GPU with bf16 compute the
kernels run inside the real model: linears call trt_gemma4.kernels.block_fp8_gemm, and global layers over a BF16
or FP8 cache call kernels.attention.global_attention (which takes k_raw and does k_norm / v_norm / RoPE itself,
so the per-head norms remember what they normed). Sliding layers stay in torch (stock gpt_attention in the engine).

The KV cache is TRT-LLM's (trt_gemma4/kv.py): one pool for the sliding layers, kept as a ring of
`window + max_draft_len` tokens, and one for the global layers, whose single 512-d head is stored as two 256-d
planes; FP8 E4M3, BF16 or fp32 storage; identity KV scales unless the checkpoint's are asked for. Tokens of one
step attend to the cached prefix read back from the pool plus the step's own K/V rounded to the storage dtype, so
a chunked prefill gives the same result as a one-shot prefill, and decode reads exactly what prefill stored.

Tensor parallelism: every rank's weights are loaded and each linear is run rank by rank, column-parallel outputs
concatenated per component and row-parallel partial outputs summed (the all-reduce), so a TP=2/4 conversion can
be checked against TP=1. Pipeline parallelism: the stages run one after another, each with its own rank files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trt_gemma4 import kv
from trt_gemma4.backends.weights import KVScales, WeightSource, dequantize_blocks, iter_linear_names, open_weights
from trt_gemma4.checkpoint.names import SCALE_SUFFIX, Linear, fused_segments
from trt_gemma4.graph import gemma4
from trt_gemma4.graph.ops import AttentionLayer
from trt_gemma4.spec import GLOBAL, SLIDING, Gemma4Spec


def _global_attention_kernel() -> Any:
    """trt_gemma4.kernels.attention.global_attention (CUDA for CUDA tensors), if that module is present."""
    try:
        from trt_gemma4.kernels.attention import global_attention
    except ImportError:
        return None
    return global_attention


def _block_fp8_gemm() -> Any:
    """trt_gemma4.kernels.block_fp8_gemm(x bf16 [M,K], w fp8 [N,K], s fp32 [N/128,K/128]) -> bf16, if built."""
    try:
        from trt_gemma4.kernels import block_fp8_gemm  # type: ignore[attr-defined]
    except ImportError:
        return None
    return block_fp8_gemm


# ---- RoPE ----------------------------------------------------------------------------------------------------


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n, head_dim] for the NeoX layout (pair i = dims i and i + head_dim/2), in inv_freq's dtype."""
    freqs = positions.to(inv_freq.dtype)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [n, heads, head_dim] rotated in cos's dtype (pairs with inv_freq 0 are left as they are), cast back."""
    xf = x.to(cos.dtype)
    a, b = xf.chunk(2, dim=-1)
    rotated = torch.cat([-b, a], dim=-1)
    return (xf * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


# ---- the paged KV cache ----------------------------------------------------------------------------------------


@dataclass
class CacheConfig:
    """KV cache settings. kv_scales: 'identity' (the default, DESIGN.md) or 'checkpoint'."""

    dtype: torch.dtype = torch.float32
    tokens_per_block: int = 16
    max_seq_len: int = 512
    max_sequences: int = 8
    max_draft_len: int = 0  # the sliding ring holds window + this many tokens (speculative verification)
    kv_scales: str = "identity"


@dataclass
class SequenceState:
    """One sequence's place in the cache: its length and its blocks in each pool (TRT-LLM block offsets)."""

    seq_id: int
    length: int = 0
    blocks: dict[str, list[int]] = field(default_factory=dict)  # pool kind -> memory blocks, logical order
    offsets: dict[str, torch.Tensor] = field(default_factory=dict)  # pool kind -> int32 [2, max_blocks]
    slot_positions: dict[str, torch.Tensor] = field(default_factory=dict)  # pool kind -> position held per slot


class PagedKVCache:
    """The two pools of the engine (sliding ring, global linear) and the sequences living in them.

    Besides the bytes, each sequence keeps which token position each slot holds, so reading a ring slot that a
    later token has overwritten raises instead of silently attending to the wrong key.
    """

    def __init__(self, spec: Gemma4Spec, cfg: CacheConfig, scales: dict[int, KVScales], device: str | torch.device):
        self.spec, self.cfg, self.device = spec, cfg, torch.device(device)
        T = cfg.tokens_per_block
        ring = spec.sliding_window + cfg.max_draft_len
        self.pools: dict[str, kv.KVPool] = {}
        if spec.sliding_layers:
            self.pools[SLIDING] = kv.KVPool(
                layers=spec.sliding_layers,
                kv_heads=spec.sliding_kv_heads,
                head_size=spec.kv_head_size,
                tokens_per_block=T,
                num_blocks=cfg.max_sequences * -(-ring // T),
                dtype=cfg.dtype,
                device=self.device,
                cyclic_len=ring,
            )
        if spec.global_layers:
            self.pools[GLOBAL] = kv.KVPool(
                layers=spec.global_layers,
                kv_heads=spec.global_kv_planes,
                head_size=spec.kv_head_size,
                tokens_per_block=T,
                num_blocks=cfg.max_sequences * -(-cfg.max_seq_len // T),
                dtype=cfg.dtype,
                device=self.device,
            )
        self.scales = scales
        self.acc = torch.float64 if cfg.dtype == torch.float64 else torch.float32  # what reads return
        self.sequences: dict[int, SequenceState] = {}
        self._next_id = 0

    def kind(self, layer: int) -> str:
        return GLOBAL if self.spec.is_global(layer) else SLIDING

    def layer_scales(self, layer: int) -> KVScales:
        """Stock gpt_attention (sliding layers) takes one merged scale; the global plugin keeps K and V apart."""
        s = self.scales.get(layer, KVScales(1.0, 1.0))
        if not self.spec.is_global(layer):
            m = max(s.k, s.v)
            return KVScales(m, m)
        return s

    # -- sequences --
    def add(self) -> int:
        if len(self.sequences) >= self.cfg.max_sequences:
            raise RuntimeError(f"the KV cache holds at most {self.cfg.max_sequences} sequences")
        sid = self._next_id
        self._next_id += 1
        st = SequenceState(sid)
        for k, pool in self.pools.items():
            slots = pool.cyclic_len or self.cfg.max_seq_len
            max_blocks = -(-slots // pool.tokens_per_block)
            st.blocks[k] = []
            st.offsets[k] = torch.zeros(2, max_blocks, dtype=torch.int32, device=self.device)
            st.slot_positions[k] = torch.full((max_blocks * pool.tokens_per_block,), -1, dtype=torch.long)
        self.sequences[sid] = st
        return sid

    def reserve(self, sid: int, length: int) -> None:
        """Make room for `length` tokens of sequence sid (allocating blocks as TRT-LLM's manager would)."""
        if length > self.cfg.max_seq_len:
            raise RuntimeError(f"sequence of {length} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        st = self.sequences[sid]
        for k, pool in self.pools.items():
            while len(st.blocks[k]) < pool.blocks_for(length):
                b = pool.alloc_block()
                j = len(st.blocks[k])
                st.blocks[k].append(b)
                st.offsets[k][0, j] = kv.block_offset(b, len(pool.layers), 0)
                st.offsets[k][1, j] = kv.block_offset(b, len(pool.layers), 1)

    def free(self, sid: int) -> None:
        st = self.sequences.pop(sid)
        for k, pool in self.pools.items():
            for b in st.blocks[k]:
                pool.free_block(b)

    def truncate(self, sid: int, length: int) -> None:
        """Forget tokens from `length` on (rejected drafts); their slots are overwritten later."""
        st = self.sequences[sid]
        if length > st.length:
            raise ValueError(f"cannot truncate sequence {sid} of {st.length} tokens to {length}")
        st.length = length

    # -- K/V --
    def _slots(self, pool: kv.KVPool, positions: torch.Tensor) -> torch.Tensor:
        return pool.slot(positions.long())

    def write(self, layer: int, sid: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V [n, kv_heads, head_dim] of the tokens at `positions` (a ring keeps only its last slots)."""
        positions = positions.cpu()
        kind = self.kind(layer)
        pool, st = self.pools[kind], self.sequences[sid]
        if pool.cyclic_len is not None and positions.numel() > pool.cyclic_len:
            positions, k, v = positions[-pool.cyclic_len :], k[-pool.cyclic_len :], v[-pool.cyclic_len :]
        s = self.layer_scales(layer)
        kv.write_kv(pool, st.offsets[kind], layer, positions.to(self.device), k, v, s.k, s.v)
        self.mark_written(layer, sid, positions)

    def mark_written(self, layer: int, sid: int, positions: torch.Tensor) -> None:
        """Record which position each slot now holds (done after the pool's last layer: the earlier layers of the
        step read their prefix before the step's tokens land in the ring)."""
        kind = self.kind(layer)
        pool = self.pools[kind]
        if layer == pool.layers[-1]:
            positions = positions.cpu()
            self.sequences[sid].slot_positions[kind][self._slots(pool, positions)] = positions.long()

    def read(self, layer: int, sid: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V [n, kv_heads, head_dim] (fp32, or the storage dtype if wider) of cached tokens at `positions`."""
        kind = self.kind(layer)
        pool, st = self.pools[kind], self.sequences[sid]
        positions = positions.cpu()
        if positions.numel() == 0:
            empty = torch.empty(
                0, self.spec.kv_heads(layer), self.spec.head_dim(layer), dtype=self.acc, device=self.device
            )
            return empty, empty.clone()
        held = st.slot_positions[kind][self._slots(pool, positions)]
        if not torch.equal(held, positions.long()):
            bad = positions[held != positions.long()][0].item()
            raise RuntimeError(
                f"KV cache layer {layer}, sequence {sid}: position {bad} was overwritten in the "
                f"{kind} ring of {pool.cyclic_len} slots (size the ring window + max draft length)"
            )
        s = self.layer_scales(layer)
        return kv.read_kv(
            pool, st.offsets[kind], layer, positions.to(self.device), self.spec.head_dim(layer), s.k, s.v, self.acc
        )

    def round_trip(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V as they will read back from the cache (storage dtype and scales)."""
        s = self.layer_scales(layer)
        dt = self.cfg.dtype
        return (
            kv.dequantize(kv.quantize(k, dt, 1.0 / s.k), s.k, self.acc),
            kv.dequantize(kv.quantize(v, dt, 1.0 / s.v), s.v, self.acc),
        )


# ---- the ops ---------------------------------------------------------------------------------------------------


@dataclass
class Segment:
    """The tokens of one sequence in a step: packed rows [offset, offset + n), positions start .. start + n - 1."""

    seq_id: int
    offset: int
    start: int
    n: int


@dataclass
class Step:
    segments: list[Segment]
    all_logits: bool = False


@dataclass
class _NormedHeads:
    """How a per-head rms_norm output was made: the global attention kernel takes k_raw and norms it itself."""

    out: torch.Tensor
    source: torch.Tensor
    weight: str | None
    eps: float


class TorchOps:
    """graph/ops.py implemented in eager torch over a WeightSource and a PagedKVCache."""

    def __init__(
        self,
        weights: WeightSource,
        cache: PagedKVCache,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        cache_weights: bool = True,
        use_kernels: bool = True,
    ) -> None:
        self.weights, self.cache, self.spec = weights, cache, weights.spec
        self.dtype, self.device = dtype, torch.device(device)
        self.acc = torch.promote_types(dtype, torch.float32)  # norms, RoPE, softmax, soft-cap: fp32 or wider
        self.cache_weights = cache_weights
        self.stage = 0
        self.step: Step | None = None
        self._dense: dict[tuple[str, int, int], torch.Tensor] = {}  # dequantized / converted to the compute dtype
        self._stored: dict[tuple[str, int, int], torch.Tensor] = {}  # as stored (fp8 weights for the GEMM kernel)
        self._linears: dict[str, Linear] = {}
        for i in self.spec.layer_range:
            for name, lin in iter_linear_names(self.spec, i):
                self._linears[name] = lin
        on_gpu = use_kernels and self.device.type == "cuda" and dtype == torch.bfloat16
        self._gemm = _block_fp8_gemm() if on_gpu else None
        kernel_pool = cache.cfg.dtype in (torch.bfloat16, kv.FP8) and self.spec.global_kv_heads == 1
        self._global_attention = _global_attention_kernel() if on_gpu and kernel_pool else None
        self._normed: dict[int, _NormedHeads] = {}
        self._inv_freq: dict[tuple[float, int, int], torch.Tensor] = {}

    # -- weights --
    def _tensor(self, name: str, tp_rank: int = 0) -> torch.Tensor:
        """A stored tensor as it is, on the device (kept there unless weights are streamed)."""
        key = (name, tp_rank, self.stage)
        t = self._stored.get(key)
        if t is None:
            t = self.weights.get(name, tp_rank, self.stage).to(self.device)
            if self.cache_weights:
                self._stored[key] = t
        return t

    def _dense_weight(self, name: str, tp_rank: int) -> torch.Tensor:
        key = (name, tp_rank, self.stage)
        w = self._dense.get(key)
        if w is None:
            w = dequantize_blocks(
                self.weights.get(name + ".weight", tp_rank, self.stage).to(self.device),
                self.weights.get(f"{name}.{SCALE_SUFFIX}", tp_rank, self.stage).to(self.device),
                self.dtype,
            )
            if self.cache_weights:
                self._dense[key] = w
        return w

    def _plain(self, name: str) -> torch.Tensor:
        key = (name, -1, self.stage)
        w = self._dense.get(key)
        if w is None:
            w = self.weights.get(name, 0, self.stage).to(self.device, self.dtype)
            if self.cache_weights:
                self._dense[key] = w
        return w

    def _rank_linear(self, x: torch.Tensor, name: str, tp_rank: int) -> torch.Tensor:
        if self._gemm is not None:
            w = self._tensor(name + ".weight", tp_rank)
            s = self._tensor(f"{name}.{SCALE_SUFFIX}", tp_rank).float()
            return self._gemm(x.to(torch.bfloat16).contiguous(), w, s)
        return x @ self._dense_weight(name, tp_rank).T

    # -- ops --
    def embedding(self, input_ids: torch.Tensor, scale: float) -> torch.Tensor:
        e = self._plain(gemma4.EMBEDDING)
        return e[input_ids.to(self.device)] * torch.tensor(scale, dtype=self.dtype, device=self.device)

    def rms_norm(self, x: torch.Tensor, weight: str | None, eps: float, head_dim: int | None = None) -> torch.Tensor:
        shape = x.shape
        xf = x.to(self.acc).reshape(-1, head_dim) if head_dim else x.to(self.acc)
        y = xf * torch.pow(xf.pow(2).mean(-1, keepdim=True) + eps, -0.5)
        if weight is not None:
            y = y * self._tensor(weight).to(self.acc)
        out = y.reshape(shape).to(self.dtype)
        if head_dim and self._global_attention is not None:
            self._normed[id(out)] = _NormedHeads(out, x, weight, eps)
        return out

    def linear(self, x: torch.Tensor, name: str, sizes: Sequence[int]) -> list[torch.Tensor]:
        tp = self.weights.tp
        lin = self._linears[name]
        if tp == 1 or lin.tp_dim is None:
            y = self._rank_linear(x, name, 0)
            return [y[:, off : off + n].to(self.dtype) for off, n in fused_segments(list(sizes))]
        if lin.tp_dim == 1:  # row parallel: each rank holds K/tp input columns; the partial outputs are summed
            xs = x.chunk(tp, dim=-1)
            y = sum(self._rank_linear(xs[r], name, r).to(self.acc) for r in range(tp))
            return [y[:, off : off + n].to(self.dtype) for off, n in fused_segments(list(sizes))]
        # column parallel: each rank holds 1/tp of every component, except the replicated ones (global KV head)
        replicated = [p in lin.replicated for p in lin.hf_parts]
        rank_sizes = [n if rep else n // tp for n, rep in zip(sizes, replicated)]
        pieces: list[list[torch.Tensor]] = [[] for _ in sizes]
        for r in range(tp):
            y = self._rank_linear(x, name, r)
            for c, (off, n) in enumerate(fused_segments(rank_sizes)):
                if not replicated[c] or r == 0:
                    pieces[c].append(y[:, off : off + n])
        return [torch.cat(p, dim=-1).to(self.dtype) for p in pieces]

    def _inv(self, layer: AttentionLayer) -> torch.Tensor:
        key = (layer.rope.theta, layer.rope.head_dim, layer.rope.rotary_pairs)
        inv = self._inv_freq.get(key)
        if inv is None:
            inv = torch.tensor(layer.rope.inv_freq(), dtype=torch.float32, device=self.device).to(self.acc)
            self._inv_freq[key] = inv
        return inv

    def _rope(self, layer: AttentionLayer, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_cos_sin(self._inv(layer), positions.to(self.device))
        return apply_rope(x, cos, sin)

    def _attend(
        self,
        layer: AttentionLayer,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
    ) -> torch.Tensor:
        """softmax(q·kᵀ·scale)·v in fp32 over visible keys; q [n, heads, hd], keys/values [m, kv_heads, hd]."""
        group = layer.num_heads // layer.kv_heads
        kf = keys.to(self.acc).repeat_interleave(group, dim=1)
        vf = values.to(self.acc).repeat_interleave(group, dim=1)
        scores = torch.matmul(q.to(self.acc).transpose(0, 1), kf.permute(1, 2, 0)) * layer.scale  # [h, q, k]
        visible = k_pos[None, :] <= q_pos[:, None]
        if layer.window is not None:
            visible &= k_pos[None, :] > q_pos[:, None] - layer.window
        scores = scores.masked_fill(~visible.to(scores.device)[None], float("-inf"))
        return torch.matmul(scores.softmax(-1), vf.transpose(0, 1)).transpose(0, 1)  # [q, h, d]

    def attention(self, layer: AttentionLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        assert self.step is not None, "attention outside a step"
        nk, nv = self._normed.get(id(k)), self._normed.get(id(v))
        self._normed.clear()
        if (
            layer.kind == GLOBAL
            and nk is not None
            and nv is not None
            and nk.out is k
            and nv.out is v
            and nk.source is nv.source
            and nk.weight is not None
            and nv.weight is None
        ):
            return self._global_attention_kernel(layer, q, nk)
        nh, nkv, hd = layer.num_heads, layer.kv_heads, layer.head_dim
        out = torch.empty(q.shape[0], nh * hd, dtype=self.dtype, device=self.device)
        for seg in self.step.segments:
            rows = slice(seg.offset, seg.offset + seg.n)
            pos = torch.arange(seg.start, seg.start + seg.n)
            qh = self._rope(layer, q[rows].reshape(seg.n, nh, hd), pos)
            kh = self._rope(layer, k[rows].reshape(seg.n, nkv, hd), pos)
            vh = v[rows].reshape(seg.n, nkv, hd)
            lo = max(0, seg.start - layer.window + 1) if layer.window is not None else 0
            past = torch.arange(lo, seg.start)
            k_past, v_past = self.cache.read(layer.index, seg.seq_id, past)
            k_now, v_now = self.cache.round_trip(layer.index, kh, vh)
            self.cache.write(layer.index, seg.seq_id, pos, kh, vh)
            o = self._attend(
                layer, qh, torch.cat([k_past, k_now]), torch.cat([v_past, v_now]), pos, torch.cat([past, pos])
            )
            out[rows] = o.reshape(seg.n, nh * hd).to(self.dtype)
        return out

    def _global_attention_kernel(self, layer: AttentionLayer, q: torch.Tensor, k: _NormedHeads) -> torch.Tensor:
        """A global layer on the GPU kernel (kernels/attention.py): it takes k_raw and applies k_norm, the
        scale-free v_norm and RoPE itself, writes K/V into the pool and attends, for the whole step at once."""
        assert self.step is not None and k.weight is not None
        segs, pool, n = self.step.segments, self.cache.pools[GLOBAL], q.shape[0]
        offsets = torch.stack([self.cache.sequences[s.seq_id].offsets[GLOBAL] for s in segs])
        sc = self.cache.layer_scales(layer.index)
        out = self._global_attention(
            q.reshape(n, layer.num_heads, layer.head_dim),
            k.source.reshape(n, layer.head_dim),
            self._tensor(k.weight).float(),
            pool,
            layer.index,
            offsets,
            [s.n for s in segs],
            [s.start + s.n for s in segs],
            self._inv(layer).float(),
            k_scale=sc.k,
            v_scale=sc.v,
            eps=k.eps,
            scale=layer.scale,
        )
        for s in segs:
            self.cache.mark_written(layer.index, s.seq_id, torch.arange(s.start, s.start + s.n))
        return out.reshape(n, -1).to(self.dtype)

    def draft_attention(self, layer: AttentionLayer, q: torch.Tensor) -> torch.Tensor:
        assert self.step is not None, "attention outside a step"
        nh, hd = layer.num_heads, layer.head_dim
        out = torch.empty(q.shape[0], nh * hd, dtype=self.dtype, device=self.device)
        for seg in self.step.segments:
            rows = slice(seg.offset, seg.offset + seg.n)
            length = self.cache.sequences[seg.seq_id].length
            last = torch.full((seg.n,), length - 1)  # every draft query sits at the last cached position
            qh = self._rope(layer, q[rows].reshape(seg.n, nh, hd), last)
            lo = max(0, length - layer.window) if layer.window is not None else 0
            past = torch.arange(lo, length)
            k_past, v_past = self.cache.read(layer.index, seg.seq_id, past)
            o = self._attend(layer, qh, k_past, v_past, last, past)
            out[rows] = o.reshape(seg.n, nh * hd).to(self.dtype)
        return out

    def gelu_tanh(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def concat(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(xs), dim=-1)

    def parameter(self, name: str) -> torch.Tensor:
        return self._plain(name)

    def softcap(self, x: torch.Tensor, cap: float) -> torch.Tensor:
        return cap * torch.tanh(x.to(self.acc) / cap)

    def select_logit_tokens(self, x: torch.Tensor) -> torch.Tensor:
        assert self.step is not None
        if self.step.all_logits:
            return x
        last = torch.tensor([s.offset + s.n - 1 for s in self.step.segments], device=x.device)
        return x.index_select(0, last)

    def lm_head(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return (x @ self._plain(name).T).to(self.acc)


# ---- the model: sequences, steps, generation --------------------------------------------------------------------


@dataclass
class StepOutput:
    """Logits (fp32) per sequence of a step: [n_tokens or 1, vocab]; and the final normed hidden of those rows."""

    logits: list[torch.Tensor]
    hidden: list[torch.Tensor]


class TorchBackend:
    """The Gemma-4 text model in eager torch with a request/sequence manager over the paged cache."""

    def __init__(
        self,
        weights: WeightSource | str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        cache: CacheConfig | None = None,
        cache_weights: bool = True,
        use_kernels: bool = True,
    ) -> None:
        self.weights = open_weights(weights) if isinstance(weights, (str, Path)) else weights
        self.spec = self.weights.spec
        self.cache_cfg = cache or CacheConfig(dtype=dtype)
        scales: dict[int, KVScales] = {}
        if self.cache_cfg.kv_scales == "checkpoint":
            for i in self.spec.layer_range:
                s = self.weights.checkpoint_kv_scales(i)
                if s is not None:
                    scales[i] = s
        elif self.cache_cfg.kv_scales != "identity":
            raise ValueError(f"kv_scales must be 'identity' or 'checkpoint', not {self.cache_cfg.kv_scales!r}")
        self.cache = PagedKVCache(self.spec, self.cache_cfg, scales, device)
        self.ops = TorchOps(self.weights, self.cache, dtype, device, cache_weights, use_kernels)
        self.stages = [self.weights.stage_layers(s) for s in range(self.weights.pp)]

    # -- sequences --
    def add_sequence(self) -> int:
        return self.cache.add()

    def free(self, seq_id: int) -> None:
        self.cache.free(seq_id)

    def length(self, seq_id: int) -> int:
        return self.cache.sequences[seq_id].length

    def truncate(self, seq_id: int, length: int) -> None:
        self.cache.truncate(seq_id, length)

    @contextlib.contextmanager
    def step(
        self, batch: Sequence[tuple[int, Sequence[int] | torch.Tensor]], all_logits: bool = False
    ) -> Iterator[tuple[TorchOps, torch.Tensor]]:
        """Open one engine step over (seq_id, new tokens) pairs: yields the ops and the packed ids; on exit the
        sequences' lengths advance. The caller runs graph functions with the ops in between."""
        segments, ids, offset = [], [], 0
        for sid, toks in batch:
            t = torch.as_tensor(toks, dtype=torch.long).reshape(-1)
            start = self.cache.sequences[sid].length
            self.cache.reserve(sid, start + t.numel())
            segments.append(Segment(sid, offset, start, t.numel()))
            ids.append(t)
            offset += t.numel()
        self.ops.step = Step(segments, all_logits)
        try:
            yield self.ops, torch.cat(ids)
            for seg in segments:
                self.cache.sequences[seg.seq_id].length = seg.start + seg.n
        finally:
            self.ops.step = None
            self.ops.stage = 0

    def forward(
        self, batch: Sequence[tuple[int, Sequence[int] | torch.Tensor]], all_logits: bool = False
    ) -> StepOutput:
        """Run new tokens of several sequences (prefill chunks, decode tokens or both) through all stages."""
        with self.step(batch, all_logits) as (ops, ids):
            h = ids
            for s, layers in enumerate(self.stages[:-1]):
                ops.stage = s
                h = gemma4.forward(ops, self.spec, h, layers, first_stage=s == 0, last_stage=False)
            ops.stage = len(self.stages) - 1
            logits, hidden = gemma4.forward_with_hidden(
                ops, self.spec, h, self.stages[-1], first_stage=len(self.stages) == 1
            )
            sizes = [seg.n if all_logits else 1 for seg in ops.step.segments]  # type: ignore[union-attr]
        return StepOutput(list(logits.split(sizes)), list(hidden.split(sizes)))

    def prefill(
        self, seq_id: int, ids: Sequence[int] | torch.Tensor, chunk: int | None = None, all_logits: bool = False
    ) -> torch.Tensor:
        """Prefill one sequence, in chunks of `chunk` tokens if given. Returns the logits of the last token, or
        of every token with all_logits."""
        t = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        size = chunk or t.numel()
        outs = [self.forward([(seq_id, t[i : i + size])], all_logits).logits[0] for i in range(0, t.numel(), size)]
        return torch.cat(outs) if all_logits else outs[-1]

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """One token for each sequence; logits [len(seq_ids), vocab]."""
        out = self.forward([(s, [t]) for s, t in zip(seq_ids, tokens)])
        return torch.cat(out.logits)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        greedy: bool = True,
        *,
        stop_at_eos: bool = False,
        seed: int = 0,
    ) -> list[list[int]]:
        """Batched generation: one prefill step for all prompts, then decode steps. Returns the new tokens."""
        gen = torch.Generator().manual_seed(seed)
        sids = [self.add_sequence() for _ in prompts]
        try:
            out = self.forward([(s, p) for s, p in zip(sids, prompts)])
            logits = torch.cat(out.logits)
            new: list[list[int]] = [[] for _ in prompts]
            active = list(range(len(prompts)))
            for _ in range(max_new_tokens):
                if greedy:
                    toks = logits.argmax(-1)
                else:
                    toks = torch.multinomial(logits.float().softmax(-1).cpu(), 1, generator=gen).reshape(-1)
                still = []
                for j, t in zip(active, toks.tolist()):
                    new[j].append(t)
                    if not (stop_at_eos and t in self.spec.eos_token_ids) and len(new[j]) < max_new_tokens:
                        still.append(j)
                active = still
                if not active:
                    break
                logits = self.decode([sids[j] for j in active], [new[j][-1] for j in active])
            return new
        finally:
            for s in sids:
                self.free(s)
