"""Damaged or inconsistent exports: each gives one clear message naming the file and tensor with expected vs
found, through the reader and through the real command line (inspect and convert), and nothing is written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from trt_gemma4.checkpoint.modelopt import ModelOptCheckpoint
from trt_gemma4.checkpoint.safetensors_writer import read_header
from trt_gemma4.errors import CheckpointError
from trt_gemma4.testing.edit import copy_export, edit_json, edit_tensors

L = "model.language_model.layers."


@dataclass(frozen=True)
class Case:
    corrupt: Callable[[Path], None]
    file: str  # the file the message must name (its last path component)
    tensor: str | None  # the tensor it must name
    says: tuple[str, ...]  # further words the message must contain


def _set_scale(name: str, value: float) -> Callable[[Path], None]:
    def corrupt(ckpt: Path) -> None:
        def edit(ts: dict[str, torch.Tensor]) -> None:
            t = ts[name].clone()
            t.view(-1)[0] = value
            ts[name] = t

        edit_tensors(ckpt, edit)

    return corrupt


def _truncate(ckpt: Path) -> None:
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])


def _last_tensor(ckpt: Path) -> str:
    entries, _ = read_header(ckpt / "model.safetensors")
    return max(entries.values(), key=lambda e: e.end).name


def _text_config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda ckpt: edit_json(ckpt / "config.json", lambda d: edit(d["text_config"]))


def _fewer_layers(tc: dict) -> None:
    tc["num_hidden_layers"] = 11
    tc["layer_types"] = tc["layer_types"][:11]
    tc["per_layer_config"] = {k: v for k, v in tc["per_layer_config"].items() if int(k) < 11}


def _unknown_algo(ckpt: Path) -> None:
    edit_json(ckpt / "hf_quant_config.json", lambda d: d["quantization"].update(quant_algo="nvfp4"))
    edit_json(ckpt / "config.json", lambda d: d["quantization_config"].update(quant_algo="nvfp4"))


def _empty(ckpt: Path) -> None:
    shutil.rmtree(ckpt)
    ckpt.mkdir()


CASES: dict[str, Case] = {
    "truncated_safetensors": Case(_truncate, "model.safetensors", "<last>", ("truncated",)),
    "wrong_dtype": Case(
        lambda c: edit_tensors(
            c, lambda ts: ts.update({f"{L}1.self_attn.q_proj.weight": torch.zeros(256, 128, dtype=torch.bfloat16)})
        ),
        "model.safetensors",
        f"{L}1.self_attn.q_proj.weight",
        ("float8_e4m3fn", "bfloat16"),
    ),
    "scale_grid_off_by_one_block": Case(
        lambda c: edit_tensors(
            c, lambda ts: ts.update({f"{L}2.mlp.gate_proj.weight_scale": torch.full((4, 1, 1, 1), 0.01)})
        ),
        "model.safetensors",
        f"{L}2.mlp.gate_proj.weight_scale",
        ("3x1", "[320, 128]", "[4, 1, 1, 1]"),
    ),
    "nan_scale": Case(
        _set_scale(f"{L}3.self_attn.q_proj.weight_scale", float("nan")),
        "model.safetensors",
        f"{L}3.self_attn.q_proj.weight_scale",
        ("finite positive", "nan"),
    ),
    "inf_scale": Case(
        _set_scale(f"{L}3.mlp.down_proj.weight_scale", float("inf")),
        "model.safetensors",
        f"{L}3.mlp.down_proj.weight_scale",
        ("finite positive", "inf"),
    ),
    "zero_scale": Case(
        _set_scale(f"{L}4.self_attn.o_proj.weight_scale", 0.0),
        "model.safetensors",
        f"{L}4.self_attn.o_proj.weight_scale",
        ("finite positive", "found 0 at block"),
    ),
    "negative_scale": Case(
        _set_scale(f"{L}6.mlp.up_proj.weight_scale", -0.01),
        "model.safetensors",
        f"{L}6.mlp.up_proj.weight_scale",
        ("finite positive", "-0.01"),
    ),
    "negative_kv_scale": Case(
        _set_scale(f"{L}7.self_attn.k_proj.k_scale", -0.5),
        "model.safetensors",
        f"{L}7.self_attn.k_proj.k_scale",
        ("KV-cache scale", "-0.5"),
    ),
    "missing_tensor": Case(
        lambda c: edit_tensors(c, lambda ts: ts.pop(f"{L}8.mlp.up_proj.weight")),
        "model.safetensors",
        f"{L}8.mlp.up_proj.weight",
        ("sliding layer 8", "no such tensor"),
    ),
    "v_proj_on_a_k_eq_v_layer": Case(
        lambda c: edit_tensors(
            c, lambda ts: ts.update({f"{L}5.self_attn.v_proj.weight": ts[f"{L}5.self_attn.k_proj.weight"].clone()})
        ),
        "model.safetensors",
        f"{L}5.self_attn.v_proj.weight",
        ("only the tensors of a global layer (layer 5)", "attention_k_eq_v"),
    ),
    "quantized_vision_embedder": Case(
        lambda c: edit_tensors(
            c,
            lambda ts: ts.update(
                {
                    "model.vision_embedder.patch_dense.weight": ts["model.vision_embedder.patch_dense.weight"].to(
                        torch.float8_e4m3fn
                    )
                }
            ),
        ),
        "model.safetensors",
        "model.vision_embedder.patch_dense.weight",
        ("vision embedder", "float8_e4m3fn"),
    ),
    "unknown_quant_algo": Case(_unknown_algo, "hf_quant_config.json", None, ("fp8_pb_wo", "'nvfp4'")),
    "config_hidden_size_disagrees": Case(
        _text_config(lambda tc: tc.update(hidden_size=256)),
        "model.safetensors",
        "model.language_model.embed_tokens.weight",
        ("hidden_size 256", "config.json", "[512, 128]"),
    ),
    "config_layer_count_disagrees": Case(
        _text_config(_fewer_layers),
        "model.safetensors",
        "<first of layer 11>",
        ("11 decoder layers", "12 layers"),
    ),
    "config_kv_heads_disagree": Case(
        _text_config(lambda tc: tc.update(num_key_value_heads=4)),
        "model.safetensors",
        f"{L}0.self_attn.k_proj.weight",
        ("4 KV heads", "[256, 128]", "[128, 128]"),
    ),
    "no_config": Case(lambda c: (c / "config.json").unlink(), "config.json", None, ("no such file",)),
    "empty_directory": Case(_empty, "<ckpt>", None, ("empty directory",)),
}


@pytest.fixture(params=sorted(CASES))
def broken(request: pytest.FixtureRequest, tiny_ckpt: Path, tmp_path: Path) -> tuple[Path, Case, str | None]:
    """(corrupted copy of the tiny export, the case, the tensor its message must name)."""
    case = CASES[request.param]
    ckpt = copy_export(tiny_ckpt, tmp_path / "ckpt")
    tensor = case.tensor
    if tensor == "<last>":
        tensor = _last_tensor(ckpt)
    elif tensor == "<first of layer 11>":
        entries, _ = read_header(ckpt / "model.safetensors")
        tensor = sorted(n for n in entries if n.startswith(f"{L}11."))[0]
    case.corrupt(ckpt)
    return ckpt, case, tensor


def _file_name(case: Case, ckpt: Path) -> str:
    return ckpt.name if case.file == "<ckpt>" else case.file


def test_reader_names_file_and_tensor(broken: tuple[Path, Case, str | None]) -> None:
    ckpt, case, tensor = broken
    with pytest.raises(CheckpointError) as e:
        ModelOptCheckpoint.open(ckpt).validate()
    assert Path(e.value.file).name == _file_name(case, ckpt)
    assert e.value.tensor == tensor
    msg = str(e.value)
    assert "expected" in msg and "found" in msg
    for word in case.says:
        assert word in msg, f"{word!r} not in: {msg}"


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "trt_gemma4.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_cli_inspect_and_convert_fail_cleanly(broken: tuple[Path, Case, str | None], tmp_path: Path) -> None:
    ckpt, case, tensor = broken
    out = tmp_path / "outdir" / "converted"
    procs = {"inspect": _cli("inspect", str(ckpt)), "convert": _cli("convert", str(ckpt), str(out))}
    for cmd, p in procs.items():  # run side by side: two interpreter starts cost the time of one
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 1, (cmd, stderr)
        assert stdout == ""
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (cmd, stderr)
        assert "Traceback" not in stderr
        assert lines[0].startswith(f"trt-gemma4 {cmd}: error: ")
        assert _file_name(case, ckpt) in lines[0] and "expected" in lines[0] and "found" in lines[0]
        if tensor is not None:
            assert f"tensor '{tensor}'" in lines[0]
    assert not out.parent.exists()  # nothing written, not even the parent directory


def test_debug_shows_the_traceback(tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = copy_export(tiny_ckpt, tmp_path / "ckpt")
    CASES["missing_tensor"].corrupt(ckpt)
    p = _cli("--debug", "inspect", str(ckpt))
    _, stderr = p.communicate(timeout=120)
    assert p.returncode != 0 and "Traceback" in stderr and "CheckpointError" in stderr


def test_quant_algo_is_compared_case_insensitively(tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = copy_export(tiny_ckpt, tmp_path / "ckpt")
    edit_json(ckpt / "hf_quant_config.json", lambda d: d["quantization"].update(quant_algo="FP8_PB_WO"))
    ModelOptCheckpoint.open(ckpt).validate()
