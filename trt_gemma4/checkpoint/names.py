"""The whole HF (ModelOpt export) -> TRT-LLM checkpoint name table, in one place.

TRT-LLM names follow tensorrt_llm/models/gemma/convert.py (research/trtllm.md §2.5) with three differences:
norms are stored as they are (Gemma-4's RMSNorm is plain `w * x_hat`, not Gemma 1-3's `1 + w`), quantized
linears carry our block-FP8 scale `weights_block_scaling_factor` [ceil(N/128), ceil(K/128)], and the fused
projections (qkv, gate|up) place each component at a 128-row aligned offset so that no 128x128 block straddles
two components (padding rows are FP8 zeros inside the component's last partial block, sharing its scale;
on the 12B every component is already aligned).
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK = 128
SCALE_SUFFIX = "weights_block_scaling_factor"


def hf_prefix(multimodal: bool) -> str:
    """Key prefix of the text model in a ModelOpt export."""
    return "model.language_model." if multimodal else "model."


# Non-layer tensors: TRT-LLM name -> HF name (without the text prefix).
GLOBAL_TENSORS: dict[str, str] = {
    "transformer.vocab_embedding.weight": "embed_tokens.weight",
    "transformer.ln_f.weight": "norm.weight",
}

# Per-layer plain tensors (copied as they are): TRT-LLM name -> HF name, both relative to the layer.
LAYER_TENSORS: dict[str, str] = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_layernorm.weight": "post_attention_layernorm.weight",
    "pre_feedforward_layernorm.weight": "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight": "post_feedforward_layernorm.weight",
    "attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "attention.k_layernorm.weight": "self_attn.k_norm.weight",
    "layer_scalar": "layer_scalar",
}


@dataclass(frozen=True)
class Linear:
    """One quantized linear in the TRT-LLM checkpoint, built from one or more HF projections (fused by rows).

    tp_dim: 0 = split output rows (column parallel), 1 = split input columns (row parallel), None = replicate.
    replicated: HF components that every rank keeps whole (the global layer's single KV head).
    """

    trt_name: str
    hf_parts: tuple[str, ...]
    tp_dim: int | None
    replicated: tuple[str, ...] = ()


def layer_linears(has_v_proj: bool, global_layer: bool) -> list[Linear]:
    """The quantized linears of one layer. A global layer with K=V has no v_proj: qkv holds [q | k_raw]."""
    qkv_parts = ("self_attn.q_proj", "self_attn.k_proj") + (("self_attn.v_proj",) if has_v_proj else ())
    kv_parts = qkv_parts[1:]
    return [
        Linear("attention.qkv", qkv_parts, 0, replicated=kv_parts if global_layer else ()),
        Linear("attention.dense", ("self_attn.o_proj",), 1),
        Linear("mlp.fc", ("mlp.gate_proj", "mlp.up_proj"), 0),  # fused gate|up (TRT-LLM: fc = gate branch)
        Linear("mlp.proj", ("mlp.down_proj",), 1),
    ]


def trt_layer(i: int, name: str) -> str:
    return f"transformer.layers.{i}.{name}"


def hf_layer(prefix: str, i: int, name: str) -> str:
    return f"{prefix}layers.{i}.{name}"


def fused_segments(sizes: list[int] | tuple[int, ...]) -> list[tuple[int, int]]:
    """(offset, size) of each component inside a fused weight: offsets aligned to 128 rows."""
    out, off = [], 0
    for n in sizes:
        out.append((off, n))
        off += -(-n // BLOCK) * BLOCK
    return out


def fused_rows(sizes: list[int] | tuple[int, ...]) -> int:
    """Total rows of a fused weight (the last component is not padded beyond its own size)."""
    segs = fused_segments(sizes)
    return segs[-1][0] + segs[-1][1]


# KV-cache scales. ModelOpt writes amax/448 of the post-norm (post-RoPE) K and V as float32 0-D tensors named after
# k_proj / v_proj (research/modelopt.md §2.4); a global K=V layer has v_proj.v_scale although it has no v_proj.
HF_K_SCALE = "self_attn.k_proj.k_scale"
HF_V_SCALE = "self_attn.v_proj.v_scale"
# TRT-LLM side: stock gpt_attention takes one merged scale (max of the two); our global plugin keeps K and V apart.
KV_SCALE_TENSORS: dict[str, str] = {
    "attention.k_cache_scaling_factor": HF_K_SCALE,
    "attention.v_cache_scaling_factor": HF_V_SCALE,
}
KV_MERGED_SCALE = "attention.kv_cache_scaling_factor"
