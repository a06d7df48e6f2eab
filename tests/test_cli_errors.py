"""Bad arguments a user can give: one line naming what is wrong, exit 1, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trt_gemma4.cli import build_parser
from trt_gemma4.commands import COMMANDS


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trt_gemma4.cli", *args], capture_output=True, text=True)


def test_every_command_is_in_the_parser() -> None:
    actions = [a for a in build_parser()._actions if a.dest == "command"]
    assert set(actions[0].choices) == set(COMMANDS)


@pytest.fixture(scope="module")
def converted(tiny_text_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ckpt"
    assert _cli("convert", str(tiny_text_ckpt), str(out)).returncode == 0
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt-lengths", "abc"], "expected comma-separated integers"),
        (["--tokens-per-block", "0"], "positive power of two"),
        (["--device", "banana"], "expected cpu or cuda"),
        (["--prompt-lengths", "100000"], "max_position_embeddings"),
    ],
)
def test_verify_rejects_bad_arguments(converted: Path, args: list[str], message: str) -> None:
    r = _cli("verify", str(converted), *args)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_an_output_path_that_cannot_be_created_is_one_line(tiny_text_ckpt: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    r = _cli("convert", str(tiny_text_ckpt), str(blocker / "sub"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
