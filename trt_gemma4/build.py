"""`trt-gemma4 build`: validate -> convert -> plan -> build the plugin library -> build the engine -> manifest.

The output directory engines/<name>/ appears atomically (a temp directory beside it is renamed at the end). It is
itself the engine directory the runtime and Triton are pointed at:

    config.json, rank{N}.engine  the engines (only where TensorRT-LLM 1.2.1 is installed)
    libtrt_gemma4_plugins.so     the plugin library, beside the engines (backends/engine_runner.py looks there)
    plan.json                    trt_gemma4.plan.Plan
    checkpoint/                  our TRT-LLM checkpoint (docs/checkpoint_format.md), input of the engine build
    manifest.json                versions, arch, plan, every stage's outcome, sha256 of every file

Where TensorRT-LLM is not importable (any machine but the NGC container
nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3) every stage before the engine build still runs, the manifest
names what is missing, and the command exits 0 (3 with --require-engines). A missing compiler or TensorRT header
is reported the same way, with how to get it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trt_gemma4 import __version__
from trt_gemma4.errors import Gemma4Error
from trt_gemma4.fsutil import replace_dir
from trt_gemma4.plan import Plan, load_preset, make_plan, plan_arguments
from trt_gemma4.plugins import LIBRARY_NAME

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = REPO / "plugins"
CONTAINER = "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
PINNED = "TensorRT-LLM 1.2.1, TensorRT 10.14.1, CUDA 13, Python 3.12"
EXIT_NO_ENGINES = 3
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Missing:
    """A tool or package a stage needs, and how to get it."""

    name: str
    needed_for: str
    how: str

    def line(self) -> str:
        return f"{self.name} (for {self.needed_for}): {self.how}"


@dataclass
class StageResult:
    name: str
    status: str  # "done" | "skipped"
    seconds: float
    detail: str = ""


@dataclass
class BuildResult:
    output: Path
    engines_built: bool
    missing: list[Missing] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)


# ---- tools ---------------------------------------------------------------------------------------------------


def find_nvcc() -> Path | None:
    """$CUDACXX, the nvidia-cuda-nvcc wheel of this interpreter, $CUDA_HOME/bin, then PATH."""
    env = os.environ.get("CUDACXX")
    if env and Path(env).is_file():
        return Path(env)
    site = Path(sysconfig.get_paths()["purelib"])
    for rel in ("nvidia/cu13/bin/nvcc", "nvidia/cuda_nvcc/bin/nvcc"):
        if (site / rel).is_file():
            return site / rel
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").is_file():
        return Path(cuda_home) / "bin" / "nvcc"
    found = shutil.which("nvcc")
    return Path(found) if found else None


def find_cmake() -> Path | None:
    found = shutil.which("cmake")
    return Path(found) if found else None


# Where TensorRT's headers live: the environment, the repository's .trt_headers (compile checks), the NGC
# TRT-LLM container's TensorRT tarball, the Debian packages.
_HEADER_DIRS = (
    ".trt_headers",
    "/usr/local/tensorrt/include",
    "/usr/include/x86_64-linux-gnu",
    "/usr/include/aarch64-linux-gnu",
)


def find_trt_headers() -> Path | None:
    candidates = [os.environ.get("TENSORRT_INCLUDE_DIR", "")]
    candidates += [str(REPO / d) if not d.startswith("/") else d for d in _HEADER_DIRS]
    for c in candidates:
        if c and (Path(c) / "NvInferRuntime.h").is_file():
            return Path(c)
    return None


def trt_header_version(include_dir: Path) -> str:
    text = (include_dir / "NvInferVersion.h").read_text(errors="replace")
    parts = []
    for key in ("MAJOR", "MINOR", "PATCH", "BUILD"):
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0] == "#define" and fields[1] == f"TRT_{key}_ENTERPRISE":
                parts.append(fields[2])
                break
    return ".".join(parts) if parts else "unknown"


def tensorrt_llm_available() -> bool:
    return importlib.util.find_spec("tensorrt_llm") is not None


HOW_NVCC = (
    'install the CUDA 13 toolkit, or `pip install "trt-gemma4[cuda]"` (nvidia-cuda-nvcc from PyPI), or set CUDACXX'
)
HOW_CMAKE = "`pip install cmake` (>= 3.24) or the OS package"
HOW_HEADERS = (
    f"set TENSORRT_INCLUDE_DIR to TensorRT 10.14's include/ (in {CONTAINER}: /usr/local/tensorrt/include), "
    "or run scripts/fetch_trt_headers.sh (TensorRT OSS tag v10.14, include/ -> .trt_headers/)"
)
HOW_TRTLLM = (
    f"run `trt-gemma4 build` inside {CONTAINER} ({PINNED}); pip cannot install tensorrt_llm 1.2.1 "
    "outside NVIDIA's index. Steps: docs/site_build.md"
)


def missing_tools(need_engine: bool = True) -> list[Missing]:
    out = []
    if find_nvcc() is None:
        out.append(Missing("nvcc", "the plugin library", HOW_NVCC))
    if find_cmake() is None:
        out.append(Missing("cmake", "the plugin library", HOW_CMAKE))
    if find_trt_headers() is None:
        out.append(Missing("TensorRT 10.14 headers", "the plugin library", HOW_HEADERS))
    if need_engine and not tensorrt_llm_available():
        out.append(Missing("tensorrt_llm 1.2.1", "the engine build", HOW_TRTLLM))
    return out


def _tool_version(cmd: list[str], marker: str) -> str:
    """The first output line of `cmd` containing `marker` (e.g. nvcc's "release 13.0, V13.0.88")."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return next((ln.strip() for ln in out.splitlines() if marker in ln), "unknown")


# ---- the plugin library ----------------------------------------------------------------------------------------


def build_plugins(
    arch: str,
    build_dir: Path,
    *,
    nvcc: Path,
    cmake: Path,
    headers: Path,
    jobs: int | None = None,
    sources: Path = PLUGIN_SOURCES,
) -> Path:
    """Configure and build plugins/CMakeLists.txt for `arch`; returns the built libtrt_gemma4_plugins.so."""
    build_dir.mkdir(parents=True, exist_ok=True)
    log = build_dir / "build.log"
    configure = [
        str(cmake),
        "-S",
        str(sources),
        "-B",
        str(build_dir),
        f"-DTRT_GEMMA4_ARCH={arch}",
        f"-DTENSORRT_INCLUDE_DIR={headers}",
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    build = [str(cmake), "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 1)]
    with open(log, "w") as f:
        for cmd in (configure, build):
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise Gemma4Error(f"plugin build failed ({' '.join(cmd[:2])} ...; full log {log}):\n{tail}")
    lib = build_dir / LIBRARY_NAME
    if not lib.is_file():
        raise Gemma4Error(f"plugin build finished without {lib}; see {log}")
    return lib


def plugin_sources_hash(arch: str, nvcc: Path, headers: Path, sources: Path = PLUGIN_SOURCES) -> str:
    """Identifies one plugin build: the library's sources (CMakeLists.txt, kernels/, trt/), the arch, the compiler
    and the TensorRT headers."""
    lib_dir = os.environ.get("TENSORRT_LIB_DIR", "")  # decides whether libnvinfer is linked
    h = hashlib.sha256(f"{arch}\n{nvcc.resolve()}\n{trt_header_version(headers)}\n{lib_dir}\n".encode())
    files = [
        sources / "CMakeLists.txt",
        *sorted((sources / "kernels").rglob("*")),
        *sorted((sources / "trt").rglob("*")),
    ]
    for p in files:
        if p.is_file():
            h.update(p.relative_to(sources).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("TRT_GEMMA4_CACHE", Path.home() / ".cache" / "trt_gemma4"))


def cached_plugin_library(
    arch: str, *, nvcc: Path, cmake: Path, headers: Path, jobs: int | None = None, log: Callable[[str], None] = print
) -> Path:
    """The plugin library for these sources and tools, built once under $TRT_GEMMA4_CACHE/plugins/."""
    key = f"{arch}-{plugin_sources_hash(arch, nvcc, headers)}"
    final = cache_root() / "plugins" / key
    lib = final / LIBRARY_NAME
    if lib.is_file():
        log(f"  reusing {lib} (same sources, arch and tools)")
        return lib
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=final.parent))
    try:
        build_plugins(arch, tmp, nvcc=nvcc, cmake=cmake, headers=headers, jobs=jobs)
        if not lib.is_file():  # else another process finished the same build first
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


# ---- the manifest ----------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksums(root: Path, exclude: tuple[str, ...] = ("manifest.json",)) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under root, by POSIX relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() not in exclude:
            out[p.relative_to(root).as_posix()] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    return out


def verify_manifest(root: str | Path) -> list[str]:
    """Files whose checksum or presence differs from manifest.json (empty list: all match)."""
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    recorded = manifest["files"]
    actual = checksums(root)
    problems = [f"{name}: missing" for name in recorded if name not in actual]
    problems += [f"{name}: not in the manifest" for name in actual if name not in recorded]
    problems += [
        f"{name}: sha256 differs"
        for name in recorded
        if name in actual and actual[name]["sha256"] != recorded[name]["sha256"]
    ]
    return problems


def _versions(nvcc: Path | None, cmake: Path | None, headers: Path | None) -> dict[str, str]:
    import torch

    v = {"trt_gemma4": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for mod in ("tensorrt_llm", "tensorrt", "transformers", "modelopt"):
        if importlib.util.find_spec(mod) is not None:
            try:
                v[mod] = str(getattr(importlib.import_module(mod), "__version__", "unknown"))
            except Exception as e:  # a broken optional install must not stop the manifest
                v[mod] = f"import failed: {type(e).__name__}"
    if nvcc is not None:
        v["nvcc"] = _tool_version([str(nvcc), "--version"], "release")
    if cmake is not None:
        v["cmake"] = _tool_version([str(cmake), "--version"], "cmake version")
    if headers is not None:
        v["tensorrt_headers"] = trt_header_version(headers)
    return v


# ---- the build -------------------------------------------------------------------------------------------------


def default_name(model: str, arch: str, tp: int) -> str:
    return f"{model}-{arch}-tp{tp}"


def run_build(
    *,
    arch: str,
    checkpoint: str | Path | None,
    output: str | Path | None,
    tp: int = 1,
    plan_overrides: dict[str, Any] | None = None,
    kv_scales: str = "identity",
    overwrite: bool = False,
    keep_checkpoint: bool = True,
    jobs: int | None = None,
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Run every stage that this machine can run; see the module docstring."""
    from trt_gemma4.checkpoint.modelopt import ModelOptCheckpoint

    preset = load_preset(arch)
    overrides = dict(plan_overrides or {})
    overrides["tp"] = tp
    stages: list[StageResult] = []
    n_stages = 6

    def stage(i: int, name: str) -> float:
        log(f"[{i}/{n_stages}] {name}")
        return time.monotonic()

    # Stage 1: the source checkpoint (the tiny export on the spot without one), validated.
    work = Path(tempfile.mkdtemp(prefix="trt-gemma4-build-"))
    try:
        t = stage(1, "validate the ModelOpt export")
        if checkpoint is None:
            from trt_gemma4.testing.tiny import make_tiny

            log("  no --checkpoint: making the tiny Gemma-4 export (seconds, on the CPU)")
            source = make_tiny(work / "tiny-export", text_only=True)
            model, described = "gemma4-tiny", "the tiny export made on the spot (trt_gemma4.testing.tiny.make_tiny)"
        else:
            source = Path(checkpoint)
            model, described = source.resolve().name, str(source.resolve())
        with ModelOptCheckpoint.open(source) as ckpt:
            ckpt.validate()
            spec = ckpt.spec
        log(f"  {spec.summary()}")
        stages.append(StageResult("validate", "done", time.monotonic() - t, described))

        out = Path(output) if output is not None else REPO / "engines" / default_name(model, arch, tp)
        if out.exists() and not overwrite:
            raise Gemma4Error(f"{out}: already exists (pass --overwrite to replace it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            result = _stages(
                arch,
                spec,
                model,
                source,
                staging,
                preset,
                overrides,
                kv_scales,
                keep_checkpoint,
                jobs,
                stages,
                stage,
                log,
            )
            os.chmod(staging, 0o755)
            replace_dir(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.output = out
    log(f"wrote {out}")
    return result


def _stages(
    arch: str,
    spec: Any,
    model: str,
    source: Path,
    staging: Path,
    preset: dict[str, Any],
    overrides: dict[str, Any],
    kv_scales: str,
    keep_checkpoint: bool,
    jobs: int | None,
    stages: list[StageResult],
    stage: Callable[[int, str], float],
    log: Callable[[str], None],
) -> BuildResult:
    from trt_gemma4.convert import convert

    # Stage 2: our TRT-LLM checkpoint.
    t = stage(2, f"convert to the TRT-LLM checkpoint (tp={overrides['tp']})")
    ckpt_dir = staging / "checkpoint"
    convert(source, ckpt_dir, tp=overrides["tp"], kv_scales=kv_scales, progress=None)
    stages.append(StageResult("convert", "done", time.monotonic() - t, "checkpoint/"))

    # Stage 3: the plan. A preset's max_seq_len above the model's positions is lowered to them.
    t = stage(3, "plan")
    if overrides.get("max_seq_len") is None and preset.get("max_seq_len", 0) > spec.max_position_embeddings:
        overrides["max_seq_len"] = spec.max_position_embeddings
        log(f"  max_seq_len lowered to the model's max_position_embeddings {spec.max_position_embeddings}")
    plan = make_plan(spec.with_drafter(None), model=model, arch=arch, **plan_arguments(preset, overrides))
    plan.save(staging / "plan.json")
    # The engine's RoPE tables and position limit follow the plan, not the model's 262k positions.
    config_path = ckpt_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["max_position_embeddings"] = plan.max_position_embeddings
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    for line in plan.summary().splitlines():
        log(f"  {line}")
    stages.append(StageResult("plan", "done", time.monotonic() - t, "plan.json"))

    # Stage 4: the plugin library.
    t = stage(4, f"build the plugin library for {arch}")
    nvcc, cmake, headers = find_nvcc(), find_cmake(), find_trt_headers()
    missing = missing_tools(need_engine=False)
    library: Path | None = None
    if missing:
        for m in missing:
            log(f"  missing {m.line()}")
        stages.append(
            StageResult("plugins", "skipped", time.monotonic() - t, "missing: " + ", ".join(m.name for m in missing))
        )
    else:
        assert nvcc is not None and cmake is not None and headers is not None
        log(f"  nvcc {nvcc}, cmake {cmake}, TensorRT headers {trt_header_version(headers)} in {headers}")
        built = cached_plugin_library(arch, nvcc=nvcc, cmake=cmake, headers=headers, jobs=jobs, log=log)
        library = staging / LIBRARY_NAME
        shutil.copy2(built, library)
        stages.append(StageResult("plugins", "done", time.monotonic() - t, LIBRARY_NAME))

    # Stage 5: the engine, through the TRT-LLM backend.
    t = stage(5, "build the engine (TensorRT-LLM 1.2.1)")
    engines_built = False
    if not tensorrt_llm_available():
        missing.append(Missing("tensorrt_llm 1.2.1", "the engine build", HOW_TRTLLM))
        log(f"  skipped: {missing[-1].line()}")
        stages.append(StageResult("engine", "skipped", time.monotonic() - t, "tensorrt_llm is not installed"))
    elif library is None:
        log("  skipped: the engine needs the plugin library (see the missing tools above)")
        stages.append(StageResult("engine", "skipped", time.monotonic() - t, "no plugin library"))
    else:
        _build_engine(ckpt_dir, plan, library, staging, log)
        engines_built = True
        ranks = sorted(p.name for p in staging.glob("rank*.engine"))
        stages.append(StageResult("engine", "done", time.monotonic() - t, ", ".join(["config.json", *ranks])))
        if not keep_checkpoint:
            shutil.rmtree(ckpt_dir)

    # Stage 6: the manifest, over everything written above.
    t = stage(6, "write the manifest")
    stages.append(StageResult("manifest", "done", 0.0, "manifest.json"))
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "created_unix": int(time.time()),
        "model": model,
        "arch": arch,
        "cuda_architecture": preset.get("cuda_architecture"),
        "kernels": preset.get("kernels"),
        "engines_built": engines_built,
        "serve_with": CONTAINER,
        "missing": [asdict(m) for m in missing],
        "stages": [asdict(s) for s in stages],
        "versions": _versions(nvcc, cmake, headers),
        "plan": plan.to_dict(),
        "files": checksums(staging),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    stages[-1].seconds = time.monotonic() - t
    return BuildResult(staging, engines_built, missing, stages)


def _build_engine(ckpt_dir: Path, plan: Plan, library: Path, engine_dir: Path, log: Callable[[str], None]) -> None:
    """Hand the checkpoint, the plan's limits and the plugin library to the TRT-LLM backend (imports tensorrt_llm):
    trt_gemma4.backends.trtllm_backend.build_engines, which follows tensorrt_llm/builder.py build() per rank."""
    import dataclasses

    from trt_gemma4.backends import trtllm_backend

    fields = {f.name for f in dataclasses.fields(trtllm_backend.EngineBuildOptions)}
    values: dict[str, Any] = {
        "max_batch_size": plan.max_batch_size,
        "max_input_len": plan.max_input_len,
        "max_seq_len": plan.max_seq_len,
        "max_num_tokens": plan.max_num_tokens,
        "tokens_per_block": plan.tokens_per_block,
        "kv_cache_dtype": plan.kv_cache_dtype,
    }
    if plan.paged_context_fmha_override:
        if "paged_context_fmha_override" not in fields:
            raise Gemma4Error(
                "the plan keeps paged context FMHA with an FP8 KV cache (--paged-context-fmha-override), "
                "but this TRT-LLM backend has no such option; build with --kv-cache-dtype bf16 or without the override"
            )
        values["paged_context_fmha_override"] = True
    unknown = sorted(set(values) - fields)
    if unknown:
        raise Gemma4Error(f"trt_gemma4.backends.trtllm_backend.EngineBuildOptions lacks {', '.join(unknown)}")
    trtllm_backend.build_engines(ckpt_dir, engine_dir, library, trtllm_backend.EngineBuildOptions(**values), log=log)
