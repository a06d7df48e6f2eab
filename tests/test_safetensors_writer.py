"""The streaming safetensors writer: files it writes read back with the safetensors library itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trt_gemma4.checkpoint.safetensors_writer import PlannedTensor, SafetensorsWriter, read_header, write_tensors
from trt_gemma4.errors import CheckpointError


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randint(0, 120, (300, 17), dtype=torch.uint8, generator=g).view(torch.float8_e4m3fn),
        "a.scale": torch.rand(3, 1, generator=g),
        "norm": torch.randn(7, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(0.5),
        "empty": torch.zeros(0, 4),
    }


def test_streamed_chunks_read_back_with_safe_open(tmp_path: Path) -> None:
    ts = _tensors()
    plan = [PlannedTensor(n, t.dtype, tuple(t.shape)) for n, t in ts.items()]
    path = tmp_path / "x.safetensors"
    with SafetensorsWriter(path, plan, {"format": "pt", "note": "streamed"}) as w:
        for r0 in range(0, 300, 64):  # the big one in chunks of rows, as the converter copies the embedding
            w.write("a.weight", ts["a.weight"][r0 : r0 + 64])
        for n in ("a.scale", "norm", "scalar", "empty"):
            w.write(n, ts[n])
    assert w.total_bytes == path.stat().st_size
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "streamed"}
        assert set(f.keys()) == set(ts)
        for n, t in ts.items():
            got = f.get_tensor(n)
            assert got.dtype == t.dtype and got.shape == t.shape
            assert torch.equal(got.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_len % 8 == 0


def test_zeros_and_non_contiguous_tensors(tmp_path: Path) -> None:
    src = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    path = tmp_path / "z.safetensors"
    with SafetensorsWriter(path, [PlannedTensor("t", torch.float32, (8, 6))]) as w:
        w.write("t", src[:4, 2:])  # a column slice: not contiguous
        w.write_zeros("t", 4 * 6 * 4)
    with safe_open(str(path), framework="pt") as f:
        t = f.get_tensor("t")
    assert torch.equal(t[:4], src[:4, 2:]) and not t[4:].any()


def test_out_of_order_short_and_long_writes_are_refused(tmp_path: Path) -> None:
    plan = [PlannedTensor("a", torch.float32, (2,)), PlannedTensor("b", torch.float32, (2,))]
    w = SafetensorsWriter(tmp_path / "o.safetensors", plan)
    with pytest.raises(ValueError, match="got 4 of 8 bytes before 'b'"):
        w.write("a", torch.zeros(1))
        w.write("b", torch.zeros(2))
    w.abort()
    w = SafetensorsWriter(tmp_path / "o2.safetensors", plan)
    with pytest.raises(ValueError, match="more than its 8 bytes"):
        w.write("a", torch.zeros(3))
    w.abort()
    w = SafetensorsWriter(tmp_path / "o3.safetensors", plan)
    w.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="'b' got 0 of 8 bytes"):
        w.close()
    with pytest.raises(ValueError, match="planned twice"):
        SafetensorsWriter(tmp_path / "o4.safetensors", plan + plan[:1])


def test_read_header_matches_the_library_and_names_a_truncated_tensor(tmp_path: Path) -> None:
    ts = _tensors()
    path = tmp_path / "lib.safetensors"
    save_file(ts, str(path))
    entries, meta = read_header(path)
    assert set(entries) == set(ts)
    for n, t in ts.items():
        assert entries[n].dtype == t.dtype and entries[n].shape == tuple(t.shape)
        assert entries[n].nbytes == t.numel() * t.element_size()
    last = max(entries.values(), key=lambda e: e.end)
    data = path.read_bytes()
    path.write_bytes(data[: last.end - 10])
    with pytest.raises(CheckpointError) as e:
        read_header(path)
    assert e.value.tensor == last.name and "truncated" in str(e.value)
    path.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="header"):
        read_header(path)


def test_write_tensors_round_trip(tmp_path: Path) -> None:
    ts = {"x": torch.randn(3, 4), "y": torch.ones(2, dtype=torch.bfloat16)}
    size = write_tensors(tmp_path / "w.safetensors", ts.items())
    assert size == (tmp_path / "w.safetensors").stat().st_size
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor("x"), ts["x"]) and torch.equal(f.get_tensor("y"), ts["y"])
