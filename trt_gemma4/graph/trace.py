"""A recorder of the op calls the graph makes, for any implementation of graph/ops.py.

`TracingOps(inner)` forwards every op to `inner` and appends one `OpCall` per call: the op's name, its static
arguments (weight names, component sizes, eps, the attention layer's numbers; tensors are left out) and the
feature dims of what it returned. Two backends running the same graph on the same model must produce the same
trace: that is how the TRT-LLM backend, which cannot run here, is checked against the torch backend.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trt_gemma4.graph.ops import AttentionLayer, Ops

OP_NAMES: tuple[str, ...] = tuple(
    name for name, _ in inspect.getmembers(Ops, inspect.isfunction) if not name.startswith("_")
)
_SIGNATURES = {name: inspect.signature(getattr(Ops, name)) for name in OP_NAMES}


@dataclass(frozen=True)
class OpCall:
    """One op call: name, static arguments as (name, value) pairs, feature dims of each returned tensor."""

    op: str
    args: tuple[tuple[str, Any], ...]
    out_features: tuple[tuple[int, ...], ...]


def _static(value: Any) -> tuple[bool, Any]:
    """(is static, recorded form) of one argument value."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True, value
    if isinstance(value, AttentionLayer):
        return True, repr(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return True, tuple(value)
    if isinstance(value, (list, tuple)):
        return True, f"{len(value)} tensors"
    return False, None


def feature_dims(t: Any) -> tuple[int, ...]:
    """Dims after the packed token dim of a [tokens, ...] tensor (torch.Tensor or a TRT-LLM Tensor's shape)."""
    return tuple(int(d) for d in tuple(t.shape)[1:])


@dataclass
class TracingOps:
    """Wraps an Ops implementation; each op call is forwarded and recorded in `calls`."""

    inner: Any
    features: Callable[[Any], tuple[int, ...]] = feature_dims
    calls: list[OpCall] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        if name not in OP_NAMES:
            return getattr(self.inner, name)
        fn = getattr(self.inner, name)
        sig = _SIGNATURES[name]

        def traced(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(None, *args, **kwargs)
            bound.apply_defaults()
            recorded = []
            for pname, value in list(bound.arguments.items())[1:]:
                static, form = _static(value)
                if static:
                    recorded.append((pname, form))
            out = fn(*args, **kwargs)
            outs: Sequence[Any] = out if isinstance(out, (list, tuple)) else [out]
            self.calls.append(OpCall(name, tuple(recorded), tuple(self.features(o) for o in outs)))
            return out

        return traced


def first_difference(a: Sequence[OpCall], b: Sequence[OpCall]) -> str | None:
    """None when the traces agree, else a description of the first call where they differ."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"call {i}: {x} != {y}"
    if len(a) != len(b):
        return f"lengths differ: {len(a)} != {len(b)} calls"
    return None
