"""Where the torch backend's weights come from, addressed by TRT-LLM checkpoint names (checkpoint/names.py).

Two sources, both lazy (safetensors memory maps; a tensor is read when asked for):
  * `ConvertedCheckpoint`: our TRT-LLM checkpoint (docs/checkpoint_format.md), TP/PP sharded rank files;
  * `ModelOptExport`: a ModelOpt fp8_pb_wo export, fused on the fly through the name table (TP=1, PP=1), for
    running a checkpoint before converting it.
Both only adapt the checkpoint readers (checkpoint/trtllm.py, checkpoint/modelopt.py) to one interface.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from trt_gemma4.checkpoint.modelopt import ModelOptCheckpoint
from trt_gemma4.checkpoint.modelopt import dequantize_blocks as dequantize_blocks
from trt_gemma4.checkpoint.names import (
    BLOCK,
    GLOBAL_TENSORS,
    LAYER_TENSORS,
    SCALE_SUFFIX,
    Linear,
    fused_rows,
    fused_segments,
    layer_linears,
    trt_layer,
)
from trt_gemma4.checkpoint.trtllm import TrtllmCheckpoint
from trt_gemma4.errors import CheckpointError
from trt_gemma4.spec import Gemma4Spec, load_json

_LAYER_RE = re.compile(r"^transformer\.layers\.(\d+)\.")


@dataclass(frozen=True)
class KVScales:
    """Dequantization multipliers of one layer's FP8 KV cache (`x ≈ fp8 · scale`)."""

    k: float
    v: float


class WeightSource(Protocol):
    """Stored tensors by TRT-LLM name, per TP rank and PP stage."""

    spec: Gemma4Spec
    tp: int
    pp: int
    path: Path

    def stage_layers(self, stage: int) -> list[int]: ...

    def get(self, name: str, tp_rank: int = 0, stage: int | None = None) -> torch.Tensor: ...

    def checkpoint_kv_scales(self, layer: int) -> KVScales | None: ...

    def modelopt_version(self) -> str | None: ...


class ConvertedCheckpoint:
    """Our TRT-LLM checkpoint (checkpoint/trtllm.py reads it): rank files per TP rank and PP stage."""

    def __init__(self, path: str | Path) -> None:
        self.ckpt = TrtllmCheckpoint.open(path)
        self.path = self.ckpt.path
        self.spec, self.tp, self.pp = self.ckpt.spec, self.ckpt.tp, self.ckpt.pp

    def stage_layers(self, stage: int) -> list[int]:
        return self.ckpt.stage_layers[stage]

    def get(self, name: str, tp_rank: int = 0, stage: int | None = None) -> torch.Tensor:
        m = _LAYER_RE.match(name)
        if m:
            stage = self.ckpt.stage_of(int(m.group(1)))
        elif stage is None:  # the embedding is on the first and the last stage, ln_f on the last
            held = [s for s in range(self.pp) if name in self.ckpt.entries[self.ckpt.rank(tp_rank, s)]]
            stage = held[0] if held else 0
        return self.ckpt.tensor(self.ckpt.rank(tp_rank, stage), name)

    def checkpoint_kv_scales(self, layer: int) -> KVScales | None:
        if self.ckpt.kv_scales != "checkpoint":
            return None
        k = self.get(trt_layer(layer, "attention.k_cache_scaling_factor")).float().reshape(-1)[0]
        v = self.get(trt_layer(layer, "attention.v_cache_scaling_factor")).float().reshape(-1)[0]
        return KVScales(float(k), float(v))

    def modelopt_version(self) -> str | None:
        return (self.ckpt.config["gemma4"].get("source") or {}).get("modelopt_version")


class ModelOptExport:
    """A ModelOpt fp8_pb_wo export (checkpoint/modelopt.py reads it) seen through the name table: the fused
    qkv and gate|up weights and their block scales are assembled on request, as the converter lays them out."""

    tp = 1
    pp = 1

    def __init__(self, path: str | Path) -> None:
        self.ckpt = ModelOptCheckpoint.open(path)
        self.path = self.ckpt.path
        self.spec = self.ckpt.spec
        self._linears: dict[str, tuple[int, Linear]] = {}
        for i in self.spec.layer_range:
            for name, lin in iter_linear_names(self.spec, i):
                self._linears[name] = (i, lin)

    def stage_layers(self, stage: int) -> list[int]:
        return list(self.spec.layer_range)

    def _fused(self, layer: int, lin: Linear) -> tuple[torch.Tensor, torch.Tensor]:
        mods = [self.ckpt.layer_key(layer, p) for p in lin.hf_parts]
        ws = [self.ckpt.tensor(m + ".weight") for m in mods]
        k = ws[0].shape[1]
        sizes = [w.shape[0] for w in ws]
        rows = fused_rows(sizes)
        w = torch.zeros(rows, k, dtype=ws[0].dtype)
        s = torch.ones(-(-rows // BLOCK), -(-k // BLOCK), dtype=torch.float32)
        for (off, n), wp, m in zip(fused_segments(sizes), ws, mods):
            w[off : off + n] = wp
            sp = self.ckpt.weight_scale_grid(m)
            s[off // BLOCK : off // BLOCK + sp.shape[0]] = sp
        return w, s

    def get(self, name: str, tp_rank: int = 0, stage: int | None = None) -> torch.Tensor:
        if name in GLOBAL_TENSORS:
            return self.ckpt.tensor(self.ckpt.text_key(GLOBAL_TENSORS[name]))
        m = _LAYER_RE.match(name)
        if m:
            layer, rest = int(m.group(1)), name[m.end() :]
            if rest in LAYER_TENSORS:
                return self.ckpt.tensor(self.ckpt.layer_key(layer, LAYER_TENSORS[rest]))
            base, _, suffix = rest.rpartition(".")
            if trt_layer(layer, base) in self._linears and suffix in ("weight", SCALE_SUFFIX):
                w, s = self._fused(layer, self._linears[trt_layer(layer, base)][1])
                return w if suffix == "weight" else s
        raise CheckpointError(str(self.path), name, "a tensor the name table maps", "no mapping")

    def checkpoint_kv_scales(self, layer: int) -> KVScales | None:
        s = self.ckpt.kv_scales(layer)
        return KVScales(*s) if s is not None else None

    def modelopt_version(self) -> str | None:
        return self.ckpt.modelopt_version


def open_weights(path: str | Path) -> WeightSource:
    """A converted checkpoint (config.json has the `gemma4` key) or a ModelOpt export."""
    cfg = load_json(Path(path) / "config.json")
    return ConvertedCheckpoint(path) if "gemma4" in cfg else ModelOptExport(path)


def iter_linear_names(spec: Gemma4Spec, layer: int) -> Iterator[tuple[str, Linear]]:
    """(TRT-LLM base name, Linear) of one layer's quantized linears."""
    for lin in layer_linears(spec.has_v_proj(layer), spec.is_global(layer)):
        yield trt_layer(layer, lin.trt_name), lin
