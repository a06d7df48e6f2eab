"""The op interface the Gemma-4 graph is written against. Backends implement it (torch: eager; TRT-LLM: network).

Ops are coarse on purpose: each maps to one TRT-LLM construct (named in the docstrings), so the TRT-LLM backend
stays a table of mappings and records one trace entry per op. Tensors are "packed" the way TRT-LLM runs with
remove_input_padding: [num_tokens, features], the tokens of all sequences of a step one after another. Which
token belongs to which sequence, its position and its KV-cache blocks are step metadata the backend owns (the
engine's attention inputs), not graph values.

Weights are named by their TRT-LLM checkpoint names (trt_gemma4/checkpoint/names.py); a quantized linear is named
without the `.weight` suffix. The graph is written in whole-model shapes: tensor parallelism is a backend matter
(column-parallel linears return this rank's part of each component, row-parallel ones all-reduce).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from trt_gemma4.spec import GLOBAL, SLIDING, DrafterSpec, Gemma4Spec, RopeSpec

T = TypeVar("T")


@dataclass(frozen=True)
class AttentionLayer:
    """What one attention op needs to know about its layer (static; the per-step metadata is the backend's)."""

    index: int  # the model layer (selects its KV cache)
    kind: str  # SLIDING or GLOBAL
    num_heads: int
    kv_heads: int
    head_dim: int
    rope: RopeSpec
    window: int | None  # sliding: keys p-window < kp <= p (the current token included); None: all kp <= p
    scale: float = 1.0  # Gemma 4: q·k is not scaled (QK-norm keeps it well conditioned)

    @classmethod
    def of(cls, spec: Gemma4Spec, layer: int) -> AttentionLayer:
        sliding = not spec.is_global(layer)
        return cls(
            index=layer,
            kind=SLIDING if sliding else GLOBAL,
            num_heads=spec.num_attention_heads,
            kv_heads=spec.kv_heads(layer),
            head_dim=spec.head_dim(layer),
            rope=spec.rope(layer),
            window=spec.sliding_window if sliding else None,
        )

    @classmethod
    def of_drafter(cls, drafter: DrafterSpec, layer: int, target: Gemma4Spec) -> AttentionLayer:
        """A drafter layer: q-only, reading the target's layer of the same kind (spec.drafter_target_layers)."""
        kind = drafter.layer_types[layer]
        sliding = kind == SLIDING
        target_layer = target.drafter_target_layers[kind]
        return cls(
            index=target_layer,
            kind=kind,
            num_heads=drafter.num_attention_heads,
            kv_heads=target.kv_heads(target_layer),
            head_dim=drafter.head_dim(layer),
            rope=target.rope(target_layer),
            window=drafter.sliding_window if sliding else None,
        )


class Ops(Protocol[T]):
    """The ops of the Gemma-4 text graph and the drafter graph."""

    def embedding(self, input_ids: T, scale: float) -> T:
        """`vocab_embedding[ids] * scale`, the multiply in the compute dtype (√3840 is 62.0 in bf16).
        TRT-LLM: `Embedding` + `mul` by a constant of the compute dtype."""
        ...

    def rms_norm(self, x: T, weight: str | None, eps: float, head_dim: int | None = None) -> T:
        """`x · (mean(x²) + eps)^-½ · w` in fp32, cast back; plain weight (no `1 + w`); weight None: no scale.
        head_dim: normalise each head of that size separately (q/k/v norms). TRT-LLM: `rms_norm` (on a
        [tokens, heads, head_dim] view for per-head norms, as `Attention.forward` does for qk_layernorm)."""
        ...

    def linear(self, x: T, name: str, sizes: Sequence[int]) -> list[T]:
        """`x · dequant(W)ᵀ` for a block-FP8 weight [rows, K] with 128x128 scales, fp32 accumulate; the output
        split into its fused components (`sizes`, placed at 128-row aligned offsets: names.fused_segments).
        TRT-LLM: our BlockFp8WoGemm plugin, then `split`; ColumnLinear/RowLinear semantics under TP."""
        ...

    def attention(self, layer: AttentionLayer, q: T, k: T, v: T) -> T:
        """Attention of one layer over the paged KV cache: RoPE on q and k at each token's position, write k and
        v (already normed) into the cache, then softmax(q·kᵀ·scale)·v over the visible keys (causal; sliding
        window inclusive of the current token), GQA/MQA by head groups. Returns [tokens, num_heads*head_dim].
        TRT-LLM: sliding = stock `gpt_attention` (rope_gpt_neox, q_scaling 1/√head_dim); global = our
        Gemma4GlobalAttention plugin (512-d MQA, proportional RoPE, two-plane layout)."""
        ...

    def draft_attention(self, layer: AttentionLayer, q: T) -> T:
        """The drafter's q-only attention over the target's cache of `layer.index`, read-only, every query at
        the position of the sequence's last cached token. TRT-LLM: our Gemma4DraftAttention plugin."""
        ...

    def gelu_tanh(self, x: T) -> T:
        """GELU, tanh approximation (gelu_pytorch_tanh). TRT-LLM: `gelu` (tanh form)."""
        ...

    def mul(self, a: T, b: T) -> T:
        """Elementwise product (broadcasting). TRT-LLM: `elementwise_binary` / `*`."""
        ...

    def add(self, a: T, b: T) -> T:
        """Elementwise sum. TRT-LLM: `+`."""
        ...

    def concat(self, xs: Sequence[T]) -> T:
        """Concatenate along the feature dim. TRT-LLM: `concat(dim=-1)`."""
        ...

    def parameter(self, name: str) -> T:
        """A small stored tensor used as a value (the per-layer `layer_scalar`). TRT-LLM: `constant`."""
        ...

    def softcap(self, x: T, cap: float) -> T:
        """`cap · tanh(x / cap)` in fp32. TRT-LLM: `tanh` between two constant multiplies."""
        ...

    def select_logit_tokens(self, x: T) -> T:
        """Keep the tokens whose logits the step returns (the last of each sequence, or all for parity).
        TRT-LLM: `gather_last_token_logits` (index_select by host_context_lengths)."""
        ...

    def lm_head(self, x: T, name: str) -> T:
        """`x · Wᵀ` for a plain (unquantized) matrix [vocab, hidden]: the tied LM head. Logits come back in
        fp32. TRT-LLM: ColumnLinear sharing the embedding weight, logits_dtype float32."""
        ...
