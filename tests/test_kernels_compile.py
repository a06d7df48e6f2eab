"""Every CUDA kernel source compiles for sm_90a and for the portable targets (sm_80, sm_100, sm_120), and no
sm_90a kernel reads activations before griddepcontrol.wait (SASS, through cuobjdump).

Runs on a CPU machine. nvcc comes from the PyPI wheels of the ``cuda`` extra when installed (they put it in
``site-packages/nvidia/cu13/bin``; older wheel layouts used ``nvidia/cuda_nvcc/bin``), else from ``CUDA_HOME`` or
PATH. Without nvcc the test skips, unless ``TRT_GEMMA4_REQUIRE_NVCC=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
import re
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


def _tool(name: str, nvcc: Path) -> Path | None:
    """A CUDA binary (cuobjdump, nvdisasm) beside nvcc or on PATH."""
    if (nvcc.parent / name).is_file():
        return nvcc.parent / name
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


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


def _compile(nvcc: Path, source: Path, flags: list[str], out: Path) -> None:
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
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    warnings = [ln for ln in result.stderr.splitlines() if "warning" in ln.lower() and "deprecated" not in ln.lower()]
    assert not warnings, result.stderr


@pytest.fixture(scope="module")
def sm90_objects(nvcc: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each source compiled once for sm_90a (the compile test and the SASS check share the objects)."""
    out = tmp_path_factory.mktemp("sm90a")
    objects = {}
    for source in KERNEL_SOURCES:
        objects[source.name] = out / f"{source.stem}.o"
        _compile(nvcc, source, HOPPER_FLAGS, objects[source.name])
    return objects


@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernel_compiles_sm90a(sm90_objects: dict[str, Path], source: Path) -> None:
    assert sm90_objects[source.name].stat().st_size > 0


@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernel_compiles_portable(nvcc: Path, source: Path, tmp_path: Path) -> None:
    _compile(nvcc, source, PORTABLE_FLAGS, tmp_path / f"{source.stem}_portable.o")


# Global loads a kernel may issue before griddepcontrol.wait (SASS ACQBULK): the weights (streamed with the L2
# 256-byte prefetch hint: LTC256B) and the 4-byte block scales, all constants. Anything wider without that hint is an
# activation load, whose producer (the previous kernel, under programmatic dependent launch) may still be running.
_EARLY_OK = re.compile(r"LDG\.E(\.CONSTANT)?|LDGDEPBAR|LDGSTS\.E(\.BYPASS)?|.*LTC256B.*")


def early_activation_loads(sass: str) -> dict[str, list[str]]:
    """Per kernel of a cuobjdump -sass listing: the global loads other than weights and scales issued before its
    first griddepcontrol.wait."""
    found = {}
    for function in re.split(r"\n\s*Function : ", sass)[1:]:
        name = function.split("\n", 1)[0].strip()
        ops = [
            re.sub(r"^@!?U?P\w+\s+", "", line.split("*/", 1)[1].strip()).split()[0]
            for line in function.splitlines()
            if re.match(r"\s*/\*[0-9a-f]{4}\*/", line)
        ]
        if "ACQBULK" not in ops:
            continue
        early = [op for op in ops[: ops.index("ACQBULK")] if op.startswith("LDG") and not _EARLY_OK.fullmatch(op)]
        if early:
            found[name] = sorted(set(early))
    return found


def test_early_load_check_flags_activation_loads() -> None:
    listing = (
        "\n\t\tFunction : k\n        /*0000*/ LDG.E.NA.LTC256B.128.CONSTANT R4, desc[UR4][R2.64] ;\n"
        "        /*0010*/ @!P0 LDG.E.128.CONSTANT R8, desc[UR4][R6.64] ;\n        /*0020*/ LDG.E.CONSTANT R1, [R2] ;\n"
        "        /*0030*/ ACQBULK ;\n        /*0040*/ LDG.E.128 R12, desc[UR4][R6.64] ;\n"
    )
    assert early_activation_loads(listing) == {"k": ["LDG.E.128.CONSTANT"]}


GEMM_SOURCES = [s for s in KERNEL_SOURCES if s.name.startswith("block_fp8_gemm")]  # the kernels launched with PDL


@pytest.mark.parametrize("source", GEMM_SOURCES, ids=lambda p: p.name)
def test_activation_loads_wait_for_the_previous_kernel(sm90_objects: dict[str, Path], nvcc: Path, source: Path) -> None:
    """ptxas may move read-only (ld.global.nc) loads above griddepcontrol.wait; activations must not be read that
    way (block_fp8_gemm.cu, ldgCached128)."""
    cuobjdump, nvdisasm = _tool("cuobjdump", nvcc), _tool("nvdisasm", nvcc)
    if cuobjdump is None or nvdisasm is None:
        message = "cuobjdump/nvdisasm not found (the 'cuda' extra installs them)"
        if os.environ.get("TRT_GEMMA4_REQUIRE_NVCC") == "1":
            pytest.fail(message + "; TRT_GEMMA4_REQUIRE_NVCC=1 demands it")
        pytest.skip(message)
    env = {**os.environ, "PATH": f"{nvdisasm.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [str(cuobjdump), "-sass", str(sm90_objects[source.name])], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "ACQBULK" in result.stdout, "no griddepcontrol.wait found: the check would not see anything"
    assert early_activation_loads(result.stdout) == {}
