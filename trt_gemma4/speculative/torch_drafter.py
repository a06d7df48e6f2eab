"""The drafter in eager torch, beside a TorchBackend target: its own weights, the target's cache and embedding.

`DrafterOps` implements the op interface for the drafter graph (speculative/graph.py): the ops that touch the
drafter's weights (linear, rms_norm, parameter, lm_head) read the converted drafter checkpoint; the others
(the target's embedding, the read-only draft attention over the target's paged cache, elementwise ops) are the
target backend's own ops, so the drafter reads exactly the KV bytes the target stored.

A draft step is a read-only engine step: one query row per sequence, no blocks reserved and no sequence length
advanced (unlike TorchBackend.step, which appends tokens).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from trt_gemma4.backends.torch_backend import Segment, Step, TorchBackend, TorchOps
from trt_gemma4.checkpoint.drafter import DrafterCheckpoint, iter_linears, load_drafter
from trt_gemma4.checkpoint.names import fused_segments
from trt_gemma4.graph.ops import AttentionLayer
from trt_gemma4.speculative.graph import draft_step


class DrafterOps:
    """graph/ops.py for the drafter graph in eager torch: drafter weights + the target's ops and cache."""

    def __init__(self, ckpt: DrafterCheckpoint, target: TorchOps, cache_weights: bool = True) -> None:
        self.ckpt, self.target = ckpt, target
        self.dtype, self.device = target.dtype, target.device
        self.cache_weights = cache_weights
        self._weights: dict[str, torch.Tensor] = {}
        self._linears = {name for name, _ in iter_linears(ckpt.spec)}

    def _get(self, name: str) -> torch.Tensor:
        w = self._weights.get(name)
        if w is None:
            if name in self._linears:
                w = self.ckpt.dense(name, self.dtype)  # BF16 as stored, or block-FP8 dequantized
            else:
                w = self.ckpt.get(name).to(self.dtype)
            w = w.to(self.device)
            if self.cache_weights:
                self._weights[name] = w
        return w

    # -- ops on the drafter's own weights --
    def linear(self, x: torch.Tensor, name: str, sizes: Sequence[int]) -> list[torch.Tensor]:
        y = x.to(self.dtype) @ self._get(name).T
        return [y[:, off : off + n] for off, n in fused_segments(list(sizes))]

    def rms_norm(self, x: torch.Tensor, weight: str | None, eps: float, head_dim: int | None = None) -> torch.Tensor:
        shape = x.shape
        xf = x.float().reshape(-1, head_dim) if head_dim else x.float()
        y = xf * torch.pow(xf.pow(2).mean(-1, keepdim=True) + eps, -0.5)
        if weight is not None:
            y = y * self._get(weight).float()  # stored bf16: exact in any compute dtype
        return y.reshape(shape).to(self.dtype)

    def parameter(self, name: str) -> torch.Tensor:
        return self._get(name)

    def lm_head(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return (x @ self._get(name).T).float()

    # -- ops that are the target's: embedding, cache, elementwise --
    def embedding(self, input_ids: torch.Tensor, scale: float) -> torch.Tensor:
        return self.target.embedding(input_ids, scale)

    def draft_attention(self, layer: AttentionLayer, q: torch.Tensor) -> torch.Tensor:
        return self.target.draft_attention(layer, q)

    def attention(self, layer: AttentionLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise TypeError("the drafter has no K/V of its own: its layers use draft_attention")

    def gelu_tanh(self, x: torch.Tensor) -> torch.Tensor:
        return self.target.gelu_tanh(x)

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.target.mul(a, b)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.target.add(a, b)

    def concat(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.target.concat([x.to(self.dtype) for x in xs])

    def softcap(self, x: torch.Tensor, cap: float) -> torch.Tensor:
        return self.target.softcap(x, cap)

    def select_logit_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return x  # one row per sequence: every row returns logits


class TorchDrafter:
    """The converted drafter running against a TorchBackend target (same device and compute dtype)."""

    def __init__(self, backend: TorchBackend, drafter: DrafterCheckpoint | str | Path) -> None:
        self.backend = backend
        self.ckpt = drafter if isinstance(drafter, DrafterCheckpoint) else load_drafter(drafter, backend.spec)
        self.spec, self.drafter = backend.spec, self.ckpt.spec
        self.ops = DrafterOps(self.ckpt, backend.ops)

    @contextlib.contextmanager
    def _read_only_step(self, seq_ids: Sequence[int]) -> Iterator[None]:
        """One query row per sequence at its last cached position; lengths and blocks stay as they are."""
        ops = self.backend.ops
        if ops.step is not None:
            raise RuntimeError("a draft step cannot run inside another engine step")
        for sid in seq_ids:
            if self.backend.length(sid) == 0:
                raise RuntimeError(f"sequence {sid} has nothing cached: prefill it before drafting")
        ops.step = Step([Segment(sid, row, self.backend.length(sid), 1) for row, sid in enumerate(seq_ids)])
        try:
            yield
        finally:
            ops.step = None

    @torch.no_grad()
    def step(
        self, seq_ids: Sequence[int], tokens: Sequence[int] | torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One draft step for several sequences: (logits [n, vocab] fp32, h_next [n, hidden_target])."""
        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        with self._read_only_step(seq_ids):
            return draft_step(self.ops, self.spec, self.drafter, ids, hidden.to(self.backend.ops.dtype))

    def propose(self, seeds: Sequence[tuple[int, int, torch.Tensor]], ks: Sequence[int]) -> list[list[int]]:
        """Greedy drafts: for each (seq_id, last token, post-norm hidden of the last accepted token) up to ks[j]
        tokens, batched over the sequences still drafting. The hidden recurs through post_projection."""
        drafts: list[list[int]] = [[] for _ in seeds]
        tokens = [tok for _, tok, _ in seeds]
        hidden = [h.reshape(-1) for _, _, h in seeds]
        for depth in range(max(ks, default=0)):
            live = [j for j in range(len(seeds)) if ks[j] > depth]
            logits, h_next = self.step(
                [seeds[j][0] for j in live], [tokens[j] for j in live], torch.stack([hidden[j] for j in live])
            )
            for row, j in enumerate(live):
                tokens[j] = int(logits[row].argmax())
                hidden[j] = h_next[row]
                drafts[j].append(tokens[j])
        return drafts
