"""ModelOpt fp8_pb_wo export -> our TRT-LLM checkpoint (docs/checkpoint_format.md), walking names.py's table.

What happens to each tensor:
  * norms, layer_scalar, final norm: copied (bf16); the embedding (2 GB on the 12B) in chunks of rows;
  * quantized linears: fp8 bytes and block scales copied as they are (no requantization). q|k|v and gate|up are
    fused by rows with each component at a 128-row aligned offset (names.fused_segments), so a 128x128 scale block
    never straddles two components;
  * TP: column-parallel linears split their rows, row-parallel ones their input columns; a split must never cut a
    128-block (one scale per block), and the global layer's single KV head is replicated on every rank;
  * PP: each stage holds its layers (global indices); the first stage holds the embedding, the last ln_f and the
    embedding again (the LM head is tied);
  * KV-cache scales: 1.0 by default, or the export's k_scale / v_scale with kv_scales='checkpoint'.

Memory stays flat in the model size: every rank file's header is planned first, then tensors are streamed in one
component (or one chunk of rows) at a time. The output appears atomically: a temp dir next to OUT is renamed at
the end, and removed on any failure.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trt_gemma4 import __version__
from trt_gemma4.checkpoint import names
from trt_gemma4.checkpoint.modelopt import ModelOptCheckpoint, num_blocks
from trt_gemma4.checkpoint.safetensors_writer import PlannedTensor, SafetensorsWriter
from trt_gemma4.checkpoint.trtllm import ARCHITECTURE, FORMAT_VERSION, component_sizes, pp_layers, rank_file
from trt_gemma4.errors import CheckpointError, Gemma4Error
from trt_gemma4.spec import Gemma4Spec

KV_SCALE_CHOICES = ("identity", "checkpoint")
CHUNK_BYTES = 64 << 20  # rows of a large copied tensor (the embedding) read and written per step
FP8 = torch.float8_e4m3fn


class ShardingError(Gemma4Error):
    """The requested TP/PP mapping cannot be honoured for this model."""


# ---- mapping -------------------------------------------------------------------------------------------------


def tp_problem(spec: Gemma4Spec, tp: int) -> str | None:
    """Why tensor parallelism `tp` cannot be used on this model, or None if it can."""
    if tp < 1:
        return "TP size must be at least 1"
    if tp == 1:
        return None
    if spec.num_attention_heads % tp:
        return f"num_attention_heads {spec.num_attention_heads} is not divisible by {tp}"
    if spec.sliding_layers and spec.sliding_kv_heads % tp:
        return f"the {spec.sliding_kv_heads} KV heads of sliding layers are not divisible by {tp}"
    for i in sorted({layers[0] for layers in (spec.sliding_layers, spec.global_layers) if layers}):
        for lin in names.layer_linears(spec.has_v_proj(i), spec.is_global(i)):
            if lin.tp_dim is None:
                continue
            full = component_sizes(spec, i, lin, 1)
            for part, n in zip(lin.hf_parts, full):
                if part in lin.replicated:
                    continue
                what = "rows" if lin.tp_dim == 0 else "input columns"
                if n % tp or (n // tp) % names.BLOCK:
                    per = f"{n / tp:g}"
                    return (
                        f"{spec.layer_types[i]} layer {i}: {part} has {n} {what}; split {tp} ways that is {per} "
                        f"per rank, not a multiple of {names.BLOCK} (each {names.BLOCK}x{names.BLOCK} block has "
                        "one FP8 scale, so a block cannot be divided between GPUs)"
                    )
    return None


def working_tp_sizes(spec: Gemma4Spec, limit: int = 64) -> list[int]:
    """TP sizes up to `limit` that shard this model without cutting a 128-block."""
    return [t for t in range(1, limit + 1) if tp_problem(spec, t) is None]


def check_mapping(spec: Gemma4Spec, tp: int, pp: int) -> None:
    """Raise ShardingError (with the reason and the sizes that work) if tp x pp cannot be honoured."""
    problem = tp_problem(spec, tp)
    if problem is not None:
        ok = ", ".join(str(t) for t in working_tp_sizes(spec))
        raise ShardingError(f"--tp {tp} cannot be honoured: {problem}. TP sizes that work for this model: {ok}")
    if not 1 <= pp <= spec.num_layers:
        raise ShardingError(f"--pp {pp} cannot be honoured: it must be between 1 and the {spec.num_layers} layers")


# ---- the plan: every output tensor, its ranks and shapes, and how to fill it -------------------------------------

Writers = dict[int, SafetensorsWriter]


@dataclass
class OutTensor:
    """One output tensor name, the ranks that hold it (with their shapes), and the function that streams it."""

    name: str
    dtype: torch.dtype
    shapes: dict[int, tuple[int, ...]]
    fill: Callable[[Writers], None]


@dataclass
class Plan:
    spec: Gemma4Spec
    tp: int
    pp: int
    kv_scales: str
    stage_layers: list[list[int]]
    tensors: list[OutTensor] = field(default_factory=list)

    def stage_ranks(self, stage: int) -> list[int]:
        return [stage * self.tp + t for t in range(self.tp)]

    def rank_plan(self, rank: int) -> list[PlannedTensor]:
        return [PlannedTensor(t.name, t.dtype, t.shapes[rank]) for t in self.tensors if rank in t.shapes]


def _copy_fill(ckpt: ModelOptCheckpoint, src: str, dst: str, ranks: list[int]) -> Callable[[Writers], None]:
    def fill(w: Writers) -> None:
        e = ckpt.entry(src)
        rows = e.shape[0]
        step = max(1, CHUNK_BYTES // max(1, e.nbytes // max(1, rows)))
        sl = ckpt.slice(src)
        for r0 in range(0, rows, step):
            chunk = sl[r0 : r0 + step].to(torch.bfloat16)
            for r in ranks:
                w[r].write(dst, chunk)

    return fill


def _fused_rows_fill(
    ckpt: ModelOptCheckpoint, mods: list[str], lin: names.Linear, sizes: list[int], dst: str, ranks: list[int]
) -> Callable[[Writers], None]:
    """Column-parallel (row-split) fused weight: each rank gets its rows of every component, 128-aligned."""

    def fill(w: Writers) -> None:
        segs = names.fused_segments(sizes)
        for ci, (mod, part) in enumerate(zip(mods, lin.hf_parts)):
            off, n = segs[ci]
            pad = (segs[ci + 1][0] - off - n) if ci + 1 < len(segs) else 0
            sl = ckpt.slice(f"{mod}.weight")
            k = ckpt.entry(f"{mod}.weight").shape[1]
            if part in lin.replicated or len(ranks) == 1:
                t = sl[:]
                for r in ranks:
                    w[r].write(dst, t)
            else:
                for tr, r in enumerate(ranks):
                    w[r].write(dst, sl[tr * n : (tr + 1) * n])
            for r in ranks:
                w[r].write_zeros(dst, pad * k)  # fp8 zeros: one byte each

    return fill


def _fused_scale_fill(
    ckpt: ModelOptCheckpoint, mods: list[str], lin: names.Linear, sizes: list[int], dst: str, ranks: list[int]
) -> Callable[[Writers], None]:
    def fill(w: Writers) -> None:
        for mod, part, n in zip(mods, lin.hf_parts, sizes):
            grid = ckpt.weight_scale_grid(mod)
            nb = num_blocks(n)
            for tr, r in enumerate(ranks):
                rows = grid if part in lin.replicated or len(ranks) == 1 else grid[tr * nb : (tr + 1) * nb]
                w[r].write(dst, rows.contiguous())

    return fill


def _cols_fill(
    ckpt: ModelOptCheckpoint, mod: str, k: int, dst: str, ranks: list[int], scale: bool
) -> Callable[[Writers], None]:
    """Row-parallel weight (or its scales): each rank gets its slice of input columns."""

    def fill(w: Writers) -> None:
        if scale:
            grid = ckpt.weight_scale_grid(mod)
            kb = num_blocks(k)
            for tr, r in enumerate(ranks):
                w[r].write(dst, grid[:, tr * kb : (tr + 1) * kb].contiguous())
            return
        sl = ckpt.slice(f"{mod}.weight")
        for tr, r in enumerate(ranks):
            w[r].write(dst, sl[:, tr * k : (tr + 1) * k].contiguous())

    return fill


def _const_fill(value: float, dst: str, ranks: list[int]) -> Callable[[Writers], None]:
    def fill(w: Writers) -> None:
        t = torch.tensor([value], dtype=torch.float32)
        for r in ranks:
            w[r].write(dst, t)

    return fill


def _kv_scale_values(ckpt: ModelOptCheckpoint, layer: int, mode: str) -> tuple[float, float]:
    if mode == "identity":
        return 1.0, 1.0
    scales = ckpt.kv_scales(layer)
    assert scales is not None  # checked by _check_kv_scale_choice
    return scales


def _check_kv_scale_choice(ckpt: ModelOptCheckpoint, mode: str) -> None:
    if mode not in KV_SCALE_CHOICES:
        raise Gemma4Error(f"--kv-scales {mode!r}: choose one of {', '.join(KV_SCALE_CHOICES)}")
    if mode == "identity":
        return
    if ckpt.kv_scales(0) is None:
        raise CheckpointError(
            ckpt.tensor_file,
            ckpt.layer_key(0, names.HF_K_SCALE),
            "KV-cache scales for --kv-scales checkpoint",
            "none in the export (exported with fp8_cast?)",
            "use --kv-scales identity",
        )
    if not ckpt.kv_scales_version_ok:
        raise CheckpointError(
            ckpt.quant.file,
            None,
            "an export by ModelOpt >= 0.27 for --kv-scales checkpoint",
            f"ModelOpt version {ckpt.modelopt_version!r}",
            "older versions measured K/V before k_norm and RoPE, not what the cache holds; use --kv-scales identity",
        )


def make_plan(ckpt: ModelOptCheckpoint, tp: int = 1, pp: int = 1, kv_scales: str = "identity") -> Plan:
    """Every output tensor with its per-rank shape, in file order (headers are written from this)."""
    spec = ckpt.spec
    plan = Plan(spec=spec, tp=tp, pp=pp, kv_scales=kv_scales, stage_layers=pp_layers(spec.num_layers, pp))
    H, V = spec.hidden_size, spec.vocab_size
    first, last = plan.stage_ranks(0), plan.stage_ranks(pp - 1)
    emb_ranks = sorted(set(first) | set(last))
    add = plan.tensors.append

    emb = "transformer.vocab_embedding.weight"
    add(
        OutTensor(
            emb,
            torch.bfloat16,
            dict.fromkeys(emb_ranks, (V, H)),
            _copy_fill(ckpt, ckpt.text_key(names.GLOBAL_TENSORS[emb]), emb, emb_ranks),
        )
    )
    for stage, layers in enumerate(plan.stage_layers):
        ranks = plan.stage_ranks(stage)
        for i in layers:
            hd = spec.head_dim(i)
            for trt, hf in names.LAYER_TENSORS.items():
                shape = (1,) if hf == "layer_scalar" else (hd,) if hf.startswith("self_attn.") else (H,)
                dst = names.trt_layer(i, trt)
                add(
                    OutTensor(
                        dst,
                        torch.bfloat16,
                        dict.fromkeys(ranks, shape),
                        _copy_fill(ckpt, ckpt.layer_key(i, hf), dst, ranks),
                    )
                )
            for lin in names.layer_linears(spec.has_v_proj(i), spec.is_global(i)):
                mods = [ckpt.layer_key(i, p) for p in lin.hf_parts]
                sizes = component_sizes(spec, i, lin, tp)
                w_name = names.trt_layer(i, f"{lin.trt_name}.weight")
                s_name = names.trt_layer(i, f"{lin.trt_name}.{names.SCALE_SUFFIX}")
                if lin.tp_dim == 1:
                    (k,) = sizes
                    n = ckpt.entry(f"{mods[0]}.weight").shape[0]
                    add(
                        OutTensor(
                            w_name,
                            FP8,
                            dict.fromkeys(ranks, (n, k)),
                            _cols_fill(ckpt, mods[0], k, w_name, ranks, scale=False),
                        )
                    )
                    add(
                        OutTensor(
                            s_name,
                            torch.float32,
                            dict.fromkeys(ranks, (num_blocks(n), num_blocks(k))),
                            _cols_fill(ckpt, mods[0], k, s_name, ranks, scale=True),
                        )
                    )
                else:
                    rows = names.fused_rows(sizes)
                    add(
                        OutTensor(
                            w_name,
                            FP8,
                            dict.fromkeys(ranks, (rows, H)),
                            _fused_rows_fill(ckpt, mods, lin, sizes, w_name, ranks),
                        )
                    )
                    add(
                        OutTensor(
                            s_name,
                            torch.float32,
                            dict.fromkeys(ranks, (num_blocks(rows), num_blocks(H))),
                            _fused_scale_fill(ckpt, mods, lin, sizes, s_name, ranks),
                        )
                    )
            k_s, v_s = _kv_scale_values(ckpt, i, kv_scales)
            merged = names.trt_layer(i, names.KV_MERGED_SCALE)
            add(OutTensor(merged, torch.float32, dict.fromkeys(ranks, (1,)), _const_fill(max(k_s, v_s), merged, ranks)))
            for trt, value in zip(names.KV_SCALE_TENSORS, (k_s, v_s)):
                dst = names.trt_layer(i, trt)
                add(OutTensor(dst, torch.float32, dict.fromkeys(ranks, (1,)), _const_fill(value, dst, ranks)))
    ln_f = "transformer.ln_f.weight"
    add(
        OutTensor(
            ln_f,
            torch.bfloat16,
            dict.fromkeys(last, (H,)),
            _copy_fill(ckpt, ckpt.text_key(names.GLOBAL_TENSORS[ln_f]), ln_f, last),
        )
    )
    return plan


# ---- config and report ---------------------------------------------------------------------------------------


def trtllm_config(ckpt: ModelOptCheckpoint, plan: Plan) -> dict[str, Any]:
    """config.json of the converted checkpoint (docs/checkpoint_format.md)."""
    s = plan.spec
    return {
        "architecture": ARCHITECTURE,
        "dtype": "bfloat16",
        "logits_dtype": "float32",
        "vocab_size": s.vocab_size,
        "hidden_size": s.hidden_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_attention_heads,
        "intermediate_size": s.intermediate_size,
        "num_key_value_heads": s.sliding_kv_heads,
        "head_size": s.kv_head_size,
        "num_kv_heads_per_layer": s.num_kv_heads_per_layer(plan.tp),
        "hidden_act": s.hidden_activation,
        "norm_epsilon": s.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": s.rope_theta_sliding,
        "max_position_embeddings": s.max_position_embeddings,
        "mapping": {"world_size": plan.tp * plan.pp, "tp_size": plan.tp, "pp_size": plan.pp},
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": "FP8"},
        "gemma4": {
            "format_version": FORMAT_VERSION,
            "spec": s.to_dict(),
            "block_fp8": {
                "block": names.BLOCK,
                "weight_layout": "nk",
                "layout_version": 1,
                "scale_rounding": "scale applied to fp32 block partial sums",
            },
            "kv_scales": plan.kv_scales,
            "lm_head": "tied",
            "pp_layers": plan.stage_layers,
            "source": {
                "path": str(ckpt.path.resolve()),
                "quant_algo": ckpt.quant_algo,
                "modelopt_version": ckpt.modelopt_version,
            },
        },
    }


def _versions() -> dict[str, str]:
    import numpy
    import safetensors

    return {
        "trt_gemma4": __version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
    }


def _report(ckpt: ModelOptCheckpoint, plan: Plan, rank_bytes: list[int], seconds: float) -> dict[str, Any]:
    ranks = []
    for r, nbytes in enumerate(rank_bytes):
        pp_rank, tp_rank = divmod(r, plan.tp)
        ranks.append(
            {
                "rank": r,
                "tp_rank": tp_rank,
                "pp_rank": pp_rank,
                "file": rank_file(r),
                "bytes": nbytes,
                "tensors": len(plan.rank_plan(r)),
                "layers": plan.stage_layers[pp_rank],
            }
        )
    files = sorted({e.file for e in ckpt.entries.values()})
    return {
        "source": {
            "path": str(ckpt.path.resolve()),
            "files": [{"name": f.name, "bytes": f.stat().st_size} for f in files],
            "quant_algo": ckpt.quant_algo,
            "kv_cache_quant_algo": ckpt.kv_cache_quant_algo,
            "written_by": {"modelopt": ckpt.modelopt_version, "transformers": ckpt.config.get("transformers_version")},
        },
        "converter": _versions(),
        "choices": {
            "tp": plan.tp,
            "pp": plan.pp,
            "kv_scales": plan.kv_scales,
            "pp_layers": plan.stage_layers,
            "fused_alignment_rows": names.BLOCK,
            "lm_head": "tied (not stored)",
            "kv_scale_note": (
                "1.0 for every layer (the default)"
                if plan.kv_scales == "identity"
                else f"the export's k_scale/v_scale (ModelOpt {ckpt.modelopt_version})"
            ),
        },
        "ranks": ranks,
        "total_bytes": sum(rank_bytes),
        "seconds": round(seconds, 3),
    }


# ---- the conversion --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversionResult:
    out: Path
    report: dict[str, Any]


def convert(
    src: str | Path,
    out: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    kv_scales: str = "identity",
    progress: bool | None = False,
) -> ConversionResult:
    """Validate the export `src`, then write the TP x PP checkpoint to `out` atomically.

    progress: True shows a tqdm bar per tensor, None shows it only on a terminal, False never.
    """
    t0 = time.monotonic()
    out = Path(out)
    if out.exists():
        raise Gemma4Error(f"{out}: already exists; convert writes a new directory (remove it or choose another)")
    ckpt = ModelOptCheckpoint.open(src)
    try:
        ckpt.validate()
        check_mapping(ckpt.spec, tp, pp)
        _check_kv_scale_choice(ckpt, kv_scales)
        plan = make_plan(ckpt, tp, pp, kv_scales)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
        writers: Writers = {}
        try:
            for r in range(tp * pp):
                writers[r] = SafetensorsWriter(tmp / rank_file(r), plan.rank_plan(r), {"format": "pt"})
            _stream(plan, writers, progress)
            rank_bytes = [writers[r].close() for r in range(tp * pp)]
            (tmp / "config.json").write_text(json.dumps(trtllm_config(ckpt, plan), indent=2) + "\n")
            report = _report(ckpt, plan, rank_bytes, time.monotonic() - t0)
            (tmp / "conversion_report.json").write_text(json.dumps(report, indent=2) + "\n")
            os.rename(tmp, out)
        except BaseException:
            for w in writers.values():
                w.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        ckpt.close()
    return ConversionResult(out, report)


def _stream(plan: Plan, writers: Writers, progress: bool | None) -> None:
    from tqdm import tqdm

    disable = None if progress is None else not progress
    with tqdm(total=len(plan.tensors), unit="tensor", desc="convert", disable=disable) as bar:
        for t in plan.tensors:
            bar.set_postfix_str(t.name.removeprefix("transformer."), refresh=False)
            t.fill(writers)
            bar.update()
