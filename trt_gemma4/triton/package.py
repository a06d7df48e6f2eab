"""Write the Triton model repository (tensorrtllm_backend layout) from our templates in triton_repo/.

    OUT/
      model_repository/
        preprocessing/      chat template + tokenizer (python; gemma4_text.py beside model.py)
        tensorrt_llm/       engine: TensorRT-LLM C++ backend | reference: python model running the torch backend
        postprocessing/     detokenizer (python)
        ensemble/           preprocessing -> tensorrt_llm -> postprocessing
        tensorrt_llm_bls/   the same request in one python model, with incremental detokenization
      tokenizer/            the checkpoint's tokenizer.json, tokenizer_config.json, generation_config.json, ...
      launch_triton.sh      starts tritonserver; preloads our TensorRT plugin library for the engine variant
      package.json          what was filled in, and from where

Every config.pbtxt is filled from the serving facts (window list, KV fraction, decoupled streaming, batch and
sequence limits), parsed against Triton's schema and the ensemble wiring is checked (validate.py) before the
repository is moved into place.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trt_gemma4.errors import Gemma4Error
from trt_gemma4.fsutil import replace_dir
from trt_gemma4.triton.validate import parse_config, validate_repository

MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls")
VARIANTS = ("engine", "reference")
TEXT_MODULE = "gemma4_text.py"  # trt_gemma4/triton/text.py, copied beside the python models that need it
TEXT_USERS = ("preprocessing", "postprocessing", "tensorrt_llm_bls")
UNSET = object()  # a template parameter with this value is removed from the config


class PackageError(Gemma4Error):
    """The repository cannot be written from these inputs; the message says which input and why."""


def templates_dir() -> Path:
    """triton_repo/: $TRT_GEMMA4_TRITON_TEMPLATES, the source checkout, or <prefix>/share/trt-gemma4/triton_repo."""
    candidates = []
    if os.environ.get("TRT_GEMMA4_TRITON_TEMPLATES"):
        candidates.append(Path(os.environ["TRT_GEMMA4_TRITON_TEMPLATES"]))
    candidates.append(Path(__file__).resolve().parents[2] / "triton_repo")
    candidates.append(Path(sys.prefix) / "share" / "trt-gemma4" / "triton_repo")
    for c in candidates:
        if (c / "ensemble" / "config.pbtxt").is_file():
            return c
    raise PackageError(
        "the Triton templates (triton_repo/) were not found; looked in: "
        + ", ".join(str(c) for c in candidates)
        + " (set TRT_GEMMA4_TRITON_TEMPLATES to the triton_repo directory of the source tree)"
    )


@dataclass(frozen=True)
class ServingPlan:
    """The numbers and paths the repository is filled with."""

    variant: str
    attention_windows: list[int]  # TensorRT-LLM's max_attention_window_size, one entry per layer
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    kv_cache_free_gpu_mem_fraction: float
    decoupled: bool
    tokenizer_dir: str
    checkpoint_dir: str | None  # reference: the converted checkpoint the torch backend loads
    engine_dir: str | None  # engine: the build's output directory (engine/, plugins/) as the server sees it
    plugin_library: str | None  # engine: our TensorRT plugin library, preloaded by launch_triton.sh
    world_size: int = 1
    enable_kv_cache_reuse: bool = False
    enable_chunked_context: bool = False
    max_queue_delay_microseconds: int = 0
    max_queue_size: int = 0
    python_instances: int = 1
    source: str = ""  # what the numbers came from
    notes: list[str] = field(default_factory=list)  # things the user should know (printed by the command)


def _tokenizer_source(candidates: list[Path], given: str | Path | None) -> Path:
    if given is not None:
        p = Path(given)
        if not (p / "tokenizer.json").is_file():
            raise PackageError(f"{p}: no tokenizer.json (--tokenizer must be the checkpoint's tokenizer directory)")
        return p
    for p in candidates:
        if (p / "tokenizer.json").is_file():
            return p
    raise PackageError(
        f"no tokenizer.json in {' or '.join(str(p) for p in candidates)}: pass --tokenizer with the directory of "
        "the ModelOpt export (it holds tokenizer.json, tokenizer_config.json and generation_config.json)"
    )


def _limit(name: str, asked: int | None, built: int | None, default: int) -> int:
    """A limit the engine was built with may be lowered for serving, never raised."""
    if asked is None:
        return built if built is not None else default
    if asked < 1:
        raise PackageError(f"{name} must be at least 1, got {asked}")
    if built is not None and asked > built:
        raise PackageError(f"{name} {asked} exceeds the plan's {built} (the engine is built for at most that)")
    return asked


def serving_plan(
    src: str | Path,
    variant: str,
    *,
    plan_file: str | Path | None = None,
    tokenizer: str | Path | None = None,
    engine_dir: str | None = None,
    plugin_library: str | None = None,
    max_batch_size: int | None = None,
    max_input_len: int | None = None,
    max_seq_len: int | None = None,
    kv_cache_free_gpu_mem_fraction: float | None = None,
    decoupled: bool = True,
) -> ServingPlan:
    """Serving facts for `src`: an engine directory (holding plan.json) or a converted checkpoint (config.json with
    the `gemma4` key), with an optional plan. Limits come from the plan and may only be lowered."""
    from trt_gemma4.plan import Plan, window_list
    from trt_gemma4.plugins import LIBRARY_NAME

    if variant not in VARIANTS:
        raise PackageError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    src = Path(src)
    if not src.is_dir():
        raise PackageError(f"{src}: no such directory (expected an engine directory or a converted checkpoint)")
    tok_candidates = [src]
    notes: list[str] = []
    checkpoint: Path | None = src
    if (src / "plan.json").is_file():  # an engine directory written by `trt-gemma4 build` (build.py)
        plan = Plan.load(plan_file or src / "plan.json")
        engine_dir = engine_dir or str(src.resolve())
        checkpoint = src / "checkpoint" if (src / "checkpoint" / "config.json").is_file() else None
        if variant == "reference" and checkpoint is None:
            raise PackageError(
                f"{src} holds no checkpoint/ (the build removes it once engines exist unless kept): the reference "
                "variant needs the converted checkpoint; pass it as SRC"
            )
        manifest = src / "manifest.json"
        if variant == "engine" and manifest.is_file() and not json.loads(manifest.read_text()).get("engines_built"):
            notes.append(f"{manifest}: engines_built is false; build the engine before serving this repository")
        source = f"engine directory {src}"
    else:
        plan = Plan.load(plan_file) if plan_file else None
        source = f"converted checkpoint {src}" + (f" and plan {plan_file}" if plan_file else "")
    spec = None
    world = plan.tp if plan else 1
    if checkpoint is not None:
        from trt_gemma4.checkpoint.trtllm import TrtllmCheckpoint

        ckpt = TrtllmCheckpoint.open(checkpoint)
        try:
            spec, world, config = ckpt.spec, ckpt.world_size, ckpt.config
        finally:
            ckpt.close()
        tok_candidates.append(checkpoint)
        origin = (config.get("gemma4") or {}).get("source", {}).get("path")
        if origin:
            tok_candidates.append(Path(origin))
    seq = _limit(
        "max_seq_len",
        max_seq_len,
        plan.max_seq_len if plan else None,
        min(spec.max_position_embeddings, 8192) if spec else 8192,
    )
    inp = _limit("max_input_len", max_input_len, plan.max_input_len if plan else None, seq - 1)
    batch = _limit("max_batch_size", max_batch_size, plan.max_batch_size if plan else None, 8)
    if inp >= seq:
        raise PackageError(f"max_input_len ({inp}) must be below max_seq_len ({seq})")
    if plan is not None:
        windows = [min(w, seq) for w in plan.max_attention_window]
    else:
        assert spec is not None
        if seq > spec.max_position_embeddings:
            raise PackageError(
                f"max_seq_len {seq} exceeds the model's max_position_embeddings {spec.max_position_embeddings}"
            )
        windows = window_list(spec, seq)
    fraction = kv_cache_free_gpu_mem_fraction
    if fraction is None:
        fraction = plan.kv_cache_free_gpu_mem_fraction if plan else 0.9
    if not 0.0 < fraction <= 1.0:
        raise PackageError(f"kv_cache_free_gpu_mem_fraction must be in (0, 1], got {fraction}")
    if variant == "engine":
        if not engine_dir:
            raise PackageError(
                f"{src} is a converted checkpoint: the engine variant needs --engine-dir, the engine directory "
                "(trt-gemma4 build) as the server will see it"
            )
        plugin = plugin_library or str(Path(engine_dir) / "plugins" / LIBRARY_NAME)
    else:
        if world != 1:
            raise PackageError(
                f"{src}: the reference variant runs one rank on the CPU; convert with tp=1 pp=1 "
                f"(this checkpoint has {world} ranks)"
            )
        plugin = None
    return ServingPlan(
        variant=variant,
        attention_windows=windows,
        max_batch_size=batch,
        max_input_len=inp,
        max_seq_len=seq,
        kv_cache_free_gpu_mem_fraction=fraction,
        decoupled=decoupled,
        tokenizer_dir=str(_tokenizer_source(tok_candidates, tokenizer).resolve()),
        checkpoint_dir=str(checkpoint.resolve()) if variant == "reference" and checkpoint else None,
        engine_dir=engine_dir if variant == "engine" else None,
        plugin_library=plugin,
        world_size=world,
        enable_kv_cache_reuse=bool(plan.enable_kv_cache_reuse) if plan else False,
        enable_chunked_context=bool(plan.enable_chunked_context) if plan else False,
        source=source,
        notes=notes,
    )


def template_values(plan: ServingPlan) -> dict[str, Any]:
    """Every template variable of triton_repo/*/config.pbtxt (UNSET: parameter removed)."""
    engine = plan.variant == "engine"
    b = "true" if plan.decoupled else "false"
    return {
        "triton_backend": "tensorrtllm" if engine else "python",
        "max_batch_size": plan.max_batch_size,
        "decoupled": b,
        "max_queue_delay_microseconds": plan.max_queue_delay_microseconds,
        "max_queue_size": plan.max_queue_size,
        "tokenizer_dir": "../../tokenizer",  # relative to each model's directory
        "max_input_len": plan.max_input_len,
        "max_seq_len": plan.max_seq_len,
        "preprocessing_instances": plan.python_instances,
        "postprocessing_instances": plan.python_instances,
        "bls_instances": plan.python_instances,
        "max_beam_width": 1,
        "gpt_model_type": "inflight_fused_batching" if engine else UNSET,
        "gpt_model_path": str(Path(plan.engine_dir) / "engine") if engine and plan.engine_dir else UNSET,
        "max_attention_window_size": ",".join(str(w) for w in plan.attention_windows),
        "kv_cache_free_gpu_mem_fraction": plan.kv_cache_free_gpu_mem_fraction if engine else UNSET,
        "max_tokens_in_paged_kv_cache": UNSET,
        "batch_scheduler_policy": "guaranteed_no_evict" if engine else UNSET,
        # From the plan: FP8 KV without paged context FMHA in TRT-LLM 1.2 rules out both (DESIGN.md).
        "enable_kv_cache_reuse": str(plan.enable_kv_cache_reuse).lower() if engine else UNSET,
        "enable_chunked_context": str(plan.enable_chunked_context).lower() if engine else UNSET,
        "exclude_input_in_output": "true",
        "cancellation_check_period_ms": 100 if engine else UNSET,
        "decoding_mode": "top_k_top_p" if engine else UNSET,
        "gpu_device_ids": UNSET,
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no" if engine else UNSET,
        "checkpoint_dir": plan.checkpoint_dir if not engine else UNSET,
    }


def fill_config(text: str, values: dict[str, Any], where: str) -> str:
    """Substitute ${name} (every one must have a value), drop UNSET parameters, check against Triton's schema."""
    from google.protobuf import text_format

    marker = "${__unset__}"
    try:
        filled = string.Template(text).substitute({k: marker if v is UNSET else v for k, v in values.items()})
    except KeyError as e:
        raise PackageError(f"{where}: template variable {e.args[0]} has no value") from None
    except ValueError as e:
        raise PackageError(f"{where}: bad template: {e}") from None
    head = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    cfg = _parse_raw(filled, where)
    for key in [k for k, v in cfg.parameters.items() if v.string_value == marker]:
        del cfg.parameters[key]
    out = head + text_format.MessageToString(cfg)
    parse_config(out, where)
    return out


def _parse_raw(text: str, where: str) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise PackageError(f"{where}: filled template is not a valid Triton model config: {e}") from None
    return cfg


def _launch_script(plan: ServingPlan) -> str:
    lines = [
        "#!/usr/bin/env bash",
        f"# Start Triton on this repository ({plan.variant} variant; written by `trt-gemma4 package`).",
        "# Extra arguments go to tritonserver, e.g. --http-port=8000 --grpc-port=8001 --metrics-port=8002.",
        "# TRITONSERVER selects the binary (default: tritonserver on PATH).",
        "set -euo pipefail",
        'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        'TRITONSERVER="${TRITONSERVER:-tritonserver}"',
        'REPO="$HERE/model_repository"',
    ]
    if plan.variant == "engine":
        lines += [
            "# Our plugins (block-FP8 GEMM, Gemma-4 attention) must be registered before TensorRT deserializes the",
            "# engine; the TensorRT-LLM backend only initializes its own, so the library is preloaded.",
            f'PLUGIN_LIB="${{TRT_GEMMA4_PLUGIN_LIB:-{plan.plugin_library}}}"',
            '[ -f "$PLUGIN_LIB" ] || { echo "launch_triton.sh: plugin library $PLUGIN_LIB not found'
            ' (set TRT_GEMMA4_PLUGIN_LIB)" >&2; exit 1; }',
            'export LD_PRELOAD="$PLUGIN_LIB${LD_PRELOAD:+:$LD_PRELOAD}"',
        ]
    else:
        lines += ["# The python models import trt_gemma4 (torch backend): install it in the server's Python."]
    if plan.world_size == 1:
        lines.append(
            'exec "$TRITONSERVER" --model-repository="$REPO" '
            '--backend-config=python,shm-region-prefix-name=gemma4_ "$@"'
        )
    else:
        # TensorRT-LLM's leader mode (triton_backend/scripts/launch_triton_server.py): one server per rank under
        # MPI; ranks above 0 load only tensorrt_llm.
        cmd = ["exec mpirun --allow-run-as-root -x LD_PRELOAD"]
        for r in range(plan.world_size):
            rank = [
                '-n 1 "$TRITONSERVER" --model-repository="$REPO" --disable-auto-complete-config',
                f"--backend-config=python,shm-region-prefix-name=prefix{r}_",
            ]
            if r:
                rank.append("--model-control-mode=explicit --load-model=tensorrt_llm")
            rank.append('"$@"')
            cmd.append(" ".join(rank) + (" :" if r < plan.world_size - 1 else ""))
        lines.append(" \\\n  ".join(cmd))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PackageResult:
    out: Path
    repository: Path
    plan: ServingPlan
    models: list[str]


def write_repository(plan: ServingPlan, out: str | Path, *, overwrite: bool = False) -> PackageResult:
    """Write OUT (see the module docstring) atomically: a temp dir beside it, validated, then renamed."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PackageError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    tpl = templates_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        repo = tmp / "model_repository"
        values = template_values(plan)
        text_module = Path(__file__).with_name("text.py")
        for name in MODELS:
            mdir = repo / name
            (mdir / "1").mkdir(parents=True)
            src_cfg = tpl / name / "config.pbtxt"
            (mdir / "config.pbtxt").write_text(fill_config(src_cfg.read_text(), values, str(src_cfg)))
            if name == "tensorrt_llm":
                if plan.variant == "reference":
                    shutil.copy(tpl / name / "reference" / "model.py", mdir / "1" / "model.py")
            elif (tpl / name / "1").is_dir():
                for f in (tpl / name / "1").iterdir():
                    if f.is_file() and f.suffix == ".py":
                        shutil.copy(f, mdir / "1" / f.name)
            if name in TEXT_USERS:
                shutil.copy(text_module, mdir / "1" / TEXT_MODULE)
        tok = tmp / "tokenizer"
        tok.mkdir()
        from trt_gemma4.triton.text import TOKENIZER_FILES, load_text_config

        for f in TOKENIZER_FILES:
            if (Path(plan.tokenizer_dir) / f).is_file():
                shutil.copy(Path(plan.tokenizer_dir) / f, tok / f)
        text_cfg = load_text_config(tok)  # fails here, not in the server, if the files are unusable
        if not text_cfg.chat_template:
            raise PackageError(f"{plan.tokenizer_dir}: the tokenizer files carry no chat template")
        launch = tmp / "launch_triton.sh"
        launch.write_text(_launch_script(plan))
        launch.chmod(0o755)
        models = validate_repository(repo)
        info = {
            "variant": plan.variant,
            "plan": asdict(plan),
            "end_id": text_cfg.end_id,
            "stop_ids": list(text_cfg.stop_ids),
            "suppress_ids": list(text_cfg.suppress_ids),
            "sampling_defaults": asdict(text_cfg.sampling),
            "models": sorted(models),
        }
        (tmp / "package.json").write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackageResult(out, out / "model_repository", plan, sorted(models))
