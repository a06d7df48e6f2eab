"""A small streaming reader/writer of the safetensors file format.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}` padded with spaces to a
multiple of 8 bytes, then the tensor bytes back to back (offsets relative to the end of the header).

Why our own writer: `safetensors.torch.save_file` needs every tensor in memory at once. Here the header (all
names, dtypes, shapes and offsets) is computed first from the plan, then each tensor is streamed in, possibly in
several chunks (a 2 GB embedding copied a few rows at a time from the source's memory map), so memory does not
grow with model size. The header reader lets the ModelOpt reader check a file (truncation, offsets) before
`safetensors.safe_open`, which only says "invalid header" for a cut-off file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from trt_gemma4.errors import CheckpointError

# safetensors dtype string <-> torch dtype (the ones a Gemma-4 checkpoint can hold).
DTYPES: dict[str, torch.dtype] = {
    "F8_E4M3": torch.float8_e4m3fn,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def dtype_name(dtype: torch.dtype) -> str:
    """'float8_e4m3fn' for torch.float8_e4m3fn: the name used in messages and reports."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a safetensors file (offsets are absolute file positions)."""

    file: Path
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_header(path: str | Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Entries and metadata of a safetensors file, checked against the file's size (truncation, holes)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(str(path), None, "a safetensors file (8-byte header length)", f"{size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                str(path), None, f"a safetensors header of {n} bytes", f"a file of {size} bytes (truncated?)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(str(path), None, "a JSON safetensors header", f"unreadable header ({e})") from None
    meta = header.pop("__metadata__", None) or {}
    start = 8 + n
    entries: dict[str, TensorEntry] = {}
    for name, h in header.items():
        try:
            dtype = DTYPES[h["dtype"]]
            shape = tuple(int(d) for d in h["shape"])
            b, e = (int(x) for x in h["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                str(path), name, "a header entry with a known dtype, shape and offsets", json.dumps(h)
            ) from None
        entry = TensorEntry(path, name, dtype, shape, start + b, start + e)
        want = entry.numel * dtype.itemsize
        if e - b != want:
            raise CheckpointError(str(path), name, f"{want} bytes for {h['dtype']} {list(shape)}", f"{e - b} bytes")
        entries[name] = entry
    # Tensors past the end of the file: name the first one that is cut.
    for entry in sorted(entries.values(), key=lambda t: t.end):
        if entry.end > size:
            raise CheckpointError(
                str(path),
                entry.name,
                f"its data to end at byte {entry.end}",
                f"a file of {size} bytes (the file is truncated)",
            )
    return entries, {str(k): str(v) for k, v in meta.items()}


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of a file to be written: its name, dtype and shape (the data comes later)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def _as_buffer(data: torch.Tensor | bytes | bytearray | memoryview | np.ndarray) -> memoryview:
    """Bytes of `data` without copying where possible (a contiguous tensor is viewed, not copied)."""
    if isinstance(data, torch.Tensor):
        t = data.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        return memoryview(t.view(torch.uint8).numpy()).cast("B")
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data)).cast("B")
    return memoryview(data).cast("B")


class SafetensorsWriter:
    """Stream a safetensors file whose layout is fixed up front.

    `write(name, data)` appends bytes to tensor `name`; a tensor may arrive in several chunks, and tensors must
    arrive in the planned order. `close()` checks that every tensor got exactly its bytes.
    """

    def __init__(self, path: str | Path, tensors: Sequence[PlannedTensor], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.tensors = list(tensors)
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"{self.path}: tensor {dup!r} planned twice")
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        off = 0
        for t in self.tensors:
            header[t.name] = {
                "dtype": DTYPE_NAMES[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [off, off + t.nbytes],
            }
            off += t.nbytes
        self.data_bytes = off
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self.header_bytes = 8 + len(raw)
        self._f: BinaryIO | None = open(self.path, "wb")
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self._index = 0  # the tensor being written
        self._written = 0  # bytes of it so far

    @property
    def total_bytes(self) -> int:
        """Size of the finished file."""
        return self.header_bytes + self.data_bytes

    def write(self, name: str, data: torch.Tensor | bytes | bytearray | memoryview | np.ndarray) -> None:
        """Append `data` (a tensor or raw bytes) to tensor `name`."""
        if self._f is None:
            raise ValueError(f"{self.path}: writer is closed")
        while self._index < len(self.tensors) and self.tensors[self._index].name != name:
            cur = self.tensors[self._index]
            if self._written != cur.nbytes:
                raise ValueError(
                    f"{self.path}: tensor {cur.name!r} got {self._written} of {cur.nbytes} bytes before {name!r}"
                )
            self._index += 1
            self._written = 0
        if self._index == len(self.tensors):
            raise ValueError(f"{self.path}: tensor {name!r} is not planned (or comes out of order)")
        buf = _as_buffer(data)
        cur = self.tensors[self._index]
        if self._written + buf.nbytes > cur.nbytes:
            raise ValueError(f"{self.path}: tensor {name!r} gets more than its {cur.nbytes} bytes")
        self._f.write(buf)
        self._written += buf.nbytes

    def write_zeros(self, name: str, nbytes: int, chunk: int = 1 << 24) -> None:
        """Append `nbytes` zero bytes to tensor `name` (padding rows of a fused weight)."""
        while nbytes > 0:
            n = min(nbytes, chunk)
            self.write(name, bytes(n))
            nbytes -= n

    def close(self) -> int:
        """Finish the file; returns its size in bytes. Raises if a planned tensor is incomplete."""
        if self._f is None:
            return self.path.stat().st_size
        for i in range(self._index, len(self.tensors)):
            t = self.tensors[i]
            got = self._written if i == self._index else 0
            if got != t.nbytes:
                self.abort()
                raise ValueError(f"{self.path}: tensor {t.name!r} got {got} of {t.nbytes} bytes")
        self._index = len(self.tensors)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        return self.path.stat().st_size

    def abort(self) -> None:
        """Close without checks (the caller removes the file)."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_tensors(
    path: str | Path, tensors: Iterable[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None
) -> int:
    """Write small in-memory tensors in one go (tests, reports). Returns the file size."""
    items = list(tensors)
    plan = [PlannedTensor(n, t.dtype, tuple(t.shape)) for n, t in items]
    with SafetensorsWriter(path, plan, metadata) as w:
        for n, t in items:
            w.write(n, t)
    return Path(path).stat().st_size
