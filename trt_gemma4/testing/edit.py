"""Edit a COPY of a real export: change tensors (rewritten with the safetensors library) or its JSON files.

Used by the tests that check how every command reacts to a damaged or inconsistent checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def copy_export(src: str | Path, dst: str | Path) -> Path:
    """A full copy of an export directory (the original stays untouched)."""
    dst = Path(dst)
    shutil.copytree(src, dst)
    return dst


def edit_tensors(
    ckpt: str | Path, edit: Callable[[dict[str, torch.Tensor]], None], file: str = "model.safetensors"
) -> None:
    """Load every tensor of `file`, let `edit` change the dict in place, write the file back."""
    path = Path(ckpt) / file
    tensors = load_file(str(path))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def edit_json(path: str | Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Load a JSON file, let `edit` change it in place, write it back."""
    path = Path(path)
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d, indent=2) + "\n")


def shard_export(ckpt: str | Path, n_shards: int) -> list[str]:
    """Split model.safetensors into `n_shards` files plus model.safetensors.index.json (as transformers does)."""
    ckpt = Path(ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    names = sorted(tensors)
    files = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    weight_map = {}
    for i, f in enumerate(files):
        part = names[i::n_shards]
        save_file({k: tensors[k] for k in part}, str(ckpt / f), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, f))
    (ckpt / "model.safetensors").unlink()
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files
