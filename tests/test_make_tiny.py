"""The tiny real checkpoints: what ModelOpt wrote, and the make-tiny command users run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open


def _tensors(ckpt: Path) -> dict[str, tuple[str, list[int]]]:
    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                sl = sf.get_slice(k)
                out[k] = (sl.get_dtype(), list(sl.get_shape()))
    return out


def test_tiny_export_is_fp8_pb_wo_with_fp8_kv(tiny_ckpt: Path) -> None:
    q = json.loads((tiny_ckpt / "hf_quant_config.json").read_text())["quantization"]
    assert q["quant_algo"] == "fp8_pb_wo"
    assert q["kv_cache_quant_algo"] == "FP8"


def test_tiny_export_has_partial_blocks_and_a_single_block_matrix(tiny_ckpt: Path) -> None:
    t = _tensors(tiny_ckpt)
    fp8 = {k: s for k, (d, s) in t.items() if d == "F8_E4M3"}
    assert any(s[0] % 128 or s[1] % 128 for s in fp8.values()), "no partial 128-block"
    zero_d = [k for k, (d, s) in t.items() if k.endswith("weight_scale") and s == []]
    assert zero_d, "no single-block (0-D scale) matrix"
    four_d = [k for k, (d, s) in t.items() if k.endswith("weight_scale") and len(s) == 4]
    assert four_d


def test_tiny_export_keeps_hub_key_names_and_embedders(tiny_ckpt: Path) -> None:
    t = _tensors(tiny_ckpt)
    assert "model.language_model.embed_tokens.weight" in t
    assert t["model.vision_embedder.patch_dense.weight"][0] == "BF16"
    assert "model.embed_audio.embedding_projection.weight" in t
    assert not any(k.startswith("lm_head") for k in t)
    # global layers (K=V): no v_proj weight, but a v_scale
    assert "model.language_model.layers.5.self_attn.v_proj.weight" not in t
    assert "model.language_model.layers.5.self_attn.v_proj.v_scale" in t


def test_config_forms(tiny_ckpt: Path, tiny_legacy_ckpt: Path) -> None:
    new = json.loads((tiny_ckpt / "config.json").read_text())["text_config"]
    old = json.loads((tiny_legacy_ckpt / "config.json").read_text())["text_config"]
    assert "per_layer_config" in new and "global_head_dim" not in new
    assert old["global_head_dim"] == 128 and "per_layer_config" not in old


def test_text_only_variant(tiny_text_ckpt: Path) -> None:
    t = _tensors(tiny_text_ckpt)
    assert "model.embed_tokens.weight" in t
    assert not any("vision" in k or "audio" in k for k in t)


def test_tp_shape_is_shardable_four_ways(tiny_tp_ckpt: Path) -> None:
    t = _tensors(tiny_tp_ckpt)
    for k, (d, s) in t.items():
        if d != "F8_E4M3":
            continue
        if any(p in k for p in ("q_proj", "gate_proj", "up_proj")):
            assert s[0] % (128 * 4) == 0, k
        if any(p in k for p in ("o_proj", "down_proj")):
            assert s[1] % (128 * 4) == 0, k
        if ".layers.0." in k and ("k_proj" in k or "v_proj" in k):
            assert s[0] % (128 * 4) == 0, k


def test_drafter_is_bf16_assistant(tiny_drafter_ckpt: Path) -> None:
    cfg = json.loads((tiny_drafter_ckpt / "config.json").read_text())
    assert cfg["model_type"] == "gemma4_unified_assistant"
    t = _tensors(tiny_drafter_ckpt)
    assert "pre_projection.weight" in t and "post_projection.weight" in t
    assert all(d != "F8_E4M3" for d, _ in t.values())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trt_gemma4.cli", *args], capture_output=True, text=True)


def test_help_explains_every_command() -> None:
    r = _cli("--help")
    assert r.returncode == 0
    assert "make-tiny" in r.stdout and "fp8_pb_wo" in r.stdout


@pytest.mark.slow
def test_make_tiny_command_writes_text_only_export(tmp_path: Path) -> None:
    out = tmp_path / "t"
    r = _cli("make-tiny", str(out), "--text-only")
    assert r.returncode == 0, r.stderr
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    # refuses to overwrite without --overwrite, with one clear line and no traceback
    r = _cli("make-tiny", str(out))
    assert r.returncode == 1
    assert "exists and is not empty" in r.stderr and "Traceback" not in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
