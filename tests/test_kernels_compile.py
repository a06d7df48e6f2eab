"""Every CUDA kernel source compiles for sm_90a and for the portable targets (sm_80, sm_100, sm_120).

Runs on a CPU machine. nvcc comes from the PyPI wheels of the ``cuda`` extra when installed (they put it in
``site-packages/nvidia/cu13/bin``; older wheel layouts used ``nvidia/cuda_nvcc/bin``), else from ``CUDA_HOME`` or
PATH. Without nvcc the test skips, unless ``TRT_GEMMA4_REQUIRE_NVCC=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL_SOURCES = sorted((REPO / "plugins" / "kernels").glob("*.cu"))
HOPPER_FLAGS = ["-gencode=arch=compute_90a,code=sm_90a"]
# One nvcc call for all portable targets: the front end runs once per target anyway, but the host pass and the
# process start are shared.
PORTABLE_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_100,code=sm_100",
    "-gencode=arch=compute_120,code=sm_120",
]


def _pypi_nvcc() -> Path | None:
    """nvcc shipped by the nvidia-cuda-nvcc wheel, if installed in this interpreter's site-packages."""
    site = Path(sysconfig.get_paths()["purelib"])
    for rel in ("nvidia/cu13/bin/nvcc", "nvidia/cuda_nvcc/bin/nvcc"):
        if (site / rel).is_file():
            return site / rel
    return None


def find_nvcc() -> Path | None:
    """The nvcc to test with: PyPI wheel first, then CUDA_HOME, then PATH."""
    found = _pypi_nvcc()
    if found is not None:
        return found
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").is_file():
        return Path(cuda_home) / "bin" / "nvcc"
    on_path = shutil.which("nvcc")
    return Path(on_path) if on_path else None


@pytest.fixture(scope="module")
def nvcc() -> Path:
    found = find_nvcc()
    if found is None:
        message = "nvcc not found (install the 'cuda' extra or put a CUDA 13 toolkit on PATH)"
        if os.environ.get("TRT_GEMMA4_REQUIRE_NVCC") == "1":
            pytest.fail(message + "; TRT_GEMMA4_REQUIRE_NVCC=1 demands it")
        pytest.skip(message)
    return found


def test_kernel_sources_exist() -> None:
    assert KERNEL_SOURCES, "no plugins/kernels/*.cu found"


@pytest.mark.parametrize("target", ["sm_90a", "portable"])
@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernel_compiles(nvcc: Path, source: Path, target: str, tmp_path: Path) -> None:
    flags = HOPPER_FLAGS if target == "sm_90a" else PORTABLE_FLAGS
    cmd = [
        str(nvcc),
        "-std=c++17",
        "-O3",
        "--expt-relaxed-constexpr",
        *flags,
        "-I",
        str(source.parent),
        "-c",
        str(source),
        "-o",
        str(tmp_path / f"{source.stem}_{target}.o"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    warnings = [ln for ln in result.stderr.splitlines() if "warning" in ln.lower() and "deprecated" not in ln.lower()]
    assert not warnings, result.stderr
