"""The assistant drafter (gemma4_unified_assistant) in our checkpoint format, wired to the target's KV layers.

Layout: a `drafter/` directory beside the target's rank files, holding `config.json` (our key `gemma4_drafter`:
the DrafterSpec, the target layers it reads, the weight format) and `rank0.safetensors`. The drafter is small
(0.85 GB in BF16 on the 12B, 268M of which is its tied 1024-wide LM head), so every TP rank reads the same file:
it is replicated, not sharded. The target's `config.json` records the wiring under `gemma4.drafter` and the
DrafterSpec under `gemma4.spec.drafter` (`attach_drafter`).

What happens to each tensor (research/gemma4_arch.md §4.1):
  * q_proj, o_proj, gate|up (fused by rows), down_proj, pre_projection, post_projection: linears, kept in BF16
    (`weights="bf16"`) or quantized to our 128x128 block-FP8 format (`weights="block_fp8"`, the target's layout:
    fp8 [N, K] + fp32 `weights_block_scaling_factor` [⌈N/128⌉, ⌈K/128⌉], w ≈ q·s);
  * norms, q_norm, layer_scalar, the final norm and the embedding (= the tied LM head): BF16 as they are;
  * there is no k_proj / v_proj / k_norm: every drafter layer reads the target's cache. The drafter's sliding
    layers read the target's last sliding layer, its global layer the target's last global layer
    (spec.drafter_target_layers: 46 and 47 on the 12B).
The drafter's token embedding is the TARGET's (`E_target[tok] · √H_target`); its own `embed_tokens` is only the
LM head.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from trt_gemma4.checkpoint.names import BLOCK, SCALE_SUFFIX, fused_rows, fused_segments
from trt_gemma4.checkpoint.safetensors_writer import PlannedTensor, SafetensorsWriter
from trt_gemma4.errors import CheckpointError
from trt_gemma4.fsutil import write_text_atomic
from trt_gemma4.spec import (
    GLOBAL,
    SLIDING,
    DrafterSpec,
    Gemma4Spec,
    check_drafter_fits,
    drafter_from_config,
    load_json,
)

FORMAT_VERSION = 1
DRAFTER_DIR = "drafter"
DRAFTER_FILE = "rank0.safetensors"
WEIGHT_FORMATS = ("bf16", "block_fp8")
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0

# ---- the name table: our name -> HF name(s) ------------------------------------------------------------------

PREFIX = "drafter."
EMBEDDING = PREFIX + "vocab_embedding.weight"  # the drafter's own tied LM head [vocab, hidden_d]
FINAL_NORM = PREFIX + "ln_f.weight"
PRE_PROJECTION = PREFIX + "pre_projection"  # linear [hidden_d, 2 * hidden_t]
POST_PROJECTION = PREFIX + "post_projection"  # linear [hidden_t, hidden_d]

GLOBAL_TENSORS: dict[str, str] = {
    EMBEDDING: "model.embed_tokens.weight",
    FINAL_NORM: "model.norm.weight",
}
GLOBAL_LINEARS: dict[str, tuple[str, ...]] = {
    PRE_PROJECTION: ("pre_projection",),
    POST_PROJECTION: ("post_projection",),
}
# Per layer, relative to `drafter.layers.{i}.` / `model.layers.{i}.`.
LAYER_TENSORS: dict[str, str] = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_layernorm.weight": "post_attention_layernorm.weight",
    "pre_feedforward_layernorm.weight": "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight": "post_feedforward_layernorm.weight",
    "attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "layer_scalar": "layer_scalar",
}
LAYER_LINEARS: dict[str, tuple[str, ...]] = {
    "attention.q": ("self_attn.q_proj",),  # q only: K/V are the target's
    "attention.dense": ("self_attn.o_proj",),
    "mlp.fc": ("mlp.gate_proj", "mlp.up_proj"),  # fused gate|up at 128-row aligned offsets, as the target's
    "mlp.proj": ("mlp.down_proj",),
}
# HF tensors that a drafter we can run must not have (they would mean a different architecture).
_UNSUPPORTED = ("masked_embedding.centroids.weight", "masked_embedding.token_ordering")


def layer_name(i: int, rel: str) -> str:
    return f"{PREFIX}layers.{i}.{rel}"


def linear_sizes(d: DrafterSpec, name: str) -> list[int]:
    """Output rows of each fused component of drafter linear `name` (for ops.linear and the fused layout)."""
    if name == PRE_PROJECTION:
        return [d.hidden_size]
    if name == POST_PROJECTION:
        return [d.backbone_hidden_size]
    rel = name.split(".", 3)[3]
    i = int(name.split(".")[2])
    return {
        "attention.q": [d.q_size(i)],
        "attention.dense": [d.hidden_size],
        "mlp.fc": [d.intermediate_size, d.intermediate_size],
        "mlp.proj": [d.hidden_size],
    }[rel]


def iter_linears(d: DrafterSpec) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(our linear name, HF module names) of every drafter linear, in file order."""
    yield PRE_PROJECTION, GLOBAL_LINEARS[PRE_PROJECTION]
    for i in range(d.num_layers):
        for rel, parts in LAYER_LINEARS.items():
            yield layer_name(i, rel), tuple(f"model.layers.{i}.{p}" for p in parts)
    yield POST_PROJECTION, GLOBAL_LINEARS[POST_PROJECTION]


def iter_plain(d: DrafterSpec) -> Iterator[tuple[str, str]]:
    """(our name, HF name) of every tensor copied as it is."""
    yield from GLOBAL_TENSORS.items()
    for i in range(d.num_layers):
        for rel, hf in LAYER_TENSORS.items():
            yield layer_name(i, rel), f"model.layers.{i}.{hf}"


# ---- block-FP8 quantization ------------------------------------------------------------------------------------


def quantize_block_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (q fp8 e4m3 [N, K], s fp32 [⌈N/128⌉, ⌈K/128⌉]) with w ≈ q · s per 128x128 block.

    s = amax(block) / 448 (1.0 for an all-zero block), the same convention as ModelOpt's FP8_2D_BLOCKWISE export,
    so the torch backend and the BlockFp8WoGemm plugin read drafter and target linears the same way.
    """
    n, k = w.shape
    nb, kb = -(-n // BLOCK), -(-k // BLOCK)
    wf = torch.zeros(nb * BLOCK, kb * BLOCK, dtype=torch.float32)
    wf[:n, :k] = w.float()
    blocks = wf.view(nb, BLOCK, kb, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))
    s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / s[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(nb * BLOCK, kb * BLOCK)[:n, :k].contiguous(), s


def dequantize_block_fp8(q: torch.Tensor, s: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of quantize_block_fp8 (q · s per block) in `dtype`."""
    n, k = q.shape
    full = s.float().repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)[:, :k]
    return (q.float() * full).to(dtype)


# ---- the source: an HF assistant checkpoint --------------------------------------------------------------------


class AssistantSource:
    """A gemma4_unified_assistant checkpoint directory (transformers save_pretrained), read lazily."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        cfg_file = self.path / "config.json"
        if not self.path.is_dir():
            raise CheckpointError(str(self.path), None, "the assistant drafter's directory", "no such directory")
        self.config: dict[str, Any] = load_json(cfg_file)
        self.spec = drafter_from_config(self.config, str(cfg_file))
        if self.config.get("use_ordered_embeddings"):
            raise CheckpointError(
                str(cfg_file),
                None,
                "use_ordered_embeddings false (a dense LM head, as on the 12B's assistant)",
                "true (the centroid-masked head of the E2B/E4B assistants, not supported)",
            )
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(str(self.path), None, "model.safetensors (or shards)", "no .safetensors file")
        self._where: dict[str, Any] = {}
        self._file: dict[str, Path] = {}
        for f in files:
            h = safe_open(str(f), "pt")
            for key in h.keys():
                self._where[key] = h
                self._file[key] = f
        for key in _UNSUPPORTED:
            if key in self._where:
                raise CheckpointError(str(self._file[key]), key, "no centroid-masked head", "one")

    def has(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._slice(key).get_shape())

    def _slice(self, key: str) -> Any:
        h = self._where.get(key)
        if h is None:
            raise CheckpointError(str(self.path), key, "the tensor", "it is missing")
        return h.get_slice(key)

    def tensor(self, key: str) -> torch.Tensor:
        """A float tensor of the source, in its stored dtype."""
        t = self._slice(key)[:]
        if not t.is_floating_point() or t.dtype == FP8:
            raise CheckpointError(
                str(self._file[key]),
                key,
                "a floating-point (bf16/fp16/fp32) tensor",
                str(t.dtype).removeprefix("torch."),
            )
        return t


def _expected_shapes(spec: Gemma4Spec, d: DrafterSpec) -> dict[str, tuple[int, ...]]:
    """HF tensor -> shape the drafter must have to run against `spec`."""
    H, Hd, Idim = spec.hidden_size, d.hidden_size, d.intermediate_size
    out: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (d.vocab_size, Hd),
        "model.norm.weight": (Hd,),
        "pre_projection.weight": (Hd, 2 * H),
        "post_projection.weight": (H, Hd),
    }
    for i in range(d.num_layers):
        p = f"model.layers.{i}."
        q = d.q_size(i)
        out |= {
            p + "self_attn.q_proj.weight": (q, Hd),
            p + "self_attn.q_norm.weight": (d.head_dim(i),),
            p + "self_attn.o_proj.weight": (Hd, q),
            p + "mlp.gate_proj.weight": (Idim, Hd),
            p + "mlp.up_proj.weight": (Idim, Hd),
            p + "mlp.down_proj.weight": (Hd, Idim),
            p + "layer_scalar": (1,),
        }
        for n in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ):
            out[p + n + ".weight"] = (Hd,)
    return out


def check_drafter(spec: Gemma4Spec, src: AssistantSource) -> None:
    """The drafter fits the target (check_drafter_fits) and every tensor it needs is there with its shape."""
    cfg_file = str(src.path / "config.json")
    check_drafter_fits(spec, src.spec, cfg_file)
    d = src.spec
    if SLIDING in d.layer_types and not spec.sliding_layers:
        raise CheckpointError(cfg_file, None, "a target with a sliding layer for the drafter's sliding layers", "none")
    if GLOBAL in d.layer_types and not spec.global_layers:
        raise CheckpointError(cfg_file, None, "a target with a global layer for the drafter's global layer", "none")
    if d.sliding_window != spec.sliding_window:
        raise CheckpointError(
            cfg_file, None, f"sliding_window {spec.sliding_window} (the target's)", str(d.sliding_window)
        )
    # The drafter's queries are rotated like the target's keys they meet (the graph uses the target's RoPE).
    for name, found, expected in (
        ("sliding rope_theta", d.rope_theta_sliding, spec.rope_theta_sliding),
        ("global rope_theta", d.rope_theta_global, spec.rope_theta_global),
        ("global partial_rotary_factor", d.global_partial_rotary_factor, spec.global_partial_rotary_factor),
    ):
        if found != expected:
            raise CheckpointError(cfg_file, None, f"{name} {expected} (the target's)", str(found))
    if d.num_attention_heads % spec.sliding_kv_heads or d.num_attention_heads % spec.global_kv_heads:
        raise CheckpointError(
            cfg_file,
            None,
            f"num_attention_heads divisible by the target's KV heads "
            f"({spec.sliding_kv_heads} sliding, {spec.global_kv_heads} global)",
            str(d.num_attention_heads),
        )
    for key, shape in _expected_shapes(spec, d).items():
        if not src.has(key):
            raise CheckpointError(str(src.path), key, f"the tensor, shape {list(shape)}", "it is missing")
        found = src.shape(key)
        if found != shape:
            raise CheckpointError(str(src.path), key, f"shape {list(shape)}", str(list(found)))


# ---- writing ---------------------------------------------------------------------------------------------------


def wiring(spec: Gemma4Spec, d: DrafterSpec) -> dict[str, Any]:
    """Which target layer each drafter layer reads (read-only), as recorded in the configs."""
    targets = spec.drafter_target_layers
    return {
        "target_layers": {SLIDING: targets[SLIDING], GLOBAL: targets[GLOBAL]},
        "layer_reads": [targets[t] for t in d.layer_types],
        "embedding": "target",  # E_target[tok] · √hidden_target
        "query_position": "last cached target position",
    }


def _plan(spec: Gemma4Spec, d: DrafterSpec, src: AssistantSource, weights: str) -> list[tuple[PlannedTensor, Any]]:
    """(planned tensor, producer) for the file, in order; a producer returns the tensor when called."""
    out: list[tuple[PlannedTensor, Any]] = []
    for name, hf in iter_plain(d):
        out.append(
            (PlannedTensor(name, torch.bfloat16, src.shape(hf)), lambda hf=hf: src.tensor(hf).to(torch.bfloat16))
        )
    for name, parts in iter_linears(d):
        ws = [f"{p}.weight" for p in parts]
        sizes = [src.shape(w)[0] for w in ws]
        k = src.shape(ws[0])[1]
        rows = fused_rows(sizes)

        def fused(ws: list[str] = ws, sizes: list[int] = sizes, rows: int = rows, k: int = k) -> torch.Tensor:
            w = torch.zeros(rows, k, dtype=torch.float32)
            for (off, n), key in zip(fused_segments(sizes), ws):
                w[off : off + n] = src.tensor(key).float()
            return w

        if weights == "bf16":
            out.append(
                (PlannedTensor(f"{name}.weight", torch.bfloat16, (rows, k)), lambda f=fused: f().to(torch.bfloat16))
            )
        else:
            grid = (-(-rows // BLOCK), -(-k // BLOCK))
            held: dict[str, torch.Tensor] = {}  # the weight is written first, its scales right after

            def weight(f: Any = fused, held: dict[str, torch.Tensor] = held) -> torch.Tensor:
                q, held["scale"] = quantize_block_fp8(f())
                return q

            out.append((PlannedTensor(f"{name}.weight", FP8, (rows, k)), weight))
            out.append(
                (PlannedTensor(f"{name}.{SCALE_SUFFIX}", torch.float32, grid), lambda held=held: held.pop("scale"))
            )
    return out


def drafter_config(spec: Gemma4Spec, d: DrafterSpec, weights: str, source: Path) -> dict[str, Any]:
    """config.json of the converted drafter directory."""
    return {
        "architecture": "Gemma4AssistantDrafter",
        "dtype": "bfloat16",
        "gemma4_drafter": {
            "format_version": FORMAT_VERSION,
            "spec": dataclasses.asdict(d),
            "weights": weights,
            "block_fp8": {"block": BLOCK, "weight_layout": "nk"} if weights == "block_fp8" else None,
            "lm_head": "tied",
            "wiring": wiring(spec, d),
            "source": {"path": str(source.resolve())},
        },
    }


def convert_drafter(src: str | Path, out: str | Path, spec: Gemma4Spec, weights: str = "bf16") -> dict[str, Any]:
    """Convert the assistant checkpoint `src` into the drafter directory `out` (config.json + rank0.safetensors),
    for the target described by `spec`. Checks first that it fits (clear errors name file, tensor, expected and
    found); writes atomically. Returns the target-config record (`gemma4.drafter`): wiring, path, weights."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"drafter weights must be one of {WEIGHT_FORMATS}, not {weights!r}")
    source = AssistantSource(src)
    check_drafter(spec, source)
    d = source.spec
    out = Path(out)
    if out.exists():
        raise CheckpointError(str(out), None, "a path that does not exist yet (the drafter's output)", "it exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        plan = _plan(spec, d, source, weights)
        with SafetensorsWriter(tmp / DRAFTER_FILE, [p for p, _ in plan], {"format": "pt"}) as w:
            for p, produce in plan:
                w.write(p.name, produce())
        (tmp / "config.json").write_text(json.dumps(drafter_config(spec, d, weights, source.path), indent=2) + "\n")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": out.name, "weights": weights, **wiring(spec, d)}


def attach_drafter(ckpt_dir: str | Path, src: str | Path, weights: str = "bf16") -> DrafterSpec:
    """`trt-gemma4 convert ... --drafter SRC`: convert SRC into CKPT_DIR/drafter and record it in the target's
    config.json (`gemma4.spec.drafter` and `gemma4.drafter`). Returns the drafter's spec."""
    ckpt_dir = Path(ckpt_dir)
    cfg_file = ckpt_dir / "config.json"
    cfg = load_json(cfg_file)
    g = cfg.get("gemma4")
    if not isinstance(g, dict) or "spec" not in g:
        raise CheckpointError(
            str(cfg_file), None, "a converted checkpoint (a 'gemma4' key; trt-gemma4 convert)", "none"
        )
    if g.get("drafter"):
        raise CheckpointError(str(cfg_file), None, "a checkpoint without a drafter", f"drafter {g['drafter']}")
    spec = Gemma4Spec.from_dict(g["spec"])
    record = convert_drafter(src, ckpt_dir / DRAFTER_DIR, spec, weights)
    d = load_drafter(ckpt_dir / DRAFTER_DIR).spec
    g["spec"] = spec.with_drafter(d).to_dict()
    g["drafter"] = record
    write_text_atomic(cfg_file, json.dumps(cfg, indent=2) + "\n")
    return d


# ---- reading back ----------------------------------------------------------------------------------------------


@dataclass
class DrafterCheckpoint:
    """A converted drafter directory: its spec, the target wiring and lazily read tensors."""

    path: Path
    spec: DrafterSpec
    weights: str
    target_layers: dict[str, int]
    _file: Any

    def get(self, name: str) -> torch.Tensor:
        try:
            return self._file.get_tensor(name)
        except Exception:  # safetensors raises its own error type for a missing key
            if name not in self.keys():
                raise CheckpointError(str(self.path / DRAFTER_FILE), name, "the tensor", "it is missing") from None
            raise

    def keys(self) -> set[str]:
        return set(self._file.keys())

    def is_quantized(self, linear: str) -> bool:
        return f"{linear}.{SCALE_SUFFIX}" in self.keys()

    def dense(self, linear: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight of drafter linear `linear` (fused rows) as `dtype`, dequantized if block-FP8."""
        w = self.get(f"{linear}.weight")
        if self.is_quantized(linear):
            return dequantize_block_fp8(w, self.get(f"{linear}.{SCALE_SUFFIX}"), dtype)
        return w.to(dtype)


def load_drafter(path: str | Path, spec: Gemma4Spec | None = None) -> DrafterCheckpoint:
    """Open a converted drafter directory; with `spec`, check that it is wired to that target."""
    path = Path(path)
    cfg_file = path / "config.json"
    cfg = load_json(cfg_file)
    g = cfg.get("gemma4_drafter")
    if not isinstance(g, dict) or "spec" not in g:
        raise CheckpointError(str(cfg_file), None, "a converted drafter (a 'gemma4_drafter' key)", "none")
    raw = dict(g["spec"])
    raw["layer_types"] = tuple(raw["layer_types"])
    d = DrafterSpec(**raw)
    targets = {k: int(v) for k, v in g["wiring"]["target_layers"].items()}
    if spec is not None:
        check_drafter_fits(spec, d, str(cfg_file))
        if targets != spec.drafter_target_layers:
            raise CheckpointError(str(cfg_file), None, f"target layers {spec.drafter_target_layers}", str(targets))
    f = path / DRAFTER_FILE
    if not f.exists():
        raise CheckpointError(str(f), None, "the drafter's tensors", "no such file")
    return DrafterCheckpoint(path, d, str(g["weights"]), targets, safe_open(str(f), "pt"))


def find_drafter(ckpt_dir: str | Path) -> Path | None:
    """The drafter directory a converted target checkpoint records (config.json `gemma4.drafter.path`), if any."""
    cfg = load_json(Path(ckpt_dir) / "config.json")
    rec = (cfg.get("gemma4") or {}).get("drafter")
    return Path(ckpt_dir) / rec["path"] if rec else None
