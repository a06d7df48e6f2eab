"""TensorRT-LLM 1.2.1 backend: the Gemma-4 graph (graph/gemma4.py) emitted as a TensorRT-LLM network.

Runs only where TensorRT-LLM 1.2.1 and TensorRT 10.14 are installed (the NGC container
nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3); in tests it runs against trt_gemma4/testing/
trtllm_standin.py. Every TensorRT-LLM / TensorRT call below names the 1.2-line source it follows. The sources were
read file by file from the public NVIDIA/TensorRT-LLM repository; the v1.2.1 tag itself could not be pinned, so
each comment gives the commit of the version read (research/trtllm.md, "How the facts were gathered"). The list of
APIs used, with their signatures, is trt_gemma4/testing/trtllm_api.json.

The op table (graph/ops.py -> TensorRT-LLM):

    embedding          functional.embedding + mul by √hidden as a constant of the compute dtype
    rms_norm           functional.rms_norm on an fp32 cast (per-head: on a [T, heads, head_dim] view), times the
                       fp32 weight, cast back
    linear             our BlockFp8WoGemm plugin (IPluginV3, add_plugin_v3), functional.split into the fused
                       components at names.fused_segments offsets; row-parallel: functional.allreduce
    attention sliding  functional.gpt_attention on concat([q, k, v]): head 256, 8 KV heads, rope_gpt_neox θ=1e4,
                       q_scaling = 1/(√head_dim · scale) (= 1/16: softmax scale 1.0), window at run time
    attention global   our Gemma4GlobalAttention plugin: q, k_raw and the k_norm weight (it applies k_norm and the
                       scale-free v_norm itself), proportional-RoPE inv_freq, the engine's KV-cache inputs
    gelu_tanh          functional.gelu (the tanh form)
    mul / add          functional.mul / functional.add
    concat             functional.concat(dim=-1)
    parameter          Parameter.value (a network constant)
    softcap            cast to fp32, mul by 1/cap, functional.tanh, mul by cap
    select_logit_tokens functional.gather_last_token_logits (remove_input_padding)
    lm_head            functional.matmul(x, embedding, transb=True), cast to fp32 (tied head)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch

# TensorRT 10.14 Python API (the IPluginV3 pattern of research/trtllm.md §4.3): get_plugin_registry().get_creator(
# name, version, plugin_namespace), PluginField(name, data, type), PluginFieldCollection(fields), TensorRTPhase,
# IPluginCreatorV3One.create_plugin(name, field_collection, phase) (TensorRT Python API reference, infer/Plugin),
# INetworkDefinition.add_plugin_v3(inputs, shape_inputs, plugin) (TensorRT OSS python/src/infer/pyGraph.cpp).
import tensorrt as trt

# tensorrt_llm/_common.py: default_net() is the Network being built, default_trtnet() its INetworkDefinition.
from tensorrt_llm._common import default_net, default_trtnet

# tensorrt_llm/builder.py@008b2b8d: BuildConfig (keyword construction) and build(model, build_config) -> Engine.
from tensorrt_llm.builder import BuildConfig, build

# tensorrt_llm/functional.py@0071496d (1.x line: has num_kv_heads_origin, cp_group, attention_output_sf_scale).
from tensorrt_llm.functional import (
    AttentionMaskType,
    PositionEmbeddingType,
    RotaryScalingType,
    Tensor,
    _create_tensor,
    add,
    allreduce,
    cast,
    concat,
    constant,
    embedding,
    gather_last_token_logits,
    gelu,
    gpt_attention,
    matmul,
    mul,
    rms_norm,
    split,
    tanh,
    view,
)

# tensorrt_llm/models/modeling_utils.py@01ea6d79: PretrainedConfig (unknown keys become attributes) and
# PretrainedModel (a Module with config, load(weights), prepare_inputs(...)).
from tensorrt_llm.models.modeling_utils import PretrainedConfig, PretrainedModel

# tensorrt_llm/module.py@000a01de: Module keeps Parameters and sub-Modules set as attributes; named_parameters()
# joins the attribute path with dots, which is how checkpoint names map onto parameters.
from tensorrt_llm.module import Module

# tensorrt_llm/parameter.py (1.x: Parameter(value=None, shape=None, dtype=None, is_buffer=False, ...)).
from tensorrt_llm.parameter import Parameter

# tensorrt_llm/plugin/plugin.py: PluginConfig fields (research/trtllm.md §1.4, plugin.py@c20322ff).
from tensorrt_llm.plugin import PluginConfig

from trt_gemma4 import plugins
from trt_gemma4.backends.trtllm_policy import ContextFmhaChoice, context_fmha_choice
from trt_gemma4.checkpoint import names
from trt_gemma4.checkpoint.trtllm import component_sizes, rank_file
from trt_gemma4.errors import CheckpointError, Gemma4Error
from trt_gemma4.graph import gemma4
from trt_gemma4.graph.ops import AttentionLayer
from trt_gemma4.spec import GLOBAL, Gemma4Spec, load_json

ARCHITECTURE = "Gemma4ForCausalLM"
SLIDING_INV_FREQ = "rotary_inv_freq"  # TRT-LLM's model-level RoPE buffer names (layers/attention.py)
SLIDING_COS_SIN = "embed_positions_for_gpt_attention"
GLOBAL_INV_FREQ = "global_rotary_inv_freq"
KV_RCP_SCALE = "attention.kv_cache_rcp_scaling_factor"  # orig -> quant, as TRT-LLM's preprocess_weights names it
K_SCALE, V_SCALE = names.KV_SCALE_TENSORS  # the global plugin's separate K and V scales


def _nb(n: int) -> int:
    return -(-n // names.BLOCK)


def spec_of(config: PretrainedConfig) -> Gemma4Spec:
    """The Gemma4Spec carried in the checkpoint config's `gemma4` key."""
    g = getattr(config, "gemma4", None)
    if not isinstance(g, dict) or "spec" not in g:
        raise CheckpointError("config.json", None, "a 'gemma4' key with the model spec (trt-gemma4 convert)", "none")
    return Gemma4Spec.from_dict(g["spec"])


def load_config(ckpt_dir: str | Path) -> PretrainedConfig:
    """PretrainedConfig of a converted checkpoint. Built directly, not through PretrainedConfig.from_json_file,
    which looks the architecture up in MODEL_MAP (modeling_utils.py from_dict) where ours is not registered."""
    path = Path(ckpt_dir) / "config.json"
    cfg = load_json(path)
    if cfg.get("architecture") != ARCHITECTURE:
        raise CheckpointError(str(path), None, f"architecture {ARCHITECTURE}", repr(cfg.get("architecture")))
    return PretrainedConfig(**cfg)


def kv_cache_dtype(config: PretrainedConfig) -> str:
    """'fp8' when the config's quantization.kv_cache_quant_algo is FP8 (QuantAlgo is a str enum), else 'bf16'."""
    algo = config.quantization.kv_cache_quant_algo
    return "fp8" if algo is not None and str(algo) in ("FP8", "QuantAlgo.FP8") else "bf16"


# ---- the parameters, by checkpoint name ------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamDecl:
    """One parameter of a rank: checkpoint name, per-rank shape, TRT-LLM dtype string."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def rank_parameters(spec: Gemma4Spec, config: PretrainedConfig) -> list[ParamDecl]:
    """The parameters one rank holds, shapes as docs/checkpoint_format.md gives them (this rank's PP stage, TP
    share). Sliding layers keep the merged KV scale (and its reciprocal); global layers the separate K and V ones."""
    m = config.mapping
    tp, H, dt = m.tp_size, spec.hidden_size, config.dtype
    out: list[ParamDecl] = []
    if m.is_first_pp_rank() or m.is_last_pp_rank():
        out.append(ParamDecl(gemma4.EMBEDDING, (spec.vocab_size, H), dt))
    for i in m.pp_layers(spec.num_layers):
        hd = spec.head_dim(i)
        for trt_name, hf in names.LAYER_TENSORS.items():
            shape = (1,) if hf == "layer_scalar" else (hd,) if hf.startswith("self_attn.") else (H,)
            out.append(ParamDecl(names.trt_layer(i, trt_name), shape, dt))
        for lin in names.layer_linears(spec.has_v_proj(i), spec.is_global(i)):
            sizes = component_sizes(spec, i, lin, tp)
            rows, cols = (H, sizes[0]) if lin.tp_dim == 1 else (names.fused_rows(sizes), H)
            out.append(ParamDecl(names.trt_layer(i, f"{lin.trt_name}.weight"), (rows, cols), "fp8"))
            out.append(
                ParamDecl(names.trt_layer(i, f"{lin.trt_name}.{names.SCALE_SUFFIX}"), (_nb(rows), _nb(cols)), "float32")
            )
        scales = (K_SCALE, V_SCALE) if spec.is_global(i) else (names.KV_MERGED_SCALE, KV_RCP_SCALE)
        out.extend(ParamDecl(names.trt_layer(i, s), (1,), "float32") for s in scales)
    if m.is_last_pp_rank():
        out.append(ParamDecl(gemma4.FINAL_NORM, (H,), dt))
    return out


def prepare_weights(weights: dict[str, Any], spec: Gemma4Spec, layers: Sequence[int], path: str) -> dict[str, Any]:
    """The checkpoint's tensors as the model's parameters: sliding layers get the reciprocal of the merged KV scale
    (kv_orig_quant_scale of gpt_attention; TRT-LLM's preprocess_weights makes the same tensor) and drop the
    separate K/V scales; global layers drop the merged one. TRT-LLM's own preprocess_weights is not used: it would
    fold the global layers' separate scales into the merged one (modeling_utils.py process_kv_scaling_factor)."""
    out = dict(weights)
    for i in layers:
        merged, k, v = (names.trt_layer(i, s) for s in (names.KV_MERGED_SCALE, K_SCALE, V_SCALE))
        for n in (merged, k, v):
            if n not in out:
                raise CheckpointError(path, n, "a KV-cache scale (docs/checkpoint_format.md)", "it is missing")
        if spec.is_global(i):
            del out[merged]
            continue
        expected = max(float(out[k].reshape(-1)[0]), float(out[v].reshape(-1)[0]))
        if not math.isclose(float(out[merged].reshape(-1)[0]), expected, rel_tol=1e-6):
            raise CheckpointError(
                path, merged, f"max(k_scale, v_scale) = {expected}", str(float(out[merged].reshape(-1)[0]))
            )
        out[names.trt_layer(i, KV_RCP_SCALE)] = 1.0 / out[merged].float()
        del out[k], out[v]
    return out


def _rope_tables(spec: Gemma4Spec, max_positions: int) -> dict[str, np.ndarray]:
    """RoPE buffers: the sliding layers' inv_freq [D/2] and cos/sin cache [1, P*D/2*2] (float2 (cos, sin) per
    position and pair, as RopeEmbeddingUtils.create_sinusoidal_positions_for_attention_plugin lays it out in
    functional.py@0071496d), and the global layers' proportional inv_freq [D/2] (zeros beyond the rotating pairs)."""
    tables: dict[str, np.ndarray] = {}
    if spec.sliding_layers:
        inv = np.asarray(spec.rope(spec.sliding_layers[0]).inv_freq(), dtype=np.float32)
        ang = np.einsum("i,j->ij", np.arange(max_positions, dtype=np.float32), inv)[..., None]
        tables[SLIDING_INV_FREQ] = inv
        tables[SLIDING_COS_SIN] = np.concatenate([np.cos(ang), np.sin(ang)], axis=-1).reshape(1, -1)
    if spec.global_layers:
        tables[GLOBAL_INV_FREQ] = np.asarray(spec.rope(spec.global_layers[0]).inv_freq(), dtype=np.float32)
    return tables


# ---- the model class -------------------------------------------------------------------------------------------


class Gemma4ForCausalLM(PretrainedModel):
    """Gemma-4 text model for TensorRT-LLM 1.2.1's `build(model, BuildConfig)`.

    Parameters are declared under their checkpoint names (docs/checkpoint_format.md) as a tree of Modules, so
    PretrainedModel.load binds rank{r}.safetensors one to one. forward() runs graph/gemma4.py with TrtllmOps.
    `op_tracer`, when set, wraps the ops (tests record the op trace with graph/trace.py).
    """

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        spec = spec_of(config)
        self.spec = spec
        self.op_tracer: Callable[[Any], Any] | None = None
        tp = config.mapping.tp_size
        declared = list(getattr(config, "num_kv_heads_per_layer", []) or [])
        if declared != spec.num_kv_heads_per_layer(tp):
            raise CheckpointError(
                "config.json",
                None,
                f"num_kv_heads_per_layer {spec.num_kv_heads_per_layer(tp)} (global layers declare "
                f"{spec.global_kv_planes}·tp planes, DESIGN.md 'KV cache')",
                str(declared),
            )
        if config.head_size != spec.kv_head_size:
            raise CheckpointError("config.json", None, f"head_size {spec.kv_head_size}", str(config.head_size))
        self.params: dict[str, Parameter] = {}
        for d in rank_parameters(spec, config):
            self._declare(d.name, Parameter(shape=d.shape, dtype=d.dtype))
        for name, table in _rope_tables(spec, int(config.max_position_embeddings)).items():
            self._declare(name, Parameter(table, dtype="float32", is_buffer=True))

    def _declare(self, name: str, param: Parameter) -> None:
        """Hang `param` at the dotted checkpoint name in the Module tree (named_parameters() gives it back)."""
        *path, leaf = name.split(".")
        node: Module = self
        for part in path:
            child = getattr(node, part, None)  # module.py Module.__getattr__ looks in its sub-Modules
            if child is None:
                child = Module()
                setattr(node, part, child)
            node = child
        setattr(node, leaf, param)
        self.params[name] = param

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_dir: str | Path,
        rank: int | None = None,
        config: PretrainedConfig | None = None,
        *,
        preprocess_weights_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> Gemma4ForCausalLM:
        """The model of one rank with its weights: `Gemma4ForCausalLM.from_checkpoint(ckpt_dir, rank)`.

        Same signature as PretrainedModel.from_checkpoint (modeling_utils.py@01ea6d79), which trtllm-build's
        build_model calls with config=; the config comes from load_config (no MODEL_MAP lookup)."""
        config = config if config is not None else load_config(ckpt_dir)
        if rank is not None:
            config.set_rank(rank)
        spec = spec_of(config)
        path = Path(ckpt_dir) / rank_file(config.mapping.rank)
        if not path.is_file():
            raise CheckpointError(str(path), None, f"the rank file of rank {config.mapping.rank}", "no such file")
        weights = safetensors.torch.load_file(str(path))
        if preprocess_weights_hook is not None:
            weights = preprocess_weights_hook(weights)
        weights = prepare_weights(weights, spec, config.mapping.pp_layers(spec.num_layers), str(path))
        model = cls(config)
        model.load(weights)  # modeling_utils.py load(): every declared parameter must be provided, by name
        return model

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        use_cache: bool = False,
        last_token_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_cache_params: Any = None,
        attention_params: Any = None,
        hidden_states: Tensor | None = None,
        **unused: Any,
    ) -> Tensor:
        """The network of this rank's pipeline stage, called by build() with prepare_inputs()'s tensors
        (modeling_utils.py DecoderModelForCausalLM.forward has the same arguments and outputs)."""
        pc = default_net().plugin_config
        if not pc.remove_input_padding or not pc.paged_kv_cache:
            raise Gemma4Error(
                "the Gemma-4 engine needs remove_input_padding and a paged KV cache (our attention "
                "plugin reads TRT-LLM's paged pool)"
            )
        if attention_mask is not None:
            raise Gemma4Error("attention masks are not supported (text-only causal model)")
        m = self.config.mapping
        ops: Any = TrtllmOps(self, kv_cache_params, attention_params, last_token_ids, use_cache)
        if self.op_tracer is not None:
            ops = self.op_tracer(ops)
        first, last = m.is_first_pp_rank(), m.is_last_pp_rank()
        out = gemma4.forward(
            ops,
            self.spec,
            input_ids if first else hidden_states,
            m.pp_layers(self.spec.num_layers),
            first_stage=first,
            last_stage=last,
        )
        if last:
            out.mark_output("logits", self.config.logits_dtype)  # functional.py Tensor.mark_output(name, dtype)
        else:
            out.mark_output("hidden_states_output", self.config.dtype)
        return out


# ---- the ops ---------------------------------------------------------------------------------------------------


@dataclass
class _Normed:
    """How an rms_norm output was made: the global attention plugin takes the un-normed k_raw and does the norm."""

    source: Tensor
    weight: str | None
    eps: float


class TrtllmOps:
    """graph/ops.py as TensorRT-LLM network construction for one rank of one build."""

    def __init__(
        self,
        model: Gemma4ForCausalLM,
        kv_cache_params: Any,
        attention_params: Any,
        last_token_ids: Tensor | None,
        use_cache: bool,
    ) -> None:
        self.model, self.spec, self.config = model, model.spec, model.config
        self.kv, self.attn, self.last_token_ids, self.use_cache = (
            kv_cache_params,
            attention_params,
            last_token_ids,
            use_cache,
        )
        m = model.config.mapping
        self.tp, self.tp_rank, self.tp_group = m.tp_size, m.tp_rank, m.tp_group
        self.stage_layers = list(m.pp_layers(self.spec.num_layers))
        self.kv_dtype = kv_cache_dtype(model.config)
        self.linears = {
            names.trt_layer(i, lin.trt_name): (i, lin)
            for i in self.stage_layers
            for lin in names.layer_linears(self.spec.has_v_proj(i), self.spec.is_global(i))
        }
        self._normed: dict[int, _Normed] = {}
        self._keep: list[Tensor] = []  # keeps normed tensors alive so their ids stay unique during the build

    # -- helpers --
    def _value(self, name: str) -> Tensor:
        """A parameter as a network constant (parameter.py Parameter.value)."""
        return self.model.params[name].value

    def _scalar(self, name: str) -> float:
        return float(np.asarray(self.model.params[name].raw_value, dtype=np.float32).reshape(-1)[0])

    @staticmethod
    def _const(value: float, like: Tensor) -> Tensor:
        """A [1] constant in `like`'s dtype: an fp32 constant cast (constant folds it; strongly typed network)."""
        return cast(constant(np.array([value], dtype=np.float32)), like.dtype)

    def _plugin(
        self, schema: plugins.PluginSchema, layer_name: str, values: dict[str, Any], inputs: Sequence[Tensor]
    ) -> Tensor:
        """Create one of our IPluginV3 plugins and add it: registry get_creator(name, version, namespace),
        PluginFieldCollection of the schema's fields, create_plugin(..., TensorRTPhase.BUILD), add_plugin_v3
        (TensorRT 10.14 NvInfer.h INetworkDefinition::addPluginV3; research/trtllm.md §4.3), then wrap the
        output with functional._create_tensor."""
        creator = trt.get_plugin_registry().get_creator(schema.name, schema.version, schema.namespace)
        if creator is None:
            raise Gemma4Error(
                f"TensorRT plugin {schema.namespace}::{schema.name} v{schema.version} is not "
                f"registered: load {plugins.LIBRARY_NAME} first (trt_gemma4.plugins.load_library)"
            )
        pfc = trt.PluginFieldCollection(
            [trt.PluginField(n, a, getattr(trt.PluginFieldType, t)) for n, a, t in schema.field_arrays(values)]
        )
        plugin = creator.create_plugin(layer_name, pfc, trt.TensorRTPhase.BUILD)
        layer = default_trtnet().add_plugin_v3([t.trt_tensor for t in inputs], [], plugin)
        return _create_tensor(layer.get_output(0), layer)

    def _local(self, layer: int) -> int:
        """The layer's row in the engine's per-layer KV inputs (host_kv_cache_pool_mapping, window sizes)."""
        return self.stage_layers.index(layer)

    # -- ops --
    def embedding(self, input_ids: Tensor, scale: float) -> Tensor:
        x = embedding(input_ids, self._value(gemma4.EMBEDDING))  # functional.embedding: a gather (vocab not split)
        return mul(x, self._const(scale, x))  # √hidden rounded to the compute dtype, as the graph asks

    def rms_norm(self, x: Tensor, weight: str | None, eps: float, head_dim: int | None = None) -> Tensor:
        # functional.rms_norm normalises in fp32 but multiplies the weight in the input dtype; the op asks for
        # x̂·w in fp32, so the weight is applied here on the fp32 result and the cast back comes last.
        x32 = cast(x, "float32")
        if head_dim:
            x32 = view(x32, [0, -1, head_dim])  # [T, heads, head_dim] (0 keeps the token dim)
        y = rms_norm(x32, head_dim or x.shape[-1], weight=None, eps=eps)
        if weight is not None:
            y = mul(y, cast(self._value(weight), "float32"))
        if head_dim:
            y = view(y, [0, -1])
        out = cast(y, x.dtype)
        if head_dim:
            self._normed[id(out)] = _Normed(x, weight, eps)
            self._keep.append(out)
        return out

    def linear(self, x: Tensor, name: str, sizes: Sequence[int]) -> list[Tensor]:
        layer, lin = self.linears[name]
        w = self.model.params[f"{name}.weight"]
        n_out, k_in = w.shape
        whole = component_sizes(self.spec, layer, lin, 1) if lin.tp_dim == 0 else [n_out]
        if list(sizes) != whole:
            raise Gemma4Error(f"{name}: the graph asks for components {list(sizes)}, the checkpoint has {whole}")
        y = self._plugin(
            plugins.BLOCK_FP8_GEMM,
            f"{name}.block_fp8",
            plugins.gemm_fields(n_out, k_in),
            [x, w.value, self._value(f"{name}.{names.SCALE_SUFFIX}")],
        )
        if lin.tp_dim == 1:  # row parallel: partial sums over this rank's input columns
            if self.tp > 1:
                y = allreduce(y, self.tp_group)  # functional.allreduce(tensor, group), as RowLinear does
            rank_sizes = list(sizes)
        else:  # column parallel: this rank's rows of each component (replicated components whole)
            rank_sizes = component_sizes(self.spec, layer, lin, self.tp)
        segments = names.fused_segments(rank_sizes)
        sections, keep, pos = [], [], 0
        for off, n in segments:
            if off > pos:
                sections.append(off - pos)  # 128-row alignment padding between components
            keep.append(len(sections))
            sections.append(n)
            pos = off + n
        if pos < n_out:
            sections.append(n_out - pos)
        if len(sections) == 1:
            return [y]
        parts = split(y, sections, dim=-1)  # functional.split: static sizes on the feature dim
        return [parts[j] for j in keep]

    def attention(self, layer: AttentionLayer, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if layer.kind == GLOBAL:
            return self._global_attention(layer, q, k, v)
        return self._sliding_attention(layer, q, k, v)

    def _sliding_attention(self, layer: AttentionLayer, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Stock gpt_attention (functional.py@0071496d; arguments as layers/attention.py Attention.forward passes
        them). Softmax scale = 1/(√head_size · q_scaling): cpp/tensorrt_llm/common/attentionOp.cpp sets the MMHA
        `inv_sqrt_dh = 1.F / (sqrtf(hidden_size_per_head) * q_scaling)`, the FMHA and XQA paths the same
        (research/trtllm_attention.md §3.5); head 256 and scale 1.0 give q_scaling = 1/16."""
        tp, hd = self.tp, layer.head_dim
        kv, ap = self.kv, self.attn
        fp8_kv = self.kv_dtype == "fp8"
        i = layer.index
        rope = layer.rope
        context, _ = gpt_attention(
            qkv=concat([q, k, v], dim=-1),
            past_key_value=None,  # paged KV cache: the pool is reached through the block offsets below
            sequence_length=ap.sequence_length,
            host_past_key_value_lengths=kv.host_past_key_value_lengths,
            host_max_attention_window_sizes=kv.host_max_attention_window_sizes,  # the sliding window, at run time
            host_sink_token_length=kv.host_sink_token_length,
            context_lengths=ap.context_lengths,
            cache_indirection=kv.cache_indirection,
            host_request_types=ap.host_request_types,
            layer_idx=self._local(i),
            num_heads=layer.num_heads // tp,
            num_kv_heads=-(-layer.kv_heads // tp),
            num_kv_heads_origin=layer.kv_heads,
            hidden_size_per_head=hd,
            q_scaling=1.0 / (math.sqrt(hd) * layer.scale),
            rotary_embedding_dim=2 * rope.rotary_pairs,
            rotary_embedding_base=rope.theta,
            rotary_embedding_scale_type=RotaryScalingType.none,
            rotary_embedding_scale=1.0,
            rotary_embedding_max_positions=int(self.config.max_position_embeddings),
            position_embedding_type=PositionEmbeddingType.rope_gpt_neox,
            rotary_inv_freq=self._value(SLIDING_INV_FREQ),
            rotary_cos_sin=self._value(SLIDING_COS_SIN),
            kv_orig_quant_scale=self._value(names.trt_layer(i, KV_RCP_SCALE)) if fp8_kv else None,
            kv_quant_orig_scale=self._value(names.trt_layer(i, names.KV_MERGED_SCALE)) if fp8_kv else None,
            kv_cache_quant_mode=self.config.quant_mode,
            max_context_length=ap.max_context_length,
            mask_type=AttentionMaskType.causal,
            tp_size=tp,
            tp_rank=self.tp_rank,
            kv_cache_block_offsets=kv.kv_cache_block_offsets,
            host_kv_cache_block_offsets=kv.host_kv_cache_block_offsets,
            host_kv_cache_pool_pointers=kv.host_kv_cache_pool_pointers,
            host_kv_cache_pool_mapping=kv.host_kv_cache_pool_mapping,
            host_context_lengths=ap.host_context_lengths,
            use_cache=self.use_cache,
            host_runtime_perf_knobs=ap.host_runtime_perf_knobs,
            host_context_progress=ap.host_context_progress,
        )
        return context

    def _global_attention(self, layer: AttentionLayer, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Our Gemma4GlobalAttention plugin, inputs in plugins.GLOBAL_ATTENTION_INPUTS order. The plugin applies
        k_norm and the scale-free v_norm to k_raw itself, so the graph's normed k and v are traced back to the one
        k_raw they were both made from (and their own norm layers are left unused, which TensorRT removes)."""
        nk, nv = self._normed.get(id(k)), self._normed.get(id(v))
        if nk is None or nv is None or nk.source is not nv.source or nv.weight is not None or nk.weight is None:
            raise Gemma4Error(
                f"layer {layer.index}: the global attention plugin needs k = k_norm(k_raw) and "
                "v = v_norm(k_raw) (no weight) of the same k_raw, as graph/gemma4.py makes them"
            )
        if not math.isclose(nk.eps, nv.eps):
            raise Gemma4Error(f"layer {layer.index}: k and v norms use different eps ({nk.eps}, {nv.eps})")
        i = layer.index
        values = plugins.global_attention_fields(
            self.spec,
            i,
            tp=self.tp,
            tokens_per_block=int(default_net().plugin_config.tokens_per_block),
            kv_cache_dtype=self.kv_dtype,
            k_scale=self._scalar(names.trt_layer(i, K_SCALE)),
            v_scale=self._scalar(names.trt_layer(i, V_SCALE)),
        )
        values.update(layer_idx=self._local(i), softmax_scale=layer.scale, rms_norm_eps=nk.eps)
        kv, ap = self.kv, self.attn
        by_name = {
            "q": q,
            "k_raw": nk.source,
            "k_norm_weight": cast(self._value(nk.weight), "float32"),
            "rope_inv_freq": self._value(GLOBAL_INV_FREQ),
            "sequence_length": ap.sequence_length,
            "host_past_key_value_lengths": kv.host_past_key_value_lengths,
            "host_context_lengths": ap.host_context_lengths,
            "host_request_types": ap.host_request_types,
            "kv_cache_block_offsets": kv.kv_cache_block_offsets,
            "host_kv_cache_pool_pointers": kv.host_kv_cache_pool_pointers,
            "host_kv_cache_pool_mapping": kv.host_kv_cache_pool_mapping,
            "host_max_attention_window_sizes": kv.host_max_attention_window_sizes,
        }
        inputs = [by_name[t.name] for t in plugins.attention_inputs(draft_mode=False)]
        return self._plugin(plugins.GLOBAL_ATTENTION, f"transformer.layers.{i}.attention.global", values, inputs)

    def gelu_tanh(self, x: Tensor) -> Tensor:
        return gelu(x)  # functional.gelu: 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        return mul(a, b)

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        return add(a, b)

    def concat(self, xs: Sequence[Tensor]) -> Tensor:
        return concat(list(xs), dim=-1)

    def parameter(self, name: str) -> Tensor:
        return self._value(name)

    def softcap(self, x: Tensor, cap: float) -> Tensor:
        x32 = cast(x, "float32")
        return mul(tanh(mul(x32, self._const(1.0 / cap, x32))), self._const(cap, x32))

    def select_logit_tokens(self, x: Tensor) -> Tensor:
        # functional.gather_last_token_logits: rows last_token_ids - 1 (inclusive prefix sums of the lengths);
        # with gather_context_logits the runtime feeds last_token_ids = 1..T and every token is kept.
        return gather_last_token_logits(x, self.last_token_ids, True)

    def lm_head(self, x: Tensor, name: str) -> Tensor:
        # The tied head: a bf16 GEMM against the embedding (fp32 accumulation in cuBLAS), logits cast to fp32.
        return cast(matmul(x, self._value(name), transb=True), "float32")


# ---- the build entry -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineBuildOptions:
    """Engine limits and choices (the planner fills these)."""

    max_batch_size: int = 8
    max_input_len: int = 4096
    max_seq_len: int = 8192
    max_num_tokens: int = 8192
    tokens_per_block: int = 32
    kv_cache_dtype: str = "fp8"
    gather_context_logits: bool = False


def make_build_config(options: EngineBuildOptions, choice: ContextFmhaChoice) -> BuildConfig:
    """BuildConfig with every plugin flag set explicitly (plugin.py PluginConfig fields; builder.py BuildConfig)."""
    pc = PluginConfig()
    pc.gpt_attention_plugin = "auto"  # 'auto' resolves to the model dtype (bfloat16)
    pc.gemm_plugin = None  # no plain GEMM is left in the network but the tied LM head
    pc.context_fmha = True
    pc.paged_kv_cache = True
    pc.remove_input_padding = True
    pc.tokens_per_block = options.tokens_per_block
    # Set to what builder.py would turn them into, so the build does not change them behind our back
    # (trtllm_policy.py: FP8 KV cache with quant_algo null => no paged context FMHA).
    pc.use_paged_context_fmha = choice.paged_context_fmha
    pc.use_fp8_context_fmha = choice.fp8_context_fmha
    return BuildConfig(
        max_batch_size=options.max_batch_size,
        max_input_len=options.max_input_len,
        max_seq_len=options.max_seq_len,
        max_num_tokens=options.max_num_tokens,
        max_beam_width=1,
        gather_context_logits=options.gather_context_logits,
        strongly_typed=True,
        plugin_config=pc,
    )


def build_engines(
    ckpt_dir: str | Path,
    engine_dir: str | Path,
    plugin_library: str | Path,
    options: EngineBuildOptions = EngineBuildOptions(),
    *,
    ranks: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Build the engine of every rank (or of `ranks`) into engine_dir: config.json + rank{r}.engine.

    Loads the plugin library first (its creators must be registered to be found), states the context-FMHA choice
    and its consequences, then per rank: config (RoPE tables sized to max_seq_len; BF16 KV if asked), model from
    the checkpoint, tensorrt_llm.builder.build, Engine.save (builder.py@008b2b8d)."""
    plugins.load_library(plugin_library)
    base = load_config(ckpt_dir)
    spec = spec_of(base)
    choice = context_fmha_choice(options.kv_cache_dtype)
    world = base.mapping.tp_size * base.mapping.pp_size
    log(f"{spec.summary()}")
    log(
        f"TP {base.mapping.tp_size} x PP {base.mapping.pp_size}; KV heads per layer "
        f"{spec.num_kv_heads_per_layer(base.mapping.tp_size)} of head size {spec.kv_head_size}"
    )
    for line in choice.lines():
        log(line)
    out = Path(engine_dir)
    for rank in ranks if ranks is not None else range(world):
        cfg = copy.deepcopy(base)
        cfg.set_rank(rank)
        # The sliding layers' cos/sin cache is max_position_embeddings x head_dim floats baked into the engine
        # (256 MiB at 262144 positions): size it to what the engine serves (research/trtllm_attention.md §3.2).
        cfg.max_position_embeddings = options.max_seq_len
        if options.kv_cache_dtype == "bf16":
            cfg.quantization.kv_cache_quant_algo = None  # the engine's config.json then says BF16 KV to the runtime
        model = Gemma4ForCausalLM.from_checkpoint(ckpt_dir, config=cfg)
        log(f"rank {rank}: building ({len(model.params)} parameters)")
        engine = build(model, make_build_config(options, choice))
        engine.save(str(out))
    log(f"engines written to {out}")
    return out
