"""Publishing outputs so that a failure never leaves anything half-written.

Every command that writes a directory builds it under a temporary name next to the target and then calls
:func:`replace_dir`; single files go through :func:`write_text_atomic`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["replace_dir", "write_text_atomic"]


def replace_dir(staging: Path, out: Path) -> None:
    """Put the finished directory ``staging`` at ``out`` (same file system), replacing an existing ``out``.

    An existing ``out`` is moved aside first and deleted only once the new directory is in place; if that rename
    fails, the old directory is put back, so ``out`` is at every moment either the old or the new complete tree.
    """
    staging, out = Path(staging), Path(out)
    if not out.exists():
        os.replace(staging, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    aside.rmdir()  # a fresh unused name next to out
    os.replace(out, aside)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
