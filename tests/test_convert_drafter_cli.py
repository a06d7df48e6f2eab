"""`trt-gemma4 convert CKPT OUT --drafter DIR`: the target and its drafter in one atomic output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trt_gemma4.cli", *args], capture_output=True, text=True)


def test_convert_with_drafter_records_the_wiring(tiny_ckpt: Path, tiny_drafter_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    r = _cli("convert", str(tiny_ckpt), str(out), "--drafter", str(tiny_drafter_ckpt))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["gemma4"]["spec"]["drafter"]["hidden_size"] == 64
    assert (out / "drafter" / "rank0.safetensors").is_file()


def test_convert_with_a_drafter_that_does_not_fit_writes_nothing(
    tiny_tp_ckpt: Path, tiny_drafter_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ckpt"
    r = _cli("convert", str(tiny_tp_ckpt), str(out), "--drafter", str(tiny_drafter_ckpt))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "expected" in r.stderr and "found" in r.stderr
    assert not out.exists()
