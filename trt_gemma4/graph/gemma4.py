"""The Gemma-4 text forward, written once against the op interface (graph/ops.py).

Read it beside research/gemma4_arch.md §2; each step names the section it implements. Weight names are the TRT-LLM
checkpoint's (checkpoint/names.py). The same functions run in eager torch (backends/torch_backend.py) and emit
the TRT-LLM network (backends/trtllm_backend.py).
"""

from __future__ import annotations

from typing import TypeVar

from trt_gemma4.checkpoint.names import trt_layer
from trt_gemma4.graph.ops import AttentionLayer, Ops
from trt_gemma4.spec import Gemma4Spec

T = TypeVar("T")

EMBEDDING = "transformer.vocab_embedding.weight"  # also the tied LM head
FINAL_NORM = "transformer.ln_f.weight"


def qkv_sizes(spec: Gemma4Spec, layer: int) -> list[int]:
    """Components of the fused qkv projection: [q, k, v], or [q, k_raw] on a global layer with K=V."""
    q, kv = spec.q_size(layer), spec.kv_size(layer)
    return [q, kv, kv] if spec.has_v_proj(layer) else [q, kv]


def embed(ops: Ops[T], spec: Gemma4Spec, input_ids: T) -> T:
    """§2.0: h = E[ids] · √hidden, the scale in the compute dtype."""
    return ops.embedding(input_ids, spec.embedding_scale)


def attention_block(ops: Ops[T], spec: Gemma4Spec, i: int, x: T) -> T:
    """§2.2 on the normed input x: q/k/v projections, per-head norms, RoPE + paged attention, o_proj."""
    layer = AttentionLayer.of(spec, i)
    eps, hd = spec.rms_norm_eps, layer.head_dim
    parts = ops.linear(x, trt_layer(i, "attention.qkv"), qkv_sizes(spec, i))
    q, k_raw = parts[0], parts[1]
    v_raw = parts[2] if spec.has_v_proj(i) else k_raw  # global layers: no v_proj, V from the K projection
    q = ops.rms_norm(q, trt_layer(i, "attention.q_layernorm.weight"), eps, head_dim=hd)  # q_norm, learned scale
    k = ops.rms_norm(k_raw, trt_layer(i, "attention.k_layernorm.weight"), eps, head_dim=hd)  # k_norm
    v = ops.rms_norm(v_raw, None, eps, head_dim=hd)  # v_norm: no scale
    o = ops.attention(layer, q, k, v)  # RoPE(q, k); cache K, V; softmax(q·kᵀ · 1.0) v; window incl. current
    (out,) = ops.linear(o, trt_layer(i, "attention.dense"), [spec.hidden_size])  # o_proj
    return out


def mlp_block(ops: Ops[T], spec: Gemma4Spec, i: int, x: T) -> T:
    """§2.3: down(gelu_tanh(gate(x)) · up(x)), gate|up fused in one projection."""
    gate, up = ops.linear(x, trt_layer(i, "mlp.fc"), [spec.intermediate_size, spec.intermediate_size])
    (out,) = ops.linear(ops.mul(ops.gelu_tanh(gate), up), trt_layer(i, "mlp.proj"), [spec.hidden_size])
    return out


def decoder_layer(ops: Ops[T], spec: Gemma4Spec, i: int, h: T) -> T:
    """One layer: sandwich-normed attention and MLP residuals, then the whole residual times layer_scalar."""
    eps = spec.rms_norm_eps
    x = ops.rms_norm(h, trt_layer(i, "input_layernorm.weight"), eps)
    a = attention_block(ops, spec, i, x)
    h = ops.add(h, ops.rms_norm(a, trt_layer(i, "post_layernorm.weight"), eps))  # post_attention_layernorm
    x = ops.rms_norm(h, trt_layer(i, "pre_feedforward_layernorm.weight"), eps)
    m = mlp_block(ops, spec, i, x)
    h = ops.add(h, ops.rms_norm(m, trt_layer(i, "post_feedforward_layernorm.weight"), eps))
    return ops.mul(h, ops.parameter(trt_layer(i, "layer_scalar")))  # §2.4


def final_hidden(ops: Ops[T], spec: Gemma4Spec, h: T) -> T:
    """§2.5 first half: the final norm of the tokens that return logits (the drafter's h_prev is this)."""
    return ops.rms_norm(ops.select_logit_tokens(h), FINAL_NORM, spec.rms_norm_eps)


def logits(ops: Ops[T], spec: Gemma4Spec, x: T) -> T:
    """§2.5 second half: tied LM head, then the final soft-cap (30 on the 12B)."""
    out = ops.lm_head(x, EMBEDDING)
    return ops.softcap(out, spec.final_logit_softcap) if spec.final_logit_softcap else out


def run_layers(ops: Ops[T], spec: Gemma4Spec, inputs: T, layers: range | list[int], first_stage: bool) -> T:
    """Embedding (on the first stage) and decoder layers `layers`; inputs are ids or the previous stage's h."""
    h = embed(ops, spec, inputs) if first_stage else inputs
    for i in layers:
        h = decoder_layer(ops, spec, i, h)
    return h


def forward_with_hidden(
    ops: Ops[T], spec: Gemma4Spec, inputs: T, layers: range | list[int] | None = None, *, first_stage: bool = True
) -> tuple[T, T]:
    """The last (or only) pipeline stage: (logits, final normed hidden) of the tokens that return logits.
    The drafter starts from that hidden (research/gemma4_arch.md §4.1: h_prev is post-final-norm)."""
    h = run_layers(ops, spec, inputs, spec.layer_range if layers is None else layers, first_stage)
    x = final_hidden(ops, spec, h)
    return logits(ops, spec, x), x


def forward(
    ops: Ops[T],
    spec: Gemma4Spec,
    inputs: T,
    layers: range | list[int] | None = None,
    *,
    first_stage: bool = True,
    last_stage: bool = True,
) -> T:
    """The text model, or one pipeline stage of it.

    inputs: token ids on the first stage, else the previous stage's hidden states. Returns logits on the last
    stage (of the tokens `select_logit_tokens` keeps), else the hidden states for the next stage.
    """
    if last_stage:
        return forward_with_hidden(ops, spec, inputs, layers, first_stage=first_stage)[0]
    return run_layers(ops, spec, inputs, spec.layer_range if layers is None else layers, first_stage)
