"""Our TRT-LLM checkpoint (docs/checkpoint_format.md), read back: config + per-rank lazy tensors.

Written by `trt_gemma4.convert`; read by the torch backend (verify) and the TRT-LLM backend (build). The layout
rules that both sides must agree on live here too: which ranks hold which layers, and the per-rank component
sizes of the fused projections (placed at `names.fused_segments` offsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from trt_gemma4.checkpoint import names
from trt_gemma4.checkpoint.safetensors_writer import TensorEntry, read_header
from trt_gemma4.errors import CheckpointError
from trt_gemma4.spec import Gemma4Spec, load_json

FORMAT_VERSION = 1
ARCHITECTURE = "Gemma4ForCausalLM"


def rank_file(rank: int) -> str:
    return f"rank{rank}.safetensors"


def pp_layers(num_layers: int, pp: int) -> list[list[int]]:
    """Layers of each pipeline stage, as TRT-LLM's Mapping.pp_layers splits them (torch.tensor_split: when
    num_layers % pp = n != 0, the first n stages get one extra layer)."""
    return [t.tolist() for t in torch.tensor_split(torch.arange(num_layers), pp)]


def component_sizes(spec: Gemma4Spec, layer: int, linear: names.Linear, tp: int) -> list[int]:
    """Per-rank size of each HF component of `linear` along its TP dimension (rows for tp_dim 0, input columns
    for tp_dim 1); replicated components keep their whole size."""
    full = {
        "self_attn.q_proj": spec.q_size(layer),
        "self_attn.k_proj": spec.kv_size(layer),
        "self_attn.v_proj": spec.kv_size(layer),
        "mlp.gate_proj": spec.intermediate_size,
        "mlp.up_proj": spec.intermediate_size,
        "self_attn.o_proj": spec.q_size(layer),  # split on K
        "mlp.down_proj": spec.intermediate_size,  # split on K
    }
    if linear.tp_dim is None:
        return [full[p] for p in linear.hf_parts]
    return [full[p] if p in linear.replicated else full[p] // tp for p in linear.hf_parts]


def split_fused(t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """The components of a fused weight (or of its GEMM output, on the last dim use `.T`), by names.fused_segments."""
    return [t[off : off + n] for off, n in names.fused_segments(sizes)]


@dataclass
class TrtllmCheckpoint:
    """A converted checkpoint directory: config.json and rank{r}.safetensors, tensors read lazily."""

    path: Path
    config: dict[str, Any]
    spec: Gemma4Spec
    tp: int
    pp: int
    stage_layers: list[list[int]]
    entries: list[dict[str, TensorEntry]]  # per rank
    _handles: dict[int, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> TrtllmCheckpoint:
        path = Path(path)
        cfg_file = path / "config.json"
        cfg = load_json(cfg_file)
        g = cfg.get("gemma4")
        if not isinstance(g, dict) or g.get("format_version") != FORMAT_VERSION:
            found = "no 'gemma4' key" if not isinstance(g, dict) else f"format_version {g.get('format_version')!r}"
            raise CheckpointError(
                str(cfg_file), None, f"a trt-gemma4 checkpoint (gemma4.format_version {FORMAT_VERSION})", found
            )
        spec = Gemma4Spec.from_dict(g["spec"])
        m = cfg.get("mapping") or {}
        tp, pp = int(m.get("tp_size", 1)), int(m.get("pp_size", 1))
        world = int(m.get("world_size", tp * pp))
        if world != tp * pp:
            raise CheckpointError(
                str(cfg_file), None, f"mapping.world_size = tp_size x pp_size = {tp * pp}", str(world)
            )
        stages = g.get("pp_layers") or pp_layers(spec.num_layers, pp)
        entries = []
        for r in range(world):
            f = path / rank_file(r)
            if not f.exists():
                raise CheckpointError(str(f), None, f"one file per rank ({world} ranks)", "no such file")
            entries.append(read_header(f)[0])
        return cls(
            path=path, config=cfg, spec=spec, tp=tp, pp=pp, stage_layers=[list(s) for s in stages], entries=entries
        )

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> TrtllmCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def kv_scales(self) -> str:
        """'identity' or 'checkpoint': where the KV-cache scales came from."""
        return str(self.config["gemma4"].get("kv_scales", "identity"))

    def rank(self, tp_rank: int = 0, pp_rank: int = 0) -> int:
        """File index of a (tp_rank, pp_rank): pp_rank * tp + tp_rank."""
        return pp_rank * self.tp + tp_rank

    def stage_of(self, layer: int) -> int:
        return next(p for p, ls in enumerate(self.stage_layers) if layer in ls)

    def keys(self, rank: int = 0) -> list[str]:
        return sorted(self.entries[rank])

    def entry(self, rank: int, name: str) -> TensorEntry:
        try:
            return self.entries[rank][name]
        except KeyError:
            raise CheckpointError(str(self.path / rank_file(rank)), name, "this tensor", "no such tensor") from None

    def _handle(self, rank: int) -> Any:
        h = self._handles.get(rank)
        if h is None:
            f = self.path / rank_file(rank)
            try:
                h = safe_open(str(f), framework="pt")
            except SafetensorError as e:
                raise CheckpointError(str(f), None, "a readable safetensors file", str(e)) from None
            self._handles[rank] = h
        return h

    def tensor(self, rank: int, name: str) -> torch.Tensor:
        """Tensor `name` of rank file `rank` (a CPU copy of this tensor only)."""
        self.entry(rank, name)
        return self._handle(rank).get_tensor(name)

    def layer_tensor(self, layer: int, name: str, tp_rank: int = 0) -> torch.Tensor:
        """`transformer.layers.{layer}.{name}` from the rank of `tp_rank` that holds the layer."""
        return self.tensor(self.rank(tp_rank, self.stage_of(layer)), names.trt_layer(layer, name))

    def linear(self, layer: int, trt_name: str, tp_rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(fp8 weight [rows, cols], float32 block scales [ceil(rows/128), ceil(cols/128)]) of one rank."""
        return (
            self.layer_tensor(layer, f"{trt_name}.weight", tp_rank),
            self.layer_tensor(layer, f"{trt_name}.{names.SCALE_SUFFIX}", tp_rank),
        )

    def linear_spec(self, layer: int, trt_name: str) -> names.Linear:
        lins = names.layer_linears(self.spec.has_v_proj(layer), self.spec.is_global(layer))
        return next(lin for lin in lins if lin.trt_name == trt_name)

    def component_sizes(self, layer: int, trt_name: str) -> list[int]:
        """Per-rank sizes of the components fused into `trt_name` (e.g. [q/tp, kv] for a global qkv)."""
        return component_sizes(self.spec, layer, self.linear_spec(layer, trt_name), self.tp)
