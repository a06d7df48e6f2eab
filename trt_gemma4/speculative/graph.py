"""The assistant drafter's forward (frozen-KV MTP), written once against the op interface (graph/ops.py).

Read it beside research/gemma4_arch.md §4.1 (transformers `Gemma4UnifiedAssistantForCausalLM.forward`):

    e      = E_target[tok] · √hidden_target                 the TARGET's scaled embedding
    z      = pre_projection([e ; h_prev])                   2·hidden_target -> hidden_drafter
    y      = norm(layers(z))                                q-only layers over the target's KV (read-only)
    h_next = post_projection(y)                             hidden_drafter -> hidden_target: the next h_prev
    logits = y · E_drafterᵀ                                 the drafter's own tied head, no soft-cap

Each drafter layer is a Gemma-4 decoder layer without K/V projections: its query attends the target's cache of
the target's last layer of the same kind (spec.drafter_target_layers), every query at the sequence's last cached
position (ops.draft_attention). Nothing is written to the cache, so any number of draft steps leave it as it was.
Weight names are the converted drafter's (checkpoint/drafter.py).
"""

from __future__ import annotations

from typing import TypeVar

from trt_gemma4.checkpoint.drafter import (
    EMBEDDING,
    FINAL_NORM,
    POST_PROJECTION,
    PRE_PROJECTION,
    layer_name,
)
from trt_gemma4.graph.ops import AttentionLayer, Ops
from trt_gemma4.spec import DrafterSpec, Gemma4Spec

T = TypeVar("T")


def drafter_layer(ops: Ops[T], spec: Gemma4Spec, d: DrafterSpec, i: int, h: T) -> T:
    """One q-only layer: sandwich-normed read-only attention and MLP residuals, then times layer_scalar."""
    layer = AttentionLayer.of_drafter(d, i, spec)
    eps = d.rms_norm_eps
    x = ops.rms_norm(h, layer_name(i, "input_layernorm.weight"), eps)
    (q,) = ops.linear(x, layer_name(i, "attention.q"), [d.q_size(i)])
    q = ops.rms_norm(q, layer_name(i, "attention.q_layernorm.weight"), eps, head_dim=layer.head_dim)
    o = ops.draft_attention(layer, q)  # RoPE(q) at the last cached position; K/V: the target's, read-only
    (a,) = ops.linear(o, layer_name(i, "attention.dense"), [d.hidden_size])
    h = ops.add(h, ops.rms_norm(a, layer_name(i, "post_layernorm.weight"), eps))
    x = ops.rms_norm(h, layer_name(i, "pre_feedforward_layernorm.weight"), eps)
    gate, up = ops.linear(x, layer_name(i, "mlp.fc"), [d.intermediate_size, d.intermediate_size])
    (m,) = ops.linear(ops.mul(ops.gelu_tanh(gate), up), layer_name(i, "mlp.proj"), [d.hidden_size])
    h = ops.add(h, ops.rms_norm(m, layer_name(i, "post_feedforward_layernorm.weight"), eps))
    return ops.mul(h, ops.parameter(layer_name(i, "layer_scalar")))


def draft_step(ops: Ops[T], spec: Gemma4Spec, d: DrafterSpec, tokens: T, h_prev: T) -> tuple[T, T]:
    """One draft token per sequence: (logits [n, vocab] fp32, h_next [n, hidden_target]).

    tokens: the last seen token of each sequence (the target's bonus token, then each previous draft);
    h_prev: the target's post-final-norm hidden of the last accepted token, then each previous h_next.
    """
    e = ops.embedding(tokens, spec.embedding_scale)  # the target's embedding, √hidden_target in compute dtype
    (z,) = ops.linear(ops.concat([e, h_prev]), PRE_PROJECTION, [d.hidden_size])
    for i in range(d.num_layers):
        z = drafter_layer(ops, spec, d, i, z)
    y = ops.rms_norm(z, FINAL_NORM, d.rms_norm_eps)
    (h_next,) = ops.linear(y, POST_PROJECTION, [d.backbone_hidden_size])
    return ops.lm_head(y, EMBEDDING), h_next  # transformers applies no soft-cap to the drafter's logits
