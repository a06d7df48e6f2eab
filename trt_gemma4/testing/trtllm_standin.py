"""A recording stand-in for the part of `tensorrt_llm` 1.2.1 and `tensorrt` 10.14 the TRT-LLM backend uses.

TensorRT-LLM cannot be installed here, so the backend (trt_gemma4/backends/trtllm_backend.py) is run in tests
against these modules instead. `install(modules)` puts them into a `sys.modules`-like mapping (a test passes
`monkeypatch` through `install_with`), and returns a `Recorder` with:

  * `calls`: every stood-in function the backend called, with its arguments summarised;
  * `touched`: every API attribute the backend read (`tensorrt_llm.functional.concat`, `...Tensor.trt_tensor`);
  * `plugins`: every plugin the backend created through the TensorRT plugin registry, with its fields;
  * `outputs`: the network outputs marked.

Only what the backend needs is here, and it behaves as the 1.2 sources do where the backend depends on it:
signatures (checked against trt_gemma4/testing/trtllm_api.json by tests/test_trtllm_backend.py), the builder's
FP8-KV rule for paged context FMHA (builder.py), `PretrainedModel.load`'s name matching, `Parameter`'s shape
check, static shape propagation through the functional ops, and plugin output shapes (as the C++ plugins'
getOutputShapes compute them). Nothing here runs a kernel.
"""

from __future__ import annotations

import copy
import enum
import functools
import inspect
import json
import math
import sys
import types
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

BACKEND_PREFIX = "trt_gemma4.backends."


# ---- recording -----------------------------------------------------------------------------------------------


@dataclass
class Call:
    api: str
    args: dict[str, Any]


@dataclass
class CreatedPlugin:
    name: str
    version: str
    namespace: str
    fields: dict[str, tuple[str, list[float | int]]]  # field name -> (PluginFieldType name, values)
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    input_dtypes: list[str] = field(default_factory=list)
    output_shape: tuple[int, ...] = ()


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    plugins: list[CreatedPlugin] = field(default_factory=list)
    outputs: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    loaded_libraries: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def calls_to(self, api: str) -> list[Call]:
        return [c for c in self.calls if c.api == api]


RECORDER = Recorder()


def _from_backend(depth: int = 2) -> bool:
    return sys._getframe(depth).f_globals.get("__name__", "").startswith(BACKEND_PREFIX)


def _record(api: str, **args: Any) -> None:
    RECORDER.calls.append(Call(api, args))


class _TrackedModule(types.ModuleType):
    """A module that records which of its public attributes the backend reads."""

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("__") and _from_backend():  # _create_tensor is part of the API the backend uses
            RECORDER.touched.add(f"{types.ModuleType.__getattribute__(self, '__name__')}.{name}")
        return types.ModuleType.__getattribute__(self, name)


def _api_name(cls: type, name: str) -> str | None:
    """The stood-in API a class attribute belongs to: the first class in the MRO that defines `name` decides;
    None when that class is not a stood-in one (the backend's own subclass attributes)."""
    for klass in cls.__mro__:
        own = klass.__dict__
        if name in own or name in own.get("_instance_attrs", ()):
            api = own.get("_api")
            return f"{api}.{name}" if api else None
    return None


class _TrackedMeta(type):
    """Records the backend's reads of stood-in class attributes (classmethods such as from_dir)."""

    def __getattribute__(cls, name: str) -> Any:
        if not name.startswith("_") and _from_backend():
            api = _api_name(cls, name)
            if api:
                RECORDER.touched.add(api)
        return type.__getattribute__(cls, name)


class _Tracked(metaclass=_TrackedMeta):
    """Instances record the backend's reads of the attributes the stood-in class defines (`_api` names it)."""

    _api = ""

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and _from_backend():
            api = _api_name(type(self), name)
            if api:
                RECORDER.touched.add(api)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and _from_backend():
            api = _api_name(type(self), name)
            if api:
                RECORDER.touched.add(api)
        object.__setattr__(self, name, value)


# ---- tensorrt ------------------------------------------------------------------------------------------------


class DataType(enum.Enum):
    """tensorrt.DataType (NvInferRuntimeBase.h DataType; names as the Python bindings spell them)."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


class PluginFieldType(enum.Enum):
    """tensorrt.PluginFieldType (NvInferPluginBase.h PluginFieldType)."""

    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10
    FP8 = 11
    INT4 = 12


class TensorRTPhase(enum.Enum):
    """tensorrt.TensorRTPhase (NvInferPluginBase.h TensorRTPhase)."""

    BUILD = 0
    RUNTIME = 1


class ElementWiseOperation(enum.Enum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    DIV = 5
    POW = 6


class ActivationType(enum.Enum):
    RELU = 0
    SIGMOID = 1
    TANH = 2


_NP_FIELD_TYPES = {PluginFieldType.INT32: np.int32, PluginFieldType.FLOAT32: np.float32, PluginFieldType.INT8: np.int8}


class PluginField(_Tracked):
    """tensorrt.PluginField(name, data, type)."""

    _api = "tensorrt.PluginField"
    _instance_attrs = ("name", "data", "type")

    def __init__(self, name: str, data: Any, type: PluginFieldType = PluginFieldType.UNKNOWN) -> None:
        if not isinstance(data, np.ndarray):
            raise TypeError(f"PluginField '{name}': data must be a numpy array (a buffer), got {type(data)}")
        expected = _NP_FIELD_TYPES.get(type)
        if expected is not None and data.dtype != expected:
            raise TypeError(f"PluginField '{name}': {type.name} needs {np.dtype(expected)} data, got {data.dtype}")
        self.name, self.data, self.type = name, data, type


class PluginFieldCollection(_Tracked):
    """tensorrt.PluginFieldCollection(fields)."""

    _api = "tensorrt.PluginFieldCollection"

    def __init__(self, arg0: Sequence[PluginField] = ()) -> None:
        self._fields = list(arg0)

    def __len__(self) -> int:
        return len(self._fields)

    def __iter__(self) -> Any:
        return iter(self._fields)


class ITensor:
    """tensorrt.ITensor: a shape (-1 = dynamic) and a dtype."""

    def __init__(self, shape: Sequence[int], dtype: DataType, name: str = "") -> None:
        self.shape, self.dtype, self.name = tuple(int(d) for d in shape), dtype, name


class ILayer(_Tracked):
    """tensorrt.ILayer (the part the backend reads: its outputs)."""

    _api = "tensorrt.ILayer"

    def __init__(self, kind: str, outputs: list[ITensor]) -> None:
        self.type, self._outputs, self.name = kind, outputs, kind
        self.num_outputs = len(outputs)

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class IPluginV3(_Tracked):
    """What IPluginCreatorV3One.create_plugin returns; carries the shape rule of the C++ plugin."""

    _api = "tensorrt.IPluginV3"

    def __init__(self, record: CreatedPlugin, shape_rule: Callable[[list[ITensor], dict[str, Any]], ITensor]):
        self._record, self._shape_rule = record, shape_rule

    def _output(self, inputs: list[ITensor]) -> ITensor:
        values = {k: v[1][0] for k, v in self._record.fields.items()}
        return self._shape_rule(inputs, values)


class IPluginCreatorV3One(_Tracked):
    """tensorrt.IPluginCreatorV3One: validates a field collection against the C++ creator's field names."""

    _api = "tensorrt.IPluginCreatorV3One"

    def __init__(
        self,
        name: str,
        version: str,
        namespace: str,
        field_types: dict[str, PluginFieldType],
        required: set[str],
        shape_rule: Callable[[list[ITensor], dict[str, Any]], ITensor],
    ) -> None:
        self.name, self.plugin_version, self.plugin_namespace = name, version, namespace
        self._field_types, self._required, self._shape_rule = field_types, required, shape_rule

    def create_plugin(self, name: str, field_collection: PluginFieldCollection, phase: TensorRTPhase) -> IPluginV3:
        fields: dict[str, tuple[str, list[Any]]] = {}
        for f in field_collection:
            if f.name not in self._field_types:
                raise ValueError(f"{self.name}: unknown plugin field '{f.name}'")
            if f.type != self._field_types[f.name]:
                raise TypeError(
                    f"{self.name}: field '{f.name}' must be {self._field_types[f.name].name}, found {f.type.name}"
                )
            if f.data.size != 1:
                raise ValueError(f"{self.name}: field '{f.name}' must hold one value, found {f.data.size}")
            fields[f.name] = (f.type.name, f.data.reshape(-1).tolist())
        missing = self._required - set(fields)
        if missing:
            raise ValueError(f"{self.name}: required fields missing: {sorted(missing)}")
        if not isinstance(phase, TensorRTPhase):
            raise TypeError("create_plugin: phase must be a tensorrt.TensorRTPhase")
        record = CreatedPlugin(self.name, self.plugin_version, self.plugin_namespace, fields)
        _record("tensorrt.IPluginCreatorV3One.create_plugin", plugin=self.name, name=name, phase=phase.name)
        return IPluginV3(record, self._shape_rule)


class IPluginRegistry(_Tracked):
    """tensorrt.IPluginRegistry: get_creator (V3 lookup) and load_library."""

    _api = "tensorrt.IPluginRegistry"

    def __init__(self) -> None:
        self._creators: dict[tuple[str, str, str], IPluginCreatorV3One] = {}

    def register(self, creator: IPluginCreatorV3One) -> None:
        self._creators[(creator.name, creator.plugin_version, creator.plugin_namespace)] = creator

    def get_creator(self, name: str, version: str, plugin_namespace: str = "") -> IPluginCreatorV3One | None:
        _record("tensorrt.IPluginRegistry.get_creator", name=name, version=version, namespace=plugin_namespace)
        return self._creators.get((name, version, plugin_namespace))

    def load_library(self, plugin_path: str) -> Any:
        RECORDER.loaded_libraries.append(str(plugin_path))
        _record("tensorrt.IPluginRegistry.load_library", path=str(plugin_path))
        return object()


_REGISTRY = IPluginRegistry()


def get_plugin_registry() -> IPluginRegistry:
    """tensorrt.get_plugin_registry()."""
    return _REGISTRY


class INetworkDefinition(_Tracked):
    """tensorrt.INetworkDefinition: only add_plugin_v3 is used directly by the backend."""

    _api = "tensorrt.INetworkDefinition"

    def add_plugin_v3(self, inputs: list[ITensor], shape_inputs: list[ITensor], plugin: IPluginV3) -> ILayer:
        if not all(isinstance(t, ITensor) for t in inputs):
            raise TypeError("add_plugin_v3: inputs must be tensorrt.ITensor (use Tensor.trt_tensor)")
        out = plugin._output(inputs)
        rec = plugin._record
        rec.input_shapes = [t.shape for t in inputs]
        rec.input_dtypes = [t.dtype.name for t in inputs]
        rec.output_shape = out.shape
        RECORDER.plugins.append(rec)
        _record("tensorrt.INetworkDefinition.add_plugin_v3", plugin=rec.name, inputs=len(inputs))
        return ILayer("PLUGIN_V3", [out])


# ---- tensorrt_llm: dtypes, network, Tensor ----------------------------------------------------------------------

_STR_DTYPES = {
    "float32": DataType.FLOAT,
    "float16": DataType.HALF,
    "bfloat16": DataType.BF16,
    "int32": DataType.INT32,
    "int64": DataType.INT64,
    "int8": DataType.INT8,
    "fp8": DataType.FP8,
    "bool": DataType.BOOL,
}
_NP_DTYPES = {
    np.dtype(np.float32): DataType.FLOAT,
    np.dtype(np.float16): DataType.HALF,
    np.dtype(np.int32): DataType.INT32,
    np.dtype(np.int64): DataType.INT64,
}
_TORCH_DTYPES = {
    torch.float32: DataType.FLOAT,
    torch.bfloat16: DataType.BF16,
    torch.float16: DataType.HALF,
    torch.float8_e4m3fn: DataType.FP8,
    torch.int32: DataType.INT32,
    torch.int64: DataType.INT64,
    torch.int8: DataType.INT8,
}


def str_dtype_to_trt(dtype: str) -> DataType:
    return _STR_DTYPES[dtype]


def _as_trt_dtype(dtype: str | DataType) -> DataType:
    return dtype if isinstance(dtype, DataType) else str_dtype_to_trt(dtype)


class Network(_Tracked):
    """tensorrt_llm.network.Network: plugin_config, strongly_typed and the TensorRT network."""

    _api = "tensorrt_llm.network.Network"
    _instance_attrs = ("plugin_config", "strongly_typed", "trt_network")

    def __init__(self, plugin_config: Any, strongly_typed: bool = True) -> None:
        self.plugin_config, self.strongly_typed = plugin_config, strongly_typed
        self.trt_network = INetworkDefinition()


_NET: list[Network] = []


def default_net() -> Network:
    """tensorrt_llm._common.default_net()."""
    if not _NET:
        raise RuntimeError("default_net(): no network is being built (outside build())")
    return _NET[-1]


def default_trtnet() -> INetworkDefinition:
    """tensorrt_llm._common.default_trtnet()."""
    return default_net().trt_network


class Tensor(_Tracked):
    """tensorrt_llm.functional.Tensor over a stand-in ITensor."""

    _api = "tensorrt_llm.functional.Tensor"
    _instance_attrs = ("trt_tensor", "producer")

    def __init__(
        self,
        name: Any = None,
        dtype: Any = None,
        shape: Any = None,
        dim_range: Any = None,
        is_network_input: bool = True,
        location: Any = None,
        network: Any = None,
        trt_tensor: Any = None,
    ) -> None:
        if trt_tensor is None:
            trt_tensor = ITensor(shape, _as_trt_dtype(dtype), name or "")
        self.trt_tensor = trt_tensor
        self.producer: Any = None

    @property
    def dtype(self) -> DataType:
        return self.trt_tensor.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.trt_tensor.shape

    def size(self, dim: int | None = None) -> Any:
        return self.trt_tensor.shape if dim is None else self.trt_tensor.shape[dim]

    def ndim(self) -> int:
        return len(self.trt_tensor.shape)

    def mark_output(self, name: str | None = None, dtype: str | DataType | None = None) -> None:
        out_dtype = _as_trt_dtype(dtype) if dtype is not None else self.dtype
        RECORDER.outputs[name or ""] = (self.shape, out_dtype.name)
        _record("tensorrt_llm.functional.Tensor.mark_output", name=name, dtype=out_dtype.name)


def _new(shape: Sequence[int], dtype: DataType, kind: str) -> Tensor:
    t = Tensor(trt_tensor=ITensor(shape, dtype))
    t.producer = ILayer(kind, [t.trt_tensor])
    return t


def _create_tensor(trt_tensor: ITensor, producer: ILayer) -> Tensor:
    """tensorrt_llm.functional._create_tensor(trt_tensor, producer)."""
    t = Tensor(trt_tensor=trt_tensor)
    t.producer = producer
    return t


# ---- tensorrt_llm.functional -----------------------------------------------------------------------------------


class PositionEmbeddingType(enum.IntEnum):
    learned_absolute = 0
    rope_gptj = 1
    rope_gpt_neox = 2
    long_rope = 3
    alibi = 4
    alibi_with_scale = 5
    relative = 6
    chatglm = 7
    yarn = 8
    mrope = 9
    deferred = 10

    def is_rope(self) -> bool:
        return self in (self.rope_gptj, self.rope_gpt_neox, self.long_rope, self.mrope)

    @staticmethod
    def from_string(s: str) -> PositionEmbeddingType:
        return PositionEmbeddingType[s]


class RotaryScalingType(enum.IntEnum):
    none = 0
    linear = 1
    dynamic = 2
    longrope = 3
    llama3 = 4
    yarn = 5
    mrope = 6


class AttentionMaskType(enum.IntEnum):
    padding = 0
    causal = 1
    sliding_window_causal = 2
    bidirectional = 3
    bidirectionalglm = 4
    blocksparse = 5
    custom_mask = 6


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x == 1 or x == y:
            out.append(y)
        elif y == 1:
            out.append(x)
        else:
            raise ValueError(f"elementwise: shapes {a} and {b} do not broadcast")
    return tuple(out)


def constant(ndarray: np.ndarray, as_dtype: DataType | None = None, as_shape: Any = None) -> Tensor:
    dtype = as_dtype or _NP_DTYPES[ndarray.dtype]
    _record("tensorrt_llm.functional.constant", shape=tuple(ndarray.shape), dtype=dtype.name)
    return _new(tuple(as_shape or ndarray.shape), dtype, "CONSTANT")


def elementwise_binary(left: Tensor, right: Tensor, op: ElementWiseOperation) -> Tensor:
    if not (isinstance(left, Tensor) and isinstance(right, Tensor)):
        raise TypeError("the backend passes tensors to elementwise ops (constants made explicitly)")
    if left.dtype != right.dtype:
        raise TypeError(f"elementwise {op.name}: strongly typed network, {left.dtype.name} vs {right.dtype.name}")
    _record("tensorrt_llm.functional.elementwise_binary", op=op.name)
    return _new(_broadcast(left.shape, right.shape), left.dtype, "ELEMENTWISE")


add = functools.partial(elementwise_binary, op=ElementWiseOperation.SUM)
mul = functools.partial(elementwise_binary, op=ElementWiseOperation.PROD)


def activation(input: Tensor, act_type: ActivationType) -> Tensor:
    _record("tensorrt_llm.functional.activation", act_type=act_type.name)
    return _new(input.shape, input.dtype, "ACTIVATION")


tanh = functools.partial(activation, act_type=ActivationType.TANH)


def gelu(x: Tensor) -> Tensor:
    _record("tensorrt_llm.functional.gelu")
    return _new(x.shape, x.dtype, "GELU")


def cast(input: Tensor, dtype: str | DataType) -> Tensor:
    target = _as_trt_dtype(dtype)
    if input.dtype == target:
        return input
    _record("tensorrt_llm.functional.cast", to=target.name)
    return _new(input.shape, target, "CAST")


def view(input: Tensor, shape: Sequence[int], zero_is_placeholder: bool = True) -> Tensor:
    if not isinstance(shape, (list, tuple)):
        raise TypeError("the backend views with static shape lists")
    if sum(1 for d in shape if d == -1) > 1:
        raise ValueError("view: at most one -1")
    src = input.shape
    out = [src[i] if (d == 0 and zero_is_placeholder) else d for i, d in enumerate(shape)]
    copied = {i for i, d in enumerate(shape) if d == 0 and zero_is_placeholder}
    if -1 in [d for i, d in enumerate(out) if i not in copied]:
        rest = math.prod(d for i, d in enumerate(src) if i not in copied and d != -1)
        known = math.prod(d for i, d in enumerate(out) if i not in copied and d != -1)
        if any(d == -1 for i, d in enumerate(src) if i not in copied) or rest % known:
            raise ValueError(f"view {src} -> {list(shape)}: the inferred dim is not static")
        idx = next(i for i, d in enumerate(out) if d == -1 and i not in copied)
        out[idx] = rest // known
    elif math.prod(d for i, d in enumerate(out) if i not in copied) != math.prod(
        d for i, d in enumerate(src) if i not in copied
    ):
        raise ValueError(f"view {src} -> {list(shape)}: element counts differ")
    _record("tensorrt_llm.functional.view", shape=tuple(out))
    return _new(tuple(out), input.dtype, "SHUFFLE")


def concat(inputs: Sequence[Tensor], dim: int = 0) -> Tensor:
    shapes = [t.shape for t in inputs]
    nd = len(shapes[0])
    d = dim % nd
    for s in shapes[1:]:
        if len(s) != nd or any(s[i] != shapes[0][i] for i in range(nd) if i != d):
            raise ValueError(f"concat dim {dim}: incompatible shapes {shapes}")
    if len({t.dtype for t in inputs}) != 1:
        raise TypeError("concat: mixed dtypes")
    size = -1 if any(s[d] == -1 for s in shapes) else sum(s[d] for s in shapes)
    out = list(shapes[0])
    out[d] = size
    _record("tensorrt_llm.functional.concat", n=len(inputs), dim=dim)
    return _new(tuple(out), inputs[0].dtype, "CONCATENATION")


def split(tensor: Tensor, split_size_or_sections: int | Sequence[int], dim: int = 0) -> list[Tensor]:
    d = dim % tensor.ndim()
    size = tensor.shape[d]
    if size == -1:
        raise ValueError("split: the split dim must be static (functional.split asserts it)")
    sections = (
        [split_size_or_sections] * (size // split_size_or_sections)
        if isinstance(split_size_or_sections, int)
        else list(split_size_or_sections)
    )
    if sum(sections) != size:
        raise ValueError(f"split: sections {sections} do not add up to {size}")
    _record("tensorrt_llm.functional.split", sections=tuple(sections), dim=dim)
    outs = []
    for s in sections:
        shape = list(tensor.shape)
        shape[d] = s
        outs.append(_new(tuple(shape), tensor.dtype, "SLICE"))
    return outs


def rms_norm(
    input: Tensor,
    normalized_shape: int | tuple[int, ...],
    num_groups: int = 1,
    weight: Tensor | None = None,
    eps: float = 1e-06,
) -> Tensor:
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(input.shape[-len(ns) :]) != ns:
        raise ValueError(f"rms_norm: normalized_shape {ns} does not match input {input.shape}")
    _record("tensorrt_llm.functional.rms_norm", normalized_shape=ns, eps=eps, weight=weight is not None)
    return _new(input.shape, input.dtype, "RMS_NORM")


def embedding(
    input: Tensor,
    weight: Tensor,
    tp_size: int = 1,
    tp_group: Any = None,
    sharding_dim: int = 0,
    tp_rank: Any = None,
    per_token_scale: Any = None,
    padding: Any = None,
) -> Tensor:
    _record("tensorrt_llm.functional.embedding", vocab=weight.shape[0], tp_size=tp_size)
    return _new(input.shape + (weight.shape[1],), weight.dtype, "GATHER")


def matmul(
    input: Tensor, mat2: Tensor, transa: bool = False, transb: bool = False, use_fp32_acc: bool = True
) -> Tensor:
    a, b = input.shape, mat2.shape
    k_a = a[-2] if transa else a[-1]
    k_b = b[-1] if transb else b[-2]
    if k_a != k_b:
        raise ValueError(f"matmul: inner dims differ ({a} x {b}, transb={transb})")
    n = b[-2] if transb else b[-1]
    _record("tensorrt_llm.functional.matmul", transb=transb)
    return _new(a[:-1] + (n,), input.dtype, "MATRIX_MULTIPLY")


class AllReduceParams(_Tracked):
    _api = "tensorrt_llm.functional.AllReduceParams"

    def __repr__(self) -> str:
        return "AllReduceParams()"


def allreduce(tensor: Tensor, group: list[int], all_reduce_params: Any = AllReduceParams()) -> Tensor:  # noqa: B008
    _record("tensorrt_llm.functional.allreduce", group=tuple(group))
    return _new(tensor.shape, tensor.dtype, "PLUGIN_V2")


def gather_last_token_logits(hidden_states: Tensor, last_token_ids: Tensor, remove_input_padding: bool) -> Tensor:
    if not remove_input_padding:
        raise ValueError("the backend runs with remove_input_padding")
    _record("tensorrt_llm.functional.gather_last_token_logits")
    return _new((last_token_ids.shape[0],) + hidden_states.shape[1:], hidden_states.dtype, "GATHER")


class QuantMode(int):
    """tensorrt_llm.quantization.QuantMode: int flags; QuantMode(0) is no quantization (gpt_attention's default)."""

    def __repr__(self) -> str:
        return f"QuantMode({int(self)})"

    def has_kv_cache_quant(self) -> bool:
        return False


class QuantModeWrapper(_Tracked):
    """tensorrt_llm._utils.QuantModeWrapper (PretrainedConfig.quant_mode returns one)."""

    _api = "tensorrt_llm._utils.QuantModeWrapper"

    def __init__(self, fp8_kv: bool) -> None:
        self._fp8_kv = fp8_kv

    def has_kv_cache_quant(self) -> bool:
        return self._fp8_kv

    def has_fp8_kv_cache(self) -> bool:
        return self._fp8_kv

    def has_fp8_qdq(self) -> bool:
        return False


def gpt_attention(
    *,
    qkv: Tensor,
    past_key_value: Tensor,
    attention_mask: Tensor | None = None,
    attention_packed_mask: Tensor | None = None,
    sequence_length: Tensor,
    host_past_key_value_lengths: Tensor | None,
    host_max_attention_window_sizes: Tensor,
    host_sink_token_length: Tensor,
    context_lengths: Tensor | None,
    cache_indirection: Tensor | None,
    host_request_types: Tensor,
    layer_idx: int,
    num_heads: int,
    num_kv_heads: int,
    hidden_size_per_head: int,
    q_scaling: float,
    attn_logit_softcapping_scale: float = 0.0,
    rotary_embedding_dim: int = 0,
    rotary_embedding_base: float = 10000.0,
    rotary_embedding_scale_type: RotaryScalingType = RotaryScalingType.none,
    rotary_embedding_short_m_scale: float = 1.0,
    rotary_embedding_long_m_scale: float = 1.0,
    rotary_embedding_scale: float = 1.0,
    rotary_embedding_max_positions: int = 1024,
    rotary_embedding_original_max_positions: int = 1024,
    position_embedding_type: PositionEmbeddingType = PositionEmbeddingType.learned_absolute,
    rotary_inv_freq: Tensor | None = None,
    rotary_cos_sin: Tensor | None = None,
    kv_orig_quant_scale: Tensor | None = None,
    kv_quant_orig_scale: Tensor | None = None,
    attention_output_orig_quant_scale: Tensor | None = None,
    attention_output_sf_scale: Tensor | None = None,
    kv_cache_quant_mode: Any = QuantMode(0),  # noqa: B008  (the 1.2 signature's default)
    max_context_length: int | None = None,
    mask_type: AttentionMaskType = AttentionMaskType.causal,
    block_sparse_block_size: int = 64,
    block_sparse_homo_head_pattern: bool = False,
    block_sparse_num_local_blocks: int = 16,
    block_sparse_vertical_stride: int = 8,
    alibi_slopes: Tensor | None = None,
    tp_size: int = 1,
    tp_rank: int = 0,
    vision_start: int = -1,
    vision_length: int = -1,
    kv_cache_block_offsets: Tensor | None = None,
    host_kv_cache_block_offsets: Tensor = None,
    host_kv_cache_pool_pointers: Tensor = None,
    host_kv_cache_pool_mapping: Tensor = None,
    do_cross_attention: bool = False,
    cross_kv: Tensor | None = None,
    cross_kv_length: Tensor | None = None,
    encoder_input_lengths: Tensor | None = None,
    relative_attention_bias: Tensor | None = None,
    logn_scaling: Tensor | None = None,
    max_distance: int = 0,
    host_context_lengths: Tensor | None = None,
    qkv_bias: Tensor | None = None,
    use_cache: bool = True,
    spec_decoding_is_generation_length_variable: bool = False,
    spec_decoding_max_generation_length: int = 0,
    spec_decoding_generation_lengths: Tensor = None,
    spec_decoding_position_offsets: Tensor = None,
    spec_decoding_packed_mask: Tensor = None,
    spec_decoding_use: Tensor = None,
    long_rope_rotary_inv_freq: Tensor | None = None,
    long_rope_rotary_cos_sin: Tensor | None = None,
    mrope_rotary_cos_sin: Tensor = None,
    mrope_position_deltas: Tensor = None,
    host_runtime_perf_knobs: Tensor | None = None,
    host_context_progress: Tensor = None,
    is_mla_enabled_flag: bool = False,
    q_lora_rank: int = 0,
    kv_lora_rank: int = 0,
    qk_nope_head_dim: int = 0,
    qk_rope_head_dim: int = 0,
    v_head_dim: int = 0,
    q_b_proj: Tensor | None = None,
    kv_b_proj: Tensor | None = None,
    k_b_proj_trans: Tensor | None = None,
    skip_attn: Any = None,
    cp_group: list[int] = [0],  # noqa: B006  (the 1.2 signature's default)
    cp_size: int = 1,
    cp_rank: int = 0,
    num_kv_heads_origin: int = -1,
) -> tuple[Tensor, Tensor | None]:
    """functional.gpt_attention: the asserts of the 1.2 function on its inputs, then the output shape."""
    net = default_net()
    if host_request_types is None or host_max_attention_window_sizes is None or host_sink_token_length is None:
        raise AssertionError("gpt_attention: host_request_types / window sizes / sink length are required")
    if not isinstance(max_context_length, int):
        raise AssertionError("gpt_attention: max_context_length must be an int")
    if net.plugin_config.remove_input_padding and host_context_lengths is None:
        raise AssertionError("gpt_attention: host_context_lengths is required with remove_input_padding")
    if use_cache and net.plugin_config.paged_kv_cache:
        for t in (
            kv_cache_block_offsets,
            host_kv_cache_block_offsets,
            host_kv_cache_pool_pointers,
            host_kv_cache_pool_mapping,
        ):
            if t is None:
                raise AssertionError("gpt_attention: paged KV cache inputs are required")
    if use_cache and kv_cache_quant_mode.has_kv_cache_quant():
        if kv_orig_quant_scale is None or kv_quant_orig_scale is None:
            raise AssertionError("gpt_attention: a quantized KV cache needs both scales")
    if position_embedding_type.is_rope() and (rotary_inv_freq is None or rotary_cos_sin is None):
        raise AssertionError("gpt_attention: RoPE needs rotary_inv_freq and rotary_cos_sin")
    width = qkv.shape[-1]
    expected = (num_heads + 2 * num_kv_heads) * hidden_size_per_head
    if width != expected:
        raise ValueError(f"gpt_attention layer {layer_idx}: qkv has {width} features, expected {expected}")
    _record(
        "tensorrt_llm.functional.gpt_attention",
        layer_idx=layer_idx,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        num_kv_heads_origin=num_kv_heads_origin,
        head_size=hidden_size_per_head,
        q_scaling=q_scaling,
        rotary_embedding_dim=rotary_embedding_dim,
        rotary_embedding_base=rotary_embedding_base,
        position_embedding_type=position_embedding_type.name,
        mask_type=mask_type.name,
        rotary_inv_freq_shape=rotary_inv_freq.shape if rotary_inv_freq is not None else None,
        rotary_cos_sin_shape=rotary_cos_sin.shape if rotary_cos_sin is not None else None,
        kv_scales=(kv_orig_quant_scale is not None, kv_quant_orig_scale is not None),
        tp_size=tp_size,
        tp_rank=tp_rank,
        attn_logit_softcapping_scale=attn_logit_softcapping_scale,
        max_context_length=max_context_length,
        use_cache=use_cache,
    )
    return _new(qkv.shape[:-1] + (num_heads * hidden_size_per_head,), qkv.dtype, "PLUGIN_V2"), None


# ---- tensorrt_llm.module / parameter ---------------------------------------------------------------------------


class Module(_Tracked):
    """tensorrt_llm.module.Module: parameters and sub-modules by attribute, named_parameters, __call__."""

    _api = "tensorrt_llm.module.Module"

    def __init__(self) -> None:
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_parameters", {})

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("_parameters")
        if params is not None and name in params:
            return params[name]
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:
            return modules[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Parameter):
            self.__dict__["_parameters"][name] = value
        elif isinstance(value, Module):
            self.__dict__["_modules"][name] = value
        else:
            object.__setattr__(self, name, value)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        self._parameters[name] = param

    def named_modules(self, prefix: str = "") -> Any:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(prefix + ("." if prefix else "") + name)

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Any:
        seen: set[int] = set()
        for mprefix, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield mprefix + ("." if mprefix else "") + name, p

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)


class Parameter(_Tracked):
    """tensorrt_llm.parameter.Parameter: a declared shape and dtype; `value` becomes a network constant."""

    _api = "tensorrt_llm.parameter.Parameter"

    def __init__(
        self,
        value: Any = None,
        shape: Sequence[int] | None = None,
        dtype: str | DataType | None = None,
        is_buffer: bool = False,
        prefer_managed: bool = False,
    ) -> None:
        self._dtype = _as_trt_dtype(dtype) if dtype is not None else DataType.FLOAT
        if value is None:
            if not isinstance(shape, (list, tuple)):
                raise AssertionError(f"shape must be list or tuple, receive {type(shape)}")
            self._shape = tuple(shape)
            self._value: Any = None
        else:
            self._shape = tuple(value.shape)
            self._value = self._check(value)
        self.is_buffer = is_buffer
        self._name: str | None = None

    def _check(self, v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            found = _TORCH_DTYPES[v.dtype]
        elif isinstance(v, np.ndarray):
            found = _NP_DTYPES[v.dtype]
        else:
            raise TypeError(f"Expected numpy.ndarray or torch.Tensor, got {type(v)}")
        if tuple(v.shape) != self._shape:
            raise AssertionError(
                f"The value updated is not the same shape as the original. Updated: "
                f"{tuple(v.shape)}, original: {self._shape}"
            )
        if found != self._dtype:
            raise AssertionError(f"Parameter declared {self._dtype.name} but given {found.name}")
        return v

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> DataType:
        return self._dtype

    def is_inited(self) -> bool:
        return self._value is not None

    @property
    def raw_value(self) -> np.ndarray:
        if self._value is None:
            raise AssertionError("Parameter has no value")
        v = self._value
        return (
            v.float().numpy()
            if isinstance(v, torch.Tensor) and v.dtype in (torch.bfloat16, torch.float8_e4m3fn)
            else (v.numpy() if isinstance(v, torch.Tensor) else v)
        )

    @property
    def value(self) -> Tensor:
        if self._value is None:
            raise AssertionError(f"Parameter {self._name} is used in the network but was never loaded")
        _record("tensorrt_llm.parameter.Parameter.value", name=self._name, shape=self._shape, dtype=self._dtype.name)
        return _new(self._shape, self._dtype, "CONSTANT")

    @value.setter
    def value(self, v: Any) -> None:
        self._value = self._check(v)


# ---- tensorrt_llm.mapping / models -----------------------------------------------------------------------------


class Mapping(_Tracked):
    """tensorrt_llm.mapping.Mapping (TP x PP; the attributes the backend reads)."""

    _api = "tensorrt_llm.mapping.Mapping"
    _instance_attrs = ("world_size", "rank", "tp_size", "pp_size")

    def __init__(self, world_size: int = 1, rank: int = 0, tp_size: int = 1, pp_size: int = 1, **_: Any) -> None:
        self.world_size, self.rank, self.tp_size, self.pp_size = world_size, rank, tp_size, pp_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // self.tp_size

    @property
    def tp_group(self) -> list[int]:
        base = self.pp_rank * self.tp_size
        return list(range(base, base + self.tp_size))

    def pp_layers(self, num_layers: int) -> list[int]:
        return torch.tensor_split(torch.arange(num_layers), self.pp_size)[self.pp_rank].tolist()

    def is_first_pp_rank(self) -> bool:
        return self.pp_rank == 0

    def is_last_pp_rank(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Mapping:
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "rank": self.rank, "tp_size": self.tp_size, "pp_size": self.pp_size}


class QuantConfig(_Tracked):
    """tensorrt_llm.models.modeling_utils.QuantConfig (a dataclass there; the fields the backend reads)."""

    _api = "tensorrt_llm.models.modeling_utils.QuantConfig"
    _instance_attrs = ("quant_algo", "kv_cache_quant_algo")

    def __init__(
        self,
        quant_algo: str | None = None,
        kv_cache_quant_algo: str | None = None,
        group_size: int = 128,
        exclude_modules: list[str] | None = None,
        **_: Any,
    ) -> None:
        self.quant_algo, self.kv_cache_quant_algo = quant_algo, kv_cache_quant_algo
        self.group_size, self.exclude_modules = group_size, exclude_modules


class PretrainedConfig(_Tracked):
    """tensorrt_llm.models.modeling_utils.PretrainedConfig: known fields, unknown keys become attributes."""

    _api = "tensorrt_llm.models.modeling_utils.PretrainedConfig"
    _instance_attrs = (
        "architecture",
        "dtype",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "logits_dtype",
        "norm_epsilon",
        "position_embedding_type",
        "num_key_value_heads",
        "intermediate_size",
        "max_position_embeddings",
        "mapping",
        "quantization",
        "head_size",
        "rotary_embedding_dim",
    )

    def __init__(
        self,
        *,
        architecture: str,
        dtype: str,
        hidden_size: int,
        num_hidden_layers: int,
        num_attention_heads: int,
        vocab_size: int | None = None,
        hidden_act: str = "gelu",
        logits_dtype: str = "float32",
        norm_epsilon: float = 1e-5,
        position_embedding_type: Any = PositionEmbeddingType.learned_absolute,
        max_position_embeddings: int | None = None,
        rotary_embedding_dim: int | None = None,
        num_key_value_heads: int | None = None,
        intermediate_size: int | None = None,
        mapping: Any = None,
        quantization: Any = None,
        use_parallel_embedding: bool = False,
        embedding_sharding_dim: int = 0,
        head_size: int | None = None,
        qk_layernorm: bool = False,
        runtime_defaults: Any = None,
        **kwargs: Any,
    ) -> None:
        self.architecture, self.dtype, self.vocab_size = architecture, dtype, vocab_size
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.hidden_act = num_attention_heads, hidden_act
        self.logits_dtype, self.norm_epsilon = logits_dtype, norm_epsilon
        if isinstance(position_embedding_type, str):
            position_embedding_type = PositionEmbeddingType.from_string(position_embedding_type)
        self.position_embedding_type = position_embedding_type
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.mapping = Mapping.from_dict(mapping) if isinstance(mapping, dict) else (mapping or Mapping())
        self.quantization = (
            QuantConfig(**quantization) if isinstance(quantization, dict) else (quantization or QuantConfig())
        )
        self.use_parallel_embedding, self.embedding_sharding_dim = use_parallel_embedding, embedding_sharding_dim
        self.head_size = head_size if head_size is not None else hidden_size // num_attention_heads
        self.qk_layernorm = qk_layernorm
        self.rotary_embedding_dim = rotary_embedding_dim if rotary_embedding_dim is not None else self.head_size
        for k, v in kwargs.items():
            setattr(self, k, v)
            RECORDER.warnings.append(f"Implicitly setting PretrainedConfig.{k}")

    @property
    def quant_mode(self) -> QuantModeWrapper:
        return QuantModeWrapper(self.quantization.kv_cache_quant_algo == "FP8")

    def set_rank(self, rank: int) -> None:
        self.mapping.rank = rank

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        out["position_embedding_type"] = self.position_embedding_type.name
        out["mapping"] = self.mapping.to_dict()
        out["mapping"].pop("rank")
        q = self.quantization
        out["quantization"] = {"quant_algo": q.quant_algo, "kv_cache_quant_algo": q.kv_cache_quant_algo}
        return out


class KeyValueCacheParams(_Tracked):
    """tensorrt_llm.layers.attention.KeyValueCacheParams."""

    _api = "tensorrt_llm.layers.attention.KeyValueCacheParams"
    _instance_attrs = (
        "past_key_value",
        "host_past_key_value_lengths",
        "host_max_attention_window_sizes",
        "host_sink_token_length",
        "kv_cache_block_offsets",
        "host_kv_cache_block_offsets",
        "host_kv_cache_pool_pointers",
        "host_kv_cache_pool_mapping",
        "cache_indirection",
    )

    def __init__(
        self,
        past_key_value: Any = None,
        host_past_key_value_lengths: Any = None,
        host_max_attention_window_sizes: Any = None,
        host_sink_token_length: Any = None,
        kv_cache_block_offsets: Any = None,
        host_kv_cache_block_offsets: Any = None,
        host_kv_cache_pool_pointers: Any = None,
        host_kv_cache_pool_mapping: Any = None,
        cache_indirection: Any = None,
        past_key_value_length: Any = None,
        cross_kv_cache_block_offsets: Any = None,
        host_cross_kv_cache_block_offsets: Any = None,
        host_cross_kv_cache_pool_pointers: Any = None,
        host_cross_kv_cache_pool_mapping: Any = None,
    ) -> None:
        self.past_key_value = past_key_value
        self.host_past_key_value_lengths = host_past_key_value_lengths
        self.host_max_attention_window_sizes = host_max_attention_window_sizes
        self.host_sink_token_length = host_sink_token_length
        self.kv_cache_block_offsets = kv_cache_block_offsets
        self.host_kv_cache_block_offsets = host_kv_cache_block_offsets
        self.host_kv_cache_pool_pointers = host_kv_cache_pool_pointers
        self.host_kv_cache_pool_mapping = host_kv_cache_pool_mapping
        self.cache_indirection = cache_indirection


class AttentionParams(_Tracked):
    """tensorrt_llm.layers.attention.AttentionParams."""

    _api = "tensorrt_llm.layers.attention.AttentionParams"
    _instance_attrs = (
        "sequence_length",
        "context_lengths",
        "host_context_lengths",
        "max_context_length",
        "host_request_types",
        "host_runtime_perf_knobs",
        "host_context_progress",
    )

    def __init__(
        self,
        sequence_length: Any = None,
        context_lengths: Any = None,
        host_context_lengths: Any = None,
        max_context_length: int | None = None,
        host_request_types: Any = None,
        encoder_input_lengths: Any = None,
        encoder_max_input_length: Any = None,
        host_runtime_perf_knobs: Any = None,
        host_context_progress: Any = None,
    ) -> None:
        self.sequence_length, self.context_lengths = sequence_length, context_lengths
        self.host_context_lengths, self.max_context_length = host_context_lengths, max_context_length
        self.host_request_types = host_request_types
        self.host_runtime_perf_knobs, self.host_context_progress = host_runtime_perf_knobs, host_context_progress


def _input(name: str, shape: Sequence[int], dtype: DataType) -> Tensor:
    return Tensor(name=name, dtype=dtype, shape=shape)


class PretrainedModel(Module):
    """tensorrt_llm.models.modeling_utils.PretrainedModel: config, load() and prepare_inputs()."""

    _api = "tensorrt_llm.models.modeling_utils.PretrainedModel"
    _instance_attrs = ("config",)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_dir: str,
        rank: int | None = None,
        config: PretrainedConfig | None = None,
        *,
        preprocess_weights_hook: Any = None,
    ) -> PretrainedModel:
        raise NotImplementedError("the stood-in from_checkpoint needs MODEL_MAP; models override it")

    def load(self, weights: dict[str, Any], from_pruned: bool = False) -> None:
        """As the 1.2 load(): every uninitialised parameter must be provided; extra tensors are a warning."""
        required = set()
        for name, param in self.named_parameters():
            param._name = name
            if param.is_inited():
                continue
            if name not in weights:
                if name.endswith("lm_head.weight") and any(k.endswith("vocab_embedding.weight") for k in weights):
                    continue
            required.add(name)
        provided = set(weights)
        if not required.issubset(provided):
            raise RuntimeError(f"Required but not provided tensors:{required.difference(provided)}")
        if not provided.issubset(required):
            RECORDER.warnings.append(f"Provided but not required tensors: {provided.difference(required)}")
        for name, param in self.named_parameters():
            if name in provided:
                param.value = weights[name]

    def prepare_inputs(
        self,
        max_batch_size: int,
        max_input_len: int,
        max_seq_len: int,
        max_num_tokens: int,
        use_cache: bool,
        max_beam_width: int = 1,
        opt_num_tokens: int | None = None,
        prompt_embedding_table_size: int = 0,
        position_encoding_2d: bool = False,
        max_draft_len: int = 0,
        speculative_decoding_draft_tokens_external: bool = False,
        spec_decoding_is_generation_length_variable: bool = False,
        gather_context_logits: bool = False,
        lora_target_modules: list[str] | None = None,
        opt_batch_size: int = 0,
        num_hidden_layers: int | None = None,
        mrope_rotary_cos_sin_size: int | None = None,
    ) -> dict[str, Any]:
        """The engine inputs of a paged-KV, packed-token (remove_input_padding) build."""
        for name, p in self.named_parameters():
            p._name = name
        i32, i64 = DataType.INT32, DataType.INT64
        n_layers = len(self.config.mapping.pp_layers(self.config.num_hidden_layers))
        kv = KeyValueCacheParams(
            past_key_value=[None] * n_layers,
            host_past_key_value_lengths=_input("host_past_key_value_lengths", (-1,), i32),
            host_max_attention_window_sizes=_input("host_max_attention_window_sizes", (n_layers,), i32),
            host_sink_token_length=_input("host_sink_token_length", (1,), i32),
            kv_cache_block_offsets=_input("kv_cache_block_offsets", (-1, -1, 2, -1), i32),
            host_kv_cache_block_offsets=_input("host_kv_cache_block_offsets", (-1, -1, 2, -1), i32),
            host_kv_cache_pool_pointers=_input("host_kv_cache_pool_pointers", (-1, 2), i64),
            host_kv_cache_pool_mapping=_input("host_kv_cache_pool_mapping", (n_layers, 2), i32),
            cache_indirection=_input("cache_indirection", (-1, -1, -1), i32),
        )
        attn = AttentionParams(
            sequence_length=_input("sequence_length", (-1,), i32),
            context_lengths=_input("context_lengths", (-1,), i32),
            host_context_lengths=_input("host_context_lengths", (-1,), i32),
            max_context_length=max_input_len,
            host_request_types=_input("host_request_types", (-1,), i32),
            host_runtime_perf_knobs=_input("host_runtime_perf_knobs", (16,), i64),
            host_context_progress=_input("host_context_progress", (1,), i64),
        )
        _record(
            "tensorrt_llm.models.modeling_utils.PretrainedModel.prepare_inputs",
            max_batch_size=max_batch_size,
            max_input_len=max_input_len,
            max_seq_len=max_seq_len,
            max_num_tokens=max_num_tokens,
        )
        out: dict[str, Any] = {
            "input_ids": _input("input_ids", (-1,), i32),
            "position_ids": _input("position_ids", (-1,), i32),
            "use_cache": use_cache,
            "last_token_ids": _input("last_token_ids", (-1,), i32),
            "attention_mask": None,
            "kv_cache_params": kv,
            "attention_params": attn,
        }
        if not self.config.mapping.is_first_pp_rank():
            out["hidden_states"] = _input(
                "hidden_states_input", (-1, self.config.hidden_size), str_dtype_to_trt(self.config.dtype)
            )
        return out


# ---- tensorrt_llm.plugin / builder / runtime -------------------------------------------------------------------


class PluginConfig(_Tracked):
    """tensorrt_llm.plugin.PluginConfig (the fields the backend sets; 1.2 defaults)."""

    _api = "tensorrt_llm.plugin.PluginConfig"
    _instance_attrs = (
        "dtype",
        "gpt_attention_plugin",
        "gemm_plugin",
        "context_fmha",
        "paged_kv_cache",
        "remove_input_padding",
        "tokens_per_block",
        "use_paged_context_fmha",
        "use_fp8_context_fmha",
    )

    def __init__(self) -> None:
        self.dtype = "float16"
        self.gpt_attention_plugin: str | None = "auto"
        self.gemm_plugin: str | None = None
        self.context_fmha = True
        self.paged_kv_cache: bool | None = None
        self.remove_input_padding = True
        self.tokens_per_block = 32
        self.use_paged_context_fmha = True
        self.use_fp8_context_fmha = True


class BuildConfig(_Tracked):
    """tensorrt_llm.builder.BuildConfig (the fields the backend sets; keyword construction)."""

    _api = "tensorrt_llm.builder.BuildConfig"
    _instance_attrs = (
        "max_batch_size",
        "max_input_len",
        "max_seq_len",
        "max_num_tokens",
        "max_beam_width",
        "gather_context_logits",
        "strongly_typed",
        "plugin_config",
    )

    def __init__(
        self,
        max_input_len: int = 1024,
        max_seq_len: int | None = None,
        opt_batch_size: int = 8,
        max_batch_size: int = 2048,
        max_beam_width: int = 1,
        max_num_tokens: int = 8192,
        opt_num_tokens: int | None = None,
        gather_context_logits: bool = False,
        gather_generation_logits: bool = False,
        strongly_typed: bool = True,
        plugin_config: PluginConfig | None = None,
        **kwargs: Any,
    ) -> None:
        self.max_input_len, self.max_seq_len, self.opt_batch_size = max_input_len, max_seq_len, opt_batch_size
        self.max_batch_size, self.max_beam_width, self.max_num_tokens = max_batch_size, max_beam_width, max_num_tokens
        self.opt_num_tokens, self.gather_context_logits = opt_num_tokens, gather_context_logits
        self.gather_generation_logits, self.strongly_typed = gather_generation_logits, strongly_typed
        self.plugin_config = plugin_config or PluginConfig()
        self._extra = kwargs


class Engine(_Tracked):
    """tensorrt_llm.builder.Engine: save() writes config.json (the stand-in builds no plan)."""

    _api = "tensorrt_llm.builder.Engine"

    def __init__(self, pretrained_config: PretrainedConfig, build_config: BuildConfig) -> None:
        self._pretrained, self._build = pretrained_config, build_config

    def save(self, engine_dir: str) -> None:
        d = Path(engine_dir)
        d.mkdir(parents=True, exist_ok=True)
        pc = self._build.plugin_config
        cfg = {
            "version": "stand-in",
            "pretrained_config": self._pretrained.to_dict(),
            "build_config": {
                "max_batch_size": self._build.max_batch_size,
                "max_seq_len": self._build.max_seq_len,
                "plugin_config": {k: getattr(pc, k) for k in PluginConfig._instance_attrs},
            },
        }
        if self._pretrained.mapping.rank == 0:
            (d / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        _record("tensorrt_llm.builder.Engine.save", engine_dir=str(d), rank=self._pretrained.mapping.rank)


def build(model: PretrainedModel, build_config: BuildConfig) -> Engine:
    """tensorrt_llm.builder.build: the 1.2 rules the backend depends on, then the network from model.forward."""
    bc = copy.copy(build_config)
    bc.plugin_config = copy.copy(build_config.plugin_config)
    pc = bc.plugin_config
    pc.dtype = model.config.dtype
    if bc.max_seq_len is None:
        bc.max_seq_len = model.config.max_position_embeddings or 2048
    fp8_kv = model.config.quantization.kv_cache_quant_algo == "FP8"
    if fp8_kv:
        bc.strongly_typed = True
    # builder.py "Logics to control paged_context_fmha and fp8_context_fmha" for quant_algo not in FP8/W4A8/NVFP4
    if not pc.context_fmha:
        pc.use_fp8_context_fmha = False
        pc.use_paged_context_fmha = False
    elif model.config.quantization.quant_algo not in ("FP8", "W4A8_AWQ", "NVFP4"):
        if pc.use_fp8_context_fmha:
            pc.use_fp8_context_fmha = False
            RECORDER.warnings.append(
                "FP8 Context FMHA is disabled because it must be used together with the fp8 quantization workflow."
            )
        if pc.use_paged_context_fmha and fp8_kv:
            pc.use_paged_context_fmha = False
            RECORDER.warnings.append("FP8 Paged Context FMHA is disabled because FP8 context FMHA is disabled.")
    net = Network(pc, bc.strongly_typed)
    _NET.append(net)
    try:
        inputs = model.prepare_inputs(
            max_batch_size=bc.max_batch_size,
            max_input_len=bc.max_input_len,
            max_seq_len=bc.max_seq_len,
            use_cache=True,
            max_beam_width=bc.max_beam_width,
            max_num_tokens=bc.max_num_tokens,
            opt_num_tokens=bc.opt_num_tokens,
            gather_context_logits=bc.gather_context_logits,
        )
        model(**inputs)
    finally:
        _NET.pop()
    _record(
        "tensorrt_llm.builder.build",
        use_paged_context_fmha=pc.use_paged_context_fmha,
        use_fp8_context_fmha=pc.use_fp8_context_fmha,
        strongly_typed=bc.strongly_typed,
    )
    return Engine(model.config, bc)


class ModelRunnerCpp(_Tracked):
    """tensorrt_llm.runtime.ModelRunnerCpp: from_dir records its options; generate returns a fixed pattern."""

    _api = "tensorrt_llm.runtime.ModelRunnerCpp"

    def __init__(self, options: dict[str, Any], vocab_size: int) -> None:
        self._options, self._vocab = options, vocab_size

    @classmethod
    def from_dir(
        cls,
        engine_dir: str,
        *,
        lora_dir: str | None = None,
        rank: int = 0,
        max_batch_size: int | None = None,
        max_input_len: int | None = None,
        max_output_len: int | None = None,
        max_beam_width: int | None = None,
        max_attention_window_size: list[int] | None = None,
        sink_token_length: int | None = None,
        kv_cache_free_gpu_memory_fraction: float | None = None,
        cross_kv_cache_fraction: float | None = None,
        medusa_choices: Any = None,
        eagle_choices: Any = None,
        eagle_posterior_threshold: Any = None,
        eagle_use_dynamic_tree: bool = False,
        eagle_dynamic_tree_max_top_k: int | None = None,
        lookahead_config: Any = None,
        debug_mode: bool = False,
        lora_ckpt_source: str = "hf",
        use_gpu_direct_storage: bool = False,
        gpu_weights_percent: float = 1,
        max_tokens_in_paged_kv_cache: int | None = None,
        kv_cache_enable_block_reuse: bool = False,
        enable_chunked_context: bool = False,
        is_enc_dec: bool = False,
        multi_block_mode: bool = True,
        enable_context_fmha_fp32_acc: bool | None = None,
        cuda_graph_mode: bool | None = None,
        logits_processor_map: Any = None,
        device_ids: list[int] | None = None,
        is_orchestrator_mode: bool = False,
        use_runtime_defaults: bool = True,
        gather_generation_logits: bool = False,
        use_variable_beam_width_search: bool = False,
        mm_embedding_offloading: bool = False,
        fail_fast_on_attention_window_too_large: bool = False,
    ) -> ModelRunnerCpp:
        cfg = json.loads((Path(engine_dir) / "config.json").read_text())
        options = {k: v for k, v in locals().items() if k not in ("cls", "cfg")}
        _record("tensorrt_llm.runtime.ModelRunnerCpp.from_dir", **options)
        return cls(options, int(cfg["pretrained_config"]["vocab_size"]))

    def generate(
        self,
        batch_input_ids: list[torch.Tensor],
        *,
        position_ids: list[torch.Tensor] | None = None,
        encoder_input_ids: list[torch.Tensor] | None = None,
        encoder_input_features: list[torch.Tensor] | None = None,
        encoder_output_lengths: list[int] | None = None,
        cross_attention_masks: list[torch.Tensor] | None = None,
        mrope_params: Any = None,
        sampling_config: Any = None,
        lora_uids: list[Any] | None = None,
        lookahead_config: Any = None,
        streaming: bool = False,
        stopping_criteria: Any = None,
        logits_processor_names: list[str] | None = None,
        max_new_tokens: int = 1,
        end_id: int | None = None,
        pad_id: int | None = None,
        bad_words_list: Any = None,
        stop_words_list: Any = None,
        return_dict: bool = False,
        output_sequence_lengths: bool = False,
        output_generation_logits: bool = False,
        output_log_probs: bool = False,
        output_cum_log_probs: bool = False,
        prompt_table: Any = None,
        prompt_tasks: str | None = None,
        input_token_extra_ids: Any = None,
        return_all_generated_tokens: bool = False,
        language_adapter_uids: list[int] | None = None,
        mm_embedding_offloading: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Greedy pattern: token t of prompt b is (sum(prompt) + t) % vocab; logits one-hot on it."""
        _record(
            "tensorrt_llm.runtime.ModelRunnerCpp.generate",
            batch=len(batch_input_ids),
            max_new_tokens=max_new_tokens,
            end_id=end_id,
            pad_id=pad_id,
            return_dict=return_dict,
            output_sequence_lengths=output_sequence_lengths,
            output_generation_logits=output_generation_logits,
            **kwargs,
        )
        b = len(batch_input_ids)
        max_in = max(len(p) for p in batch_input_ids)
        out = torch.full((b, 1, max_in + max_new_tokens), pad_id if pad_id is not None else 0, dtype=torch.int32)
        lengths = torch.zeros(b, 1, dtype=torch.int32)
        logits = torch.zeros(b, 1, max_new_tokens, self._vocab)
        for i, p in enumerate(batch_input_ids):
            n = len(p)
            out[i, 0, :n] = p.to(torch.int32)
            for t in range(max_new_tokens):
                tok = (int(p.sum()) + t) % self._vocab
                out[i, 0, n + t] = tok
                logits[i, 0, t, tok] = 1.0
            lengths[i, 0] = n + max_new_tokens
        result: dict[str, Any] = {"output_ids": out, "sequence_lengths": lengths}
        if output_generation_logits:
            result["generation_logits"] = logits
        return result if return_dict else out


# ---- assembling the modules ------------------------------------------------------------------------------------


def _module(name: str, **attrs: Any) -> types.ModuleType:
    m = _TrackedModule(name)
    for k, v in attrs.items():
        setattr(m, k, v)
    if "." not in name:
        m.__path__ = []  # a package, so `import tensorrt_llm.functional` resolves through sys.modules
    return m


def _block_fp8_shape(inputs: list[ITensor], fields: dict[str, Any]) -> ITensor:
    """BlockFp8WoGemmPlugin::getOutputShapes: [..., K] x W[N, K] -> [..., N], bf16."""
    x, w, s = inputs
    if x.shape[-1] != fields["in_features"] or w.shape != (fields["out_features"], fields["in_features"]):
        raise ValueError(f"BlockFp8WoGemm: X {x.shape}, W {w.shape} vs fields {fields}")
    if s.shape != (-(-w.shape[0] // 128), -(-w.shape[1] // 128)):
        raise ValueError(f"BlockFp8WoGemm: scale {s.shape} for W {w.shape}")
    if (x.dtype, w.dtype, s.dtype) != (DataType.BF16, DataType.FP8, DataType.FLOAT):
        raise TypeError(f"BlockFp8WoGemm: input dtypes {x.dtype.name}, {w.dtype.name}, {s.dtype.name}")
    return ITensor(x.shape[:-1] + (fields["out_features"],), DataType.BF16)


def _global_attention_shape(inputs: list[ITensor], fields: dict[str, Any]) -> ITensor:
    """Gemma4GlobalAttentionPlugin::getOutputShapes: [T, num_q_heads * head_dim], bf16."""
    q = inputs[0]
    width = fields["num_q_heads"] * fields["head_dim"]
    if q.shape[-1] != width:
        raise ValueError(f"Gemma4GlobalAttention: q has {q.shape[-1]} features, fields say {width}")
    return ITensor(q.shape[:-1] + (width,), DataType.BF16)


_SHAPE_RULES: dict[str, Callable[[list[ITensor], dict[str, Any]], ITensor]] = {
    "BlockFp8WoGemm": _block_fp8_shape,
    "Gemma4GlobalAttention": _global_attention_shape,
}


def _register_plugins(schema: dict[str, tuple[str, str, dict[str, PluginFieldType], set[str]]]) -> None:
    _REGISTRY._creators.clear()
    for name, (version, namespace, types_, required) in schema.items():
        _REGISTRY.register(IPluginCreatorV3One(name, version, namespace, types_, required, _SHAPE_RULES[name]))


# Stood-in classes the backend reaches through objects rather than by import (for resolving API names).
CLASSES: dict[str, type] = {
    "tensorrt.IPluginRegistry": IPluginRegistry,
    "tensorrt.IPluginCreatorV3One": IPluginCreatorV3One,
    "tensorrt.INetworkDefinition": INetworkDefinition,
    "tensorrt.ILayer": ILayer,
    "tensorrt_llm.network.Network": Network,
    "tensorrt_llm.layers.attention.KeyValueCacheParams": KeyValueCacheParams,
    "tensorrt_llm.layers.attention.AttentionParams": AttentionParams,
}


def build_modules(
    plugin_schema: dict[str, tuple[str, str, dict[str, PluginFieldType], set[str]]],
) -> dict[str, types.ModuleType]:
    """The stood-in modules by import name. plugin_schema: plugin name -> (version, namespace, field types,
    required fields), i.e. what the C++ creators advertise (trt_gemma4/plugins.py holds it as data)."""
    _register_plugins(plugin_schema)
    trt = _module(
        "tensorrt",
        DataType=DataType,
        PluginField=PluginField,
        PluginFieldCollection=PluginFieldCollection,
        PluginFieldType=PluginFieldType,
        TensorRTPhase=TensorRTPhase,
        get_plugin_registry=get_plugin_registry,
        __version__="10.14.1.48",
    )
    functional = _module(
        "tensorrt_llm.functional",
        Tensor=Tensor,
        gpt_attention=gpt_attention,
        concat=concat,
        split=split,
        view=view,
        cast=cast,
        constant=constant,
        rms_norm=rms_norm,
        embedding=embedding,
        matmul=matmul,
        mul=mul,
        add=add,
        tanh=tanh,
        gelu=gelu,
        allreduce=allreduce,
        gather_last_token_logits=gather_last_token_logits,
        _create_tensor=_create_tensor,
        PositionEmbeddingType=PositionEmbeddingType,
        RotaryScalingType=RotaryScalingType,
        AttentionMaskType=AttentionMaskType,
        AllReduceParams=AllReduceParams,
    )
    common = _module("tensorrt_llm._common", default_net=default_net, default_trtnet=default_trtnet)
    module = _module("tensorrt_llm.module", Module=Module)
    parameter = _module("tensorrt_llm.parameter", Parameter=Parameter)
    modeling_utils = _module(
        "tensorrt_llm.models.modeling_utils",
        PretrainedConfig=PretrainedConfig,
        PretrainedModel=PretrainedModel,
        QuantConfig=QuantConfig,
    )
    models = _module(
        "tensorrt_llm.models",
        PretrainedConfig=PretrainedConfig,
        PretrainedModel=PretrainedModel,
        modeling_utils=modeling_utils,
    )
    models.__path__ = []
    plugin = _module("tensorrt_llm.plugin", PluginConfig=PluginConfig)
    builder = _module("tensorrt_llm.builder", BuildConfig=BuildConfig, build=build, Engine=Engine)
    runtime = _module("tensorrt_llm.runtime", ModelRunnerCpp=ModelRunnerCpp)
    mapping = _module("tensorrt_llm.mapping", Mapping=Mapping)
    top = _module(
        "tensorrt_llm",
        __version__="1.2.1",
        functional=functional,
        _common=common,
        module=module,
        parameter=parameter,
        models=models,
        plugin=plugin,
        builder=builder,
        runtime=runtime,
        mapping=mapping,
    )
    return {
        m.__name__: m
        for m in (
            trt,
            top,
            functional,
            common,
            module,
            parameter,
            models,
            modeling_utils,
            plugin,
            builder,
            runtime,
            mapping,
        )
    }


def install(
    target: MutableMapping[str, Any],
    setitem: Callable[[str, Any], None] | None = None,
    plugin_schema: dict[str, tuple[str, str, dict[str, PluginFieldType], set[str]]] | None = None,
) -> Recorder:
    """Put the stood-in modules into `target` (sys.modules; `setitem` may be monkeypatch's, so the test undoes
    it) and start a fresh Recorder."""
    global RECORDER
    RECORDER = Recorder()
    _NET.clear()
    put = setitem or target.__setitem__
    for name, m in build_modules(plugin_schema or {}).items():
        put(name, m)
    return RECORDER


# ---- signatures as data ------------------------------------------------------------------------------------------


def _default_text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    text = repr(value)
    return f"{type(value).__name__}()" if " object at 0x" in text else text


def signature_tokens(obj: Callable[..., Any], drop_first: bool = False) -> list[str]:
    """A callable's parameters as they would be written in a def: 'name', 'name=default', '*', '*args', '**kw'
    (defaults: enums as Type.member, plain objects as Type()). drop_first drops self/cls."""
    params = list(inspect.signature(obj).parameters.values())[1 if drop_first else 0 :]
    out: list[str] = []
    star = False
    for p in params:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            out.append(f"*{p.name}")
            star = True
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            out.append(f"**{p.name}")
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        out.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}={_default_text(p.default)}")
    return out
