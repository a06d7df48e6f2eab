"""Outputs are published whole: replace_dir swaps a finished directory in, write_text_atomic a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trt_gemma4 import fsutil


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_replace_dir_new_and_existing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = tmp_path / ".stage1"
    (first / "sub").mkdir(parents=True)
    (first / "sub" / "a.txt").write_text("one")
    fsutil.replace_dir(first, out)
    assert _tree(out) == {"sub/a.txt": "one"} and not first.exists()
    second = tmp_path / ".stage2"
    second.mkdir()
    (second / "b.txt").write_text("two")
    fsutil.replace_dir(second, out)
    assert _tree(out) == {"b.txt": "two"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside


def test_replace_dir_failure_keeps_the_old_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging = tmp_path / ".stage"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    real_replace = os.replace

    def failing_replace(src, dst):  # the swap of the new tree fails; moving aside and back still work
        if Path(src) == staging:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        fsutil.replace_dir(staging, out)
    assert _tree(out) == {"old.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".stage", "out"]


def test_write_text_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "d" / "report.json"
    fsutil.write_text_atomic(target, "{}\n")
    assert target.read_text() == "{}\n"
    monkeypatch.setattr(fsutil.os, "replace", lambda *_: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError, match="no space"):
        fsutil.write_text_atomic(target, "partial")
    assert target.read_text() == "{}\n"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # the temp file is gone
