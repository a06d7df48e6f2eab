"""ModelOptCheckpoint on the tiny real exports: lazy tensors, scale forms, dequantization, KV scales, shards."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import torch

from trt_gemma4.checkpoint.modelopt import FP8, ModelOptCheckpoint, dequantize_blocks, parse_version
from trt_gemma4.errors import CheckpointError
from trt_gemma4.testing.edit import copy_export, edit_json, edit_tensors, shard_export


@pytest.mark.parametrize("fixture", ["tiny_ckpt", "tiny_text_ckpt", "tiny_legacy_ckpt", "tiny_tp_ckpt"])
def test_every_tiny_export_validates(request: pytest.FixtureRequest, fixture: str) -> None:
    path: Path = request.getfixturevalue(fixture)
    with ModelOptCheckpoint.open(path) as ckpt:
        ckpt.validate()
        assert ckpt.quant_algo == "fp8_pb_wo" and ckpt.kv_cache_quant_algo == "FP8"
        assert ckpt.modelopt_version is not None and ckpt.kv_scales_version_ok
        assert ckpt.layer_indices() == list(range(ckpt.spec.num_layers))
        assert ckpt.prefix == ("model.language_model." if ckpt.spec.multimodal else "model.")


def test_open_reads_headers_only(tiny_ckpt: Path) -> None:
    ckpt = ModelOptCheckpoint.open(tiny_ckpt)
    assert not ckpt._handles  # no file mapped until a tensor is asked for
    name = ckpt.layer_key(0, "mlp.gate_proj.weight")
    e = ckpt.entry(name)
    assert (e.dtype, e.shape) == (FP8, (320, 128))
    rows = ckpt.slice(name)[64:192]
    assert torch.equal(rows.view(torch.uint8), ckpt.tensor(name)[64:192].view(torch.uint8))


def test_quantized_is_decided_from_tensors_not_the_exclude_list(tiny_ckpt: Path) -> None:
    ckpt = ModelOptCheckpoint.open(tiny_ckpt)
    assert ckpt.is_quantized(ckpt.layer_key(0, "self_attn.q_proj"))
    assert ckpt.is_quantized("model.embed_audio.embedding_projection")  # ModelOpt does not exclude audio
    assert not ckpt.is_quantized(ckpt.text_key("embed_tokens"))
    # On disk the vision embedder is model.vision_embedder.*, which the export's exclude pattern does not match:
    # it is still (correctly) seen as not quantized.
    patch_dense = "model.vision_embedder.patch_dense"
    assert not any(fnmatch.fnmatch(patch_dense, p) for p in ckpt.quant.exclude_modules)
    assert not ckpt.is_quantized(patch_dense) and ckpt.entry(f"{patch_dense}.weight").dtype == torch.bfloat16


def test_scale_grid_forms_are_normalized(tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = ModelOptCheckpoint.open(tiny_ckpt)
    four_d = ckpt.layer_key(0, "mlp.gate_proj")
    zero_d = ckpt.layer_key(0, "self_attn.k_proj")  # [128, 128]: one block, scale stored 0-D
    assert ckpt.entry(f"{four_d}.weight_scale").shape == (3, 1, 1, 1)
    assert ckpt.entry(f"{zero_d}.weight_scale").shape == ()
    grid4, grid0 = ckpt.weight_scale_grid(four_d), ckpt.weight_scale_grid(zero_d)
    assert grid4.shape == (3, 1) and grid0.shape == (1, 1)

    two_d = copy_export(tiny_ckpt, tmp_path / "two_d")

    def to_2d(ts: dict[str, torch.Tensor]) -> None:
        for k in [k for k in ts if k.endswith("weight_scale")]:
            if ts[k].dim() == 4:
                ts[k] = ts[k].reshape(ts[k].shape[0], ts[k].shape[2])

    edit_tensors(two_d, to_2d)
    other = ModelOptCheckpoint.open(two_d)
    other.validate()
    assert other.entry(f"{four_d}.weight_scale").shape == (3, 1)
    assert torch.equal(other.weight_scale_grid(four_d), grid4)

    # each form is checked against the weight's block count
    for bad in (torch.tensor(0.01), torch.full((2, 1), 0.01), torch.full((3, 2), 0.01)):
        edit_tensors(two_d, lambda ts, bad=bad: ts.update({f"{four_d}.weight_scale": bad}))
        with pytest.raises(CheckpointError) as e:
            ModelOptCheckpoint.open(two_d).validate()
        assert e.value.tensor == f"{four_d}.weight_scale"
        assert e.value.expected.endswith("shape [3, 1, 1, 1] or [3, 1]") and e.value.found == f"shape {list(bad.shape)}"


def test_dequantized_matches_the_weights_before_quantization(tiny_text_ckpt: Path) -> None:
    from trt_gemma4.testing.tiny import build_hf_model

    original = build_hf_model("main", text_only=True, seed=0).state_dict()  # same seed as the export
    ckpt = ModelOptCheckpoint.open(tiny_text_ckpt)
    for module in (
        "model.layers.0.mlp.down_proj",
        "model.layers.5.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
    ):
        w = original[f"{module}.weight"].float()
        deq = ckpt.dequantized(module)
        assert deq.shape == w.shape
        assert (deq - w).norm() / w.norm() < 3e-2  # E4M3 noise
        # the scale is the dequant multiplier, per-block amax / 448
        grid = ckpt.weight_scale_grid(module)
        amax = torch.nn.functional.pad(w.abs(), (0, -w.shape[1] % 128, 0, -w.shape[0] % 128))
        amax = amax.reshape(grid.shape[0], 128, grid.shape[1], 128).amax(dim=(1, 3))
        assert torch.allclose(grid, amax / 448, rtol=1e-2)
    q = ckpt.tensor("model.layers.0.mlp.down_proj.weight")
    assert torch.equal(
        dequantize_blocks(q, ckpt.weight_scale_grid("model.layers.0.mlp.down_proj"), torch.bfloat16),
        ckpt.dequantized("model.layers.0.mlp.down_proj", torch.bfloat16),
    )


def test_kv_scales_and_their_absence(tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = ModelOptCheckpoint.open(tiny_ckpt)
    for layer in (0, 5):  # sliding, and global (k_eq_v: v_scale but no v_proj)
        k, v = ckpt.kv_scales(layer)
        assert 0 < k < 1 and 0 < v < 1
    assert ckpt.layer_key(5, "self_attn.v_proj.weight") not in ckpt
    no_kv = copy_export(tiny_ckpt, tmp_path / "fp8_cast")
    edit_tensors(no_kv, lambda ts: [ts.pop(k) for k in [k for k in ts if k.endswith(("k_scale", "v_scale"))]])
    other = ModelOptCheckpoint.open(no_kv)
    other.validate()  # fp8_cast exports write no scales: allowed
    assert other.kv_scales(0) is None


def test_sharded_export_reads_like_the_single_file(tiny_ckpt: Path, tmp_path: Path) -> None:
    sharded = copy_export(tiny_ckpt, tmp_path / "sharded")
    files = shard_export(sharded, 3)
    one, many = ModelOptCheckpoint.open(tiny_ckpt), ModelOptCheckpoint.open(sharded)
    many.validate()
    assert one.keys() == many.keys()
    assert {e.file.name for e in many.entries.values()} == set(files)
    for name in (one.layer_key(3, "self_attn.o_proj.weight"), one.text_key("embed_tokens.weight")):
        assert torch.equal(one.tensor(name).view(torch.uint8), many.tensor(name).view(torch.uint8))
    # the index must agree with the shards
    moved = next(n for n, e in many.entries.items() if e.file.name != files[0])
    edit_json(sharded / "model.safetensors.index.json", lambda d: d["weight_map"].update({moved: files[0]}))
    with pytest.raises(CheckpointError) as e:
        ModelOptCheckpoint.open(sharded)
    assert e.value.tensor == moved and e.value.file.endswith("model.safetensors.index.json")


def test_kv_scale_version_gate(tiny_ckpt: Path, tmp_path: Path) -> None:
    assert parse_version("0.47.0") == (0, 47, 0) and parse_version("0.37.0rc1") == (0, 37, 0)
    assert parse_version(None) is None
    old = copy_export(tiny_ckpt, tmp_path / "old")
    edit_json(old / "hf_quant_config.json", lambda d: d["producer"].update(version="0.25.0"))
    ckpt = ModelOptCheckpoint.open(old)
    assert ckpt.modelopt_version == "0.25.0" and not ckpt.kv_scales_version_ok
