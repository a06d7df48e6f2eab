"""`trt-gemma4 inspect`: what it reports about a real tiny export, as text and as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trt_gemma4.checkpoint.modelopt import ModelOptCheckpoint
from trt_gemma4.cli import main
from trt_gemma4.testing.edit import copy_export, edit_tensors, shard_export


def _inspect_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_text_report_through_the_cli(tiny_ckpt: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "trt_gemma4.cli", "inspect", str(tiny_ckpt)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    ckpt = ModelOptCheckpoint.open(tiny_ckpt)
    assert ckpt.spec.summary() in out
    assert "quant_algo fp8_pb_wo, kv_cache_quant_algo FP8, exported by ModelOpt 0.47.0" in out
    assert "sliding layers (10: 0-4, 6-10):" in out and "global layers (2: 5, 11):" in out
    assert "self_attn.k_proj.weight_scale" in out and "scale blocks [1, 1]" in out  # the 0-D single-block scale
    assert "quantized (fp8 + 128x128 block scales): 83 linears" in out
    assert "model.vision_embedder.patch_dense" in out.split("not quantized:")[1].splitlines()[0]
    k_sliding = [ckpt.kv_scales(i)[0] for i in ckpt.spec.sliding_layers]
    assert f"k_scale {min(k_sliding):.4g} .. {max(k_sliding):.4g}" in out
    assert out.rstrip().endswith("validation: OK")


def test_json_report(tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rep = _inspect_json(tiny_ckpt, capsys)
    ckpt = ModelOptCheckpoint.open(tiny_ckpt)
    assert type(ckpt.spec).from_dict(rep["spec"]) == ckpt.spec and rep["quant_algo"] == "fp8_pb_wo"
    glob = rep["layer_types"]["global"]
    assert glob["layers"] == [5, 11]
    assert "self_attn.v_proj.weight" not in glob["tensors"] and "self_attn.v_proj.v_scale" in glob["tensors"]
    assert glob["tensors"]["self_attn.q_proj.weight"] == {
        "dtype": "float8_e4m3fn",
        "shape": [512, 128],
        "scale_blocks": [4, 1],
    }
    assert rep["layer_types"]["sliding"]["tensors"]["mlp.gate_proj.weight_scale"]["shape"] == [3, 1, 1, 1]
    assert "model.embed_audio.embedding_projection" in rep["quantized_modules"]
    assert set(rep["not_quantized_modules"]) == {
        "model.language_model.embed_tokens",
        "model.vision_embedder.patch_dense",
        "model.embed_vision.embedding_projection",
    }
    assert sum(rep["bytes_by_dtype"].values()) == sum(e.nbytes for e in ckpt.entries.values())
    per_layer = rep["kv_scales"]["per_layer"]
    assert [p["layer"] for p in per_layer] == list(range(12))
    for p in per_layer:
        assert (p["k_scale"], p["v_scale"]) == ckpt.kv_scales(p["layer"])
    g = rep["kv_scales"]["by_layer_type"]["global"]
    assert g["v_max"] == max(ckpt.kv_scales(i)[1] for i in (5, 11))


def test_text_only_sharded_and_scale_free_exports(
    tiny_text_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = copy_export(tiny_text_ckpt, tmp_path / "ckpt")
    edit_tensors(ckpt, lambda ts: [ts.pop(k) for k in [k for k in ts if k.endswith(("k_scale", "v_scale"))]])
    files = shard_export(ckpt, 2)
    rep = _inspect_json(ckpt, capsys)
    assert [f["name"] for f in rep["files"]] == files
    assert len(rep["quantized_modules"]) == 82 and rep["not_quantized_modules"] == ["model.embed_tokens"]
    assert rep["kv_scales"] == {"present": False, "per_layer": [], "by_layer_type": {}, "trusted_by_version": True}
    assert main(["inspect", str(ckpt)]) == 0
    assert "KV-cache scales: none in the export" in capsys.readouterr().out


def test_inspect_reports_a_bad_export_as_one_line(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = copy_export(tiny_ckpt, tmp_path / "ckpt")
    edit_tensors(ckpt, lambda ts: ts.update({"model.language_model.norm.weight": torch.ones(64, dtype=torch.bfloat16)}))
    assert main(["inspect", str(ckpt)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "tensor 'model.language_model.norm.weight'" in captured.err
    assert "expected shape [128] (hidden_size 128 in config.json), found shape [64]" in captured.err
