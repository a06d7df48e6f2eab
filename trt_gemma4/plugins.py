"""The TensorRT plugins of libtrt_gemma4_plugins.so, described as data: names, version, fields, inputs.

The C++ side is plugins/trt/ (IPluginV3, namespace "trt_gemma4", version "1"); this module is what the Python
TRT-LLM backend uses to create them, following the IPluginV3 pattern of research/trtllm.md §4.3:

    creator = trt.get_plugin_registry().get_creator(schema.name, schema.version, schema.namespace)
    pfc = trt.PluginFieldCollection([trt.PluginField(n, a, getattr(trt.PluginFieldType, t))
                                     for n, a, t in schema.field_arrays(values)])
    plugin = creator.create_plugin(layer_name, pfc, trt.TensorRTPhase.BUILD)
    layer = default_trtnet().add_plugin_v3([t.trt_tensor for t in inputs], [], plugin)

tests/test_plugin_fields.py checks this schema against the compiled creators (getFieldNames) and round-trips
every field through getFieldsToSerialize -> createPlugin(kRUNTIME).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trt_gemma4.errors import Gemma4Error
from trt_gemma4.spec import Gemma4Spec

LIBRARY_NAME = "libtrt_gemma4_plugins.so"
NAMESPACE = "trt_gemma4"
VERSION = "1"

# PluginFieldType names (TensorRT 10.14 include/NvInferPluginBase.h, enum class PluginFieldType) and numpy dtypes.
_FIELD_TYPES: dict[str, tuple[str, int, type[np.generic]]] = {
    "int32": ("INT32", 5, np.int32),
    "float32": ("FLOAT32", 1, np.float32),
}

KV_CACHE_DTYPES = {"fp8": 0, "bf16": 1}


@dataclass(frozen=True)
class PluginField:
    """One scalar plugin field. default None = required."""

    name: str
    dtype: str  # "int32" | "float32"
    default: int | float | None
    doc: str

    @property
    def trt_type(self) -> str:
        """Member name of trt.PluginFieldType."""
        return _FIELD_TYPES[self.dtype][0]

    @property
    def trt_type_code(self) -> int:
        """Numeric value of that PluginFieldType member (what the C++ creator reports)."""
        return _FIELD_TYPES[self.dtype][1]


@dataclass(frozen=True)
class PluginTensor:
    """One plugin input or output. Host tensors are read on the CPU inside enqueue (TensorLocation.HOST)."""

    name: str
    dtype: str  # "bfloat16" | "float32" | "fp8" | "int32" | "int64"
    shape: str
    host: bool = False


@dataclass(frozen=True)
class PluginSchema:
    name: str
    fields: tuple[PluginField, ...]
    outputs: tuple[PluginTensor, ...]
    version: str = VERSION
    namespace: str = NAMESPACE

    def field(self, name: str) -> PluginField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    def resolve(self, values: Mapping[str, Any]) -> dict[str, int | float]:
        """All fields with defaults filled in; unknown or missing required names raise Gemma4Error."""
        known = {f.name for f in self.fields}
        unknown = sorted(set(values) - known)
        if unknown:
            raise Gemma4Error(f"plugin {self.name}: unknown field(s) {', '.join(unknown)}; known: {sorted(known)}")
        out: dict[str, int | float] = {}
        for f in self.fields:
            v = values.get(f.name, f.default)
            if v is None:
                raise Gemma4Error(f"plugin {self.name}: field '{f.name}' is required")
            out[f.name] = int(v) if f.dtype == "int32" else float(v)
        return out

    def field_arrays(self, values: Mapping[str, Any]) -> list[tuple[str, np.ndarray, str]]:
        """(name, one-element numpy array, trt.PluginFieldType member name) for every field, in schema order."""
        resolved = self.resolve(values)
        return [(f.name, np.array([resolved[f.name]], dtype=_FIELD_TYPES[f.dtype][2]), f.trt_type) for f in self.fields]


# ---- BlockFp8WoGemm ----------------------------------------------------------------------------------------------

BLOCK_FP8_GEMM = PluginSchema(
    name="BlockFp8WoGemm",
    fields=(
        PluginField("out_features", "int32", None, "N: rows of W (a multiple of 16)"),
        PluginField("in_features", "int32", None, "K: columns of W and X (a multiple of 16)"),
        PluginField("block_size", "int32", 128, "weight block edge (128 only)"),
        PluginField("weight_layout_version", "int32", 1, "1: W in the checkpoint's [N, K] row-major layout"),
    ),
    outputs=(PluginTensor("y", "bfloat16", "[..., N]"),),
)
BLOCK_FP8_GEMM_INPUTS = (
    PluginTensor("x", "bfloat16", "[..., K]"),
    PluginTensor("weight", "fp8", "[N, K]"),
    PluginTensor("weights_block_scaling_factor", "float32", "[ceil(N/128), ceil(K/128)]"),
)

# ---- Gemma4GlobalAttention ---------------------------------------------------------------------------------------

GLOBAL_ATTENTION = PluginSchema(
    name="Gemma4GlobalAttention",
    fields=(
        PluginField("layer_idx", "int32", None, "row of host_kv_cache_pool_mapping (local attention layer)"),
        PluginField("num_q_heads", "int32", None, "query heads on this rank"),
        PluginField("num_kv_heads", "int32", 1, "real KV heads (1 on global layers)"),
        PluginField("head_dim", "int32", None, "64, 128, 256 or 512"),
        PluginField("kv_head_size", "int32", None, "the engine's declared KV head size (head_size in config.json)"),
        PluginField("tokens_per_block", "int32", 32, "PluginConfig.tokens_per_block (a power of two)"),
        PluginField("kv_cache_dtype", "int32", KV_CACHE_DTYPES["fp8"], "0 FP8 E4M3, 1 BF16"),
        PluginField("k_scale", "float32", 1.0, "K dequantisation multiplier (quant -> orig)"),
        PluginField("v_scale", "float32", 1.0, "V dequantisation multiplier"),
        PluginField("softmax_scale", "float32", 1.0, "Gemma-4: 1.0"),
        PluginField("rms_norm_eps", "float32", 1e-6, "epsilon of the k and v norms"),
        PluginField("sliding_window", "int32", 0, "0: full attention; else the model's attention window"),
        PluginField("draft_mode", "int32", 0, "1: read-only drafter attention (no K/V written)"),
        PluginField("max_kv_splits", "int32", 16, "flash-decoding split bound the workspace is sized for"),
    ),
    outputs=(PluginTensor("attention_output", "bfloat16", "[T, num_q_heads * head_dim]"),),
)

# TRT-LLM runtime tensors, names fixed by the runtime (research/trtllm_attention.md §4.1).
_KV_RUNTIME_INPUTS = (
    PluginTensor("sequence_length", "int32", "[B]"),
    PluginTensor("host_past_key_value_lengths", "int32", "[B]", host=True),
    PluginTensor("host_context_lengths", "int32", "[B]", host=True),
    PluginTensor("host_request_types", "int32", "[B]", host=True),
    PluginTensor("kv_cache_block_offsets", "int32", "[pools, B, 2, max_blocks_per_seq]"),
    PluginTensor("host_kv_cache_pool_pointers", "int64", "[pools, 2]", host=True),
    PluginTensor("host_kv_cache_pool_mapping", "int32", "[layers, 2]", host=True),
    PluginTensor("host_max_attention_window_sizes", "int32", "[layers]", host=True),
)
GLOBAL_ATTENTION_INPUTS = (
    PluginTensor("q", "bfloat16", "[T, num_q_heads * head_dim]"),
    PluginTensor("k_raw", "bfloat16", "[T, head_dim]"),
    PluginTensor("k_norm_weight", "float32", "[head_dim]"),
    PluginTensor("rope_inv_freq", "float32", "[head_dim / 2]"),
    *_KV_RUNTIME_INPUTS,
)
DRAFT_ATTENTION_INPUTS = (
    PluginTensor("q", "bfloat16", "[B, num_q_heads * head_dim]"),
    PluginTensor("rope_inv_freq", "float32", "[head_dim / 2]"),
    PluginTensor("q_positions", "int32", "[B]"),
    *_KV_RUNTIME_INPUTS,
)

PLUGINS: dict[str, PluginSchema] = {s.name: s for s in (BLOCK_FP8_GEMM, GLOBAL_ATTENTION)}


def attention_inputs(draft_mode: bool) -> tuple[PluginTensor, ...]:
    """The input list of Gemma4GlobalAttention in target or draft mode, in plugin order."""
    return DRAFT_ATTENTION_INPUTS if draft_mode else GLOBAL_ATTENTION_INPUTS


def gemm_fields(out_features: int, in_features: int) -> dict[str, int]:
    return {"out_features": out_features, "in_features": in_features}


def global_attention_fields(
    spec: Gemma4Spec,
    layer: int,
    *,
    tp: int = 1,
    tokens_per_block: int = 32,
    kv_cache_dtype: str = "fp8",
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    draft_mode: bool = False,
) -> dict[str, int | float]:
    """Fields for the attention plugin on target layer `layer` (also its read-only drafter use, on that layer's
    cache). The single global KV head is replicated across TP ranks, query heads are split."""
    if spec.num_attention_heads % tp:
        raise Gemma4Error(f"num_attention_heads {spec.num_attention_heads} is not divisible by tp {tp}")
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise Gemma4Error(f"kv cache dtype {kv_cache_dtype!r}: expected one of {sorted(KV_CACHE_DTYPES)}")
    glob = spec.is_global(layer)
    if not glob and not draft_mode:
        raise Gemma4Error(f"layer {layer} is a sliding layer: stock gpt_attention serves it, not this plugin")
    values = {
        "layer_idx": layer,
        "num_q_heads": spec.num_attention_heads // tp,
        "num_kv_heads": spec.kv_heads(layer) if glob else spec.sliding_kv_heads // tp,
        "head_dim": spec.head_dim(layer),
        "kv_head_size": spec.kv_head_size,
        "tokens_per_block": tokens_per_block,
        "kv_cache_dtype": KV_CACHE_DTYPES[kv_cache_dtype],
        "k_scale": k_scale,
        "v_scale": v_scale,
        "softmax_scale": 1.0,
        "rms_norm_eps": spec.rms_norm_eps,
        "sliding_window": 0 if glob else spec.sliding_window,
        "draft_mode": int(draft_mode),
    }
    return GLOBAL_ATTENTION.resolve(values)


def load_library(path: str | Path) -> ctypes.CDLL:
    """Load the plugin library into this process (RTLD_GLOBAL) and register its creators with TensorRT.

    TensorRT must already be loaded (import tensorrt first): the library registers through TensorRT's
    getPluginRegistry() (research/trtllm.md §4.2 follows the same ctypes pattern for TRT-LLM's own library)."""
    p = Path(path)
    if not p.is_file():
        raise Gemma4Error(f"{p}: plugin library not found (build it with `trt-gemma4 build`)")
    lib = ctypes.CDLL(str(p), mode=ctypes.RTLD_GLOBAL)
    init = lib.initTrtGemma4Plugins
    init.argtypes = [ctypes.c_void_p]
    init.restype = ctypes.c_bool
    if not init(None):
        raise Gemma4Error(f"{p}: registering the plugins failed: TensorRT is not loaded in this process")
    return lib
