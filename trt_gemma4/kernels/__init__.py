"""CUDA kernels of trt-gemma4, reached from Python through one JIT-built torch extension.

``load()`` builds (once, cached on disk) the extension ``trt_gemma4_kernels`` from every
``plugins/kernels/*.cu`` and every ``plugins/torch/*.cpp`` (each binding file adds its ops to the
``torch.ops.trt_gemma4`` namespace with ``TORCH_LIBRARY_FRAGMENT``), for the current GPU's architecture only
(``sm_90a`` on Hopper). The build directory is ``$TRT_GEMMA4_CACHE`` or ``~/.cache/trt_gemma4``, one
sub-directory per architecture and torch version.

``available()`` says whether that can work here (CUDA torch, a GPU, nvcc); ``unavailable_reason()`` says why not.
The pure-torch reference (CPU) lives in :mod:`trt_gemma4.kernels.reference`.

:func:`block_fp8_gemm` runs the CUDA op, whose measured dispatch picks the kernel (on Hopper: register streaming
for M <= 16, the TMA + wgmma kernels above). The Triton wgmma kernel (:mod:`trt_gemma4.kernels.triton_gemm`) is used
only with ``TRT_GEMMA4_TRITON_GEMM=1``.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import torch

from trt_gemma4.kernels import triton_gemm
from trt_gemma4.kernels.reference import (
    block_fp8_gemm_reference,
    dequantize_block_fp8,
    normalize_block_scale,
)

__all__ = [
    "available",
    "unavailable_reason",
    "load",
    "block_fp8_gemm",
    "block_fp8_gemm_reference",
    "dequantize_block_fp8",
    "normalize_block_scale",
    "plugin_sources",
    "arch_flags",
]

EXTENSION_NAME = "trt_gemma4_kernels"
_REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGINS_DIR = _REPO_ROOT / "plugins"

_lock = threading.Lock()
_loaded = False


def plugin_sources() -> list[Path]:
    """Sources of the extension: ``plugins/kernels/*.cu`` then ``plugins/torch/*.cpp``, sorted.

    ``$TRT_GEMMA4_KERNEL_SOURCES`` (comma-separated file stems, e.g. ``block_fp8_gemm,gemm_ops``) restricts the
    build to those files, to work on one op family while another does not build.
    """
    paths = sorted((PLUGINS_DIR / "kernels").glob("*.cu")) + sorted((PLUGINS_DIR / "torch").glob("*.cpp"))
    only = os.environ.get("TRT_GEMMA4_KERNEL_SOURCES")
    if only:
        stems = {part.strip() for part in only.split(",") if part.strip()}
        paths = [p for p in paths if p.stem in stems]
    return paths


def _find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").is_file():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def unavailable_reason() -> str | None:
    """Why the CUDA kernels cannot be used here, or ``None`` when they can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if _find_nvcc() is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    if not PLUGINS_DIR.is_dir() or not plugin_sources():
        return f"kernel sources not found under {PLUGINS_DIR}"
    return None


def available() -> bool:
    """True when the extension can be built and run here (see :func:`unavailable_reason`)."""
    return unavailable_reason() is None


def arch_flags(capability: tuple[int, int]) -> list[str]:
    """nvcc ``-gencode`` flags for one compute capability; Hopper gets the ``sm_90a`` (wgmma-capable) target."""
    major, minor = capability
    arch = f"{major}{minor}"
    if (major, minor) == (9, 0):
        arch = "90a"
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}"]


def _build_dir(capability: tuple[int, int]) -> Path:
    root = Path(os.environ.get("TRT_GEMMA4_CACHE", Path.home() / ".cache" / "trt_gemma4"))
    tag = f"sm{capability[0]}{capability[1]}_torch{torch.__version__.replace('+', '_')}"
    if os.environ.get("TRT_GEMMA4_KERNEL_SOURCES"):
        tag += "_subset"
    path = root / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(verbose: bool = False) -> None:
    """Build (if needed) and load the extension; afterwards the ops are in ``torch.ops.trt_gemma4``."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"trt_gemma4 CUDA kernels unavailable: {reason}")
        from torch.utils.cpp_extension import load as load_extension

        capability = torch.cuda.get_device_capability()
        flags = arch_flags(capability)  # passing -gencode ourselves stops torch adding its own arch list
        load_extension(
            name=EXTENSION_NAME,
            sources=[str(p) for p in plugin_sources()],
            extra_include_paths=[str(PLUGINS_DIR / "kernels")],
            extra_cflags=["-O3", "-std=c++17"],
            extra_cuda_cflags=["-O3", "-std=c++17", "--expt-relaxed-constexpr", *flags],
            build_directory=str(_build_dir(capability)),
            is_python_module=False,
            verbose=verbose,
        )
        _loaded = True


def block_fp8_gemm(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x [..., K] (bf16) · dequant(w [N, K] fp8-e4m3, s 128x128 block scales)ᵀ`` -> bf16 ``[..., N]`` on the GPU.

    The scale may be ``[ceil(N/128), ceil(K/128)]``, ``[nb, 1, kb, 1]``, or 0-D for a single-block matrix.
    Accumulation is FP32 and the FP32 block scale is applied to FP32 partial sums (see the kernel header).
    """
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor) or not isinstance(s, torch.Tensor):
        raise TypeError("block_fp8_gemm: x, w and s must be tensors")
    if w.dtype != torch.float8_e4m3fn:
        raise TypeError(f"block_fp8_gemm: w must be torch.float8_e4m3fn, got {w.dtype}")
    if x.dtype != torch.bfloat16:
        raise TypeError(f"block_fp8_gemm: x must be torch.bfloat16, got {x.dtype}")
    if s.dtype != torch.float32:
        raise TypeError(f"block_fp8_gemm: s must be torch.float32, got {s.dtype}")
    if w.dim() != 2:
        raise ValueError(f"block_fp8_gemm: w must be [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    if n % 16 or k % 16:
        raise ValueError(f"block_fp8_gemm: N and K must be multiples of 16, got w shape {tuple(w.shape)}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"block_fp8_gemm: x must be [..., {k}] to match w {tuple(w.shape)}, got {tuple(x.shape)}")
    s2 = normalize_block_scale(s, n, k)
    if not (x.is_cuda and w.is_cuda and s2.is_cuda) or not (x.device == w.device == s2.device):
        raise ValueError(f"block_fp8_gemm: x, w, s must be on one CUDA device, got {x.device}, {w.device}, {s2.device}")
    m = x.numel() // k
    if triton_gemm.prefers_triton(m, n, k) and triton_gemm.available():
        y = triton_gemm.block_fp8_gemm_triton(x.reshape(m, k).contiguous(), w.contiguous(), s2.contiguous())
        return y.reshape(*x.shape[:-1], n)
    load()
    return torch.ops.trt_gemma4.block_fp8_gemm(x, w.contiguous(), s2.contiguous())
