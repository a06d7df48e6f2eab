"""Gemma4Spec from every config form, checked against transformers' own model built from the same config."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers  # noqa: E402  (the dev extra has it: a broken install must fail, not skip)

from trt_gemma4.errors import CheckpointError
from trt_gemma4.spec import (
    GEMMA4_12B,
    GLOBAL,
    SLIDING,
    check_drafter_fits,
    drafter_from_config,
    hf_config_dict,
    load_drafter_spec,
    load_spec,
    spec_from_config,
)
from trt_gemma4.testing.tiny import MAIN, TP, TinyShape

# research/gemma4_arch.md §1.3 / §3: the 12B's vision and audio embedders.
VISION_12B = dict(patch_size=16, pooling_kernel_size=3, mm_embed_dim=3840, mm_posemb_size=1120, output_proj_dims=3840)
AUDIO_12B = dict(audio_embed_dim=640)


def _check_shape(spec: Any, shape: TinyShape) -> None:
    assert spec.vocab_size == shape.vocab_size
    assert spec.hidden_size == shape.hidden_size
    assert spec.intermediate_size == shape.intermediate_size
    assert spec.num_attention_heads == shape.num_heads
    assert spec.sliding_head_dim == shape.sliding_head_dim and spec.sliding_kv_heads == shape.sliding_kv_heads
    assert spec.global_head_dim == shape.global_head_dim and spec.global_kv_heads == 1
    assert spec.attention_k_eq_v and spec.sliding_window == shape.sliding_window
    assert spec.layer_types == ((SLIDING,) * 5 + (GLOBAL,)) * shape.repeats
    assert spec.final_logit_softcap == 30.0
    assert spec.rope(5).rotary_pairs == shape.global_head_dim // 8  # 0.25 of the pairs rotate
    assert spec.rope(0).rotary_pairs == shape.sliding_head_dim // 2


def _hf_language_model_params(config_path: Path) -> int:
    """Parameters of transformers' language model built (on the meta device) from a checkpoint's config.json."""
    cfg = transformers.AutoConfig.from_pretrained(str(config_path.parent))
    multimodal = hasattr(cfg, "text_config")
    cls = transformers.Gemma4UnifiedForConditionalGeneration if multimodal else transformers.Gemma4UnifiedForCausalLM
    with torch.device("meta"):
        model = cls(cfg)
    lm = model.model.language_model if multimodal else model.model
    return sum(p.numel() for p in lm.parameters())


@pytest.mark.parametrize(
    ("fixture", "shape", "multimodal"),
    [
        ("tiny_ckpt", MAIN, True),
        ("tiny_text_ckpt", MAIN, False),
        ("tiny_legacy_ckpt", MAIN, True),
        ("tiny_tp_ckpt", TP, False),
    ],
)
def test_spec_of_each_tiny_config_form(
    request: pytest.FixtureRequest, fixture: str, shape: TinyShape, multimodal: bool
) -> None:
    path: Path = request.getfixturevalue(fixture)
    spec = load_spec(path)
    _check_shape(spec, shape)
    assert spec.multimodal is multimodal
    if multimodal:
        assert (spec.vision_patch_dim, spec.vision_embed_dim, spec.audio_embed_dim) == (192, 160, 16)
    assert spec.text_parameter_count() == _hf_language_model_params(path / "config.json")


def test_config_forms_give_the_same_spec(tiny_ckpt: Path, tiny_legacy_ckpt: Path, tiny_text_ckpt: Path) -> None:
    new_form = json.loads((tiny_ckpt / "config.json").read_text())
    legacy = json.loads((tiny_legacy_ckpt / "config.json").read_text())
    assert "per_layer_config" in new_form["text_config"] and "global_head_dim" not in new_form["text_config"]
    assert "global_head_dim" in legacy["text_config"] and "per_layer_config" not in legacy["text_config"]
    assert load_spec(tiny_ckpt) == load_spec(tiny_legacy_ckpt)
    text = load_spec(tiny_text_ckpt)
    mm = load_spec(tiny_ckpt)
    assert (
        dataclasses.replace(
            mm,
            multimodal=False,
            vision_patch_dim=None,
            vision_embed_dim=None,
            vision_posemb_size=None,
            audio_embed_dim=None,
        )
        == text
    )


def test_drafter_spec_and_its_fit_to_the_target(tiny_drafter_ckpt: Path, tiny_ckpt: Path, tiny_tp_ckpt: Path) -> None:
    d = load_drafter_spec(tiny_drafter_ckpt)
    assert d.backbone_hidden_size == MAIN.hidden_size and d.vocab_size == MAIN.vocab_size
    assert d.layer_types == (SLIDING, SLIDING, SLIDING, GLOBAL)
    assert (d.sliding_head_dim, d.global_head_dim) == (MAIN.sliding_head_dim, MAIN.global_head_dim)
    assert d.q_size(3) == MAIN.num_heads * MAIN.global_head_dim
    check_drafter_fits(load_spec(tiny_ckpt), d)
    with pytest.raises(CheckpointError, match="backbone_hidden_size 256"):
        check_drafter_fits(load_spec(tiny_tp_ckpt), d)
    with pytest.raises(CheckpointError, match="gemma4_unified_assistant"):
        drafter_from_config(json.loads((tiny_ckpt / "config.json").read_text()))


def _12b_hf_config() -> Any:
    tc = {k: v for k, v in hf_config_dict(GEMMA4_12B).items() if k != "model_type"}
    return transformers.Gemma4UnifiedConfig(
        text_config=transformers.Gemma4UnifiedTextConfig(**tc),
        vision_config=transformers.Gemma4UnifiedVisionConfig(**VISION_12B),
        audio_config=transformers.Gemma4UnifiedAudioConfig(**AUDIO_12B),
    )


def test_12b_preset_counts_the_published_parameters() -> None:
    cfg = _12b_hf_config()
    with torch.device("meta"):
        model = transformers.Gemma4UnifiedForConditionalGeneration(cfg)
    assert sum(p.numel() for p in model.parameters()) == 11_959_730_176
    assert sum(p.numel() for p in model.model.language_model.parameters()) == GEMMA4_12B.text_parameter_count()
    assert GEMMA4_12B.text_parameter_count() == 11_907_350_272


@pytest.mark.parametrize("form", ["per_layer", "global_head_dim"])
def test_12b_spec_round_trips_through_the_hf_config(form: str) -> None:
    cfg = _12b_hf_config().to_dict()
    if form == "global_head_dim":
        cfg["text_config"] = hf_config_dict(GEMMA4_12B, form)
    spec = spec_from_config(cfg)
    assert spec == GEMMA4_12B.with_drafter(None)
    assert spec.global_layers == [5, 11, 17, 23, 29, 35, 41, 47]
    assert spec.num_kv_heads_per_layer(tp=2)[:6] == [8, 8, 8, 8, 8, 4]
    assert spec.rope(5).rotary_pairs == 64 and spec.rope(0).rotary_pairs == 128


def _text_cfg(tiny_ckpt: Path) -> dict[str, Any]:
    return copy.deepcopy(json.loads((tiny_ckpt / "config.json").read_text()))


def test_config_errors_name_the_field(tiny_ckpt: Path) -> None:
    cfg = _text_cfg(tiny_ckpt)
    cfg["model_type"] = "gemma3"
    with pytest.raises(CheckpointError, match="model_type") as e:
        spec_from_config(cfg, "x/config.json")
    assert e.value.file == "x/config.json" and "'gemma3'" in e.value.found

    cfg = _text_cfg(tiny_ckpt)
    cfg["text_config"]["per_layer_config"]["11"] = {"head_dim": 64, "num_key_value_heads": 1}
    with pytest.raises(CheckpointError, match="global head_dim 128 on layer 11"):
        spec_from_config(cfg)

    cfg = _text_cfg(tiny_ckpt)
    cfg["text_config"]["layer_types"] = cfg["text_config"]["layer_types"][:-1]
    with pytest.raises(CheckpointError, match="12 layer_types"):
        spec_from_config(cfg)

    cfg = _text_cfg(tiny_ckpt)
    del cfg["text_config"]["hidden_size"]
    with pytest.raises(CheckpointError, match="hidden_size"):
        spec_from_config(cfg)


def test_spec_dict_round_trip() -> None:
    assert type(GEMMA4_12B).from_dict(json.loads(json.dumps(GEMMA4_12B.to_dict()))) == GEMMA4_12B
