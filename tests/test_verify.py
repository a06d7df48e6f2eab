"""`trt-gemma4 verify` and `trt-gemma4 calibrate-kv` on the tiny model, through the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import transformers  # noqa: F401  (the dev extra has it: a broken install must fail, not skip)

from trt_gemma4.cli import main
from trt_gemma4.convert import convert

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def converted(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verify")
    convert(tiny_ckpt, root / "tp1")
    convert(tiny_ckpt, root / "pp2", pp=2)
    return {"tp1": root / "tp1", "pp2": root / "pp2"}


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    rc = main(argv)
    return rc, json.loads(capsys.readouterr().out)


def test_verify_passes_in_fp32(converted: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _json(capsys, ["verify", str(converted["tp1"]), "--json", "--greedy-tokens", "16"])
    assert rc == 0 and out["pass"] is True
    assert out["mode"] == "model" and out["prompt_lengths"] == [40, 1, 19]  # 2 x window 16 + 8, 1, window + 3
    assert out["rel_logit_error"] <= 1e-4
    assert out["greedy_tokens_equal"] == out["greedy_tokens_total"] == 48


def test_verify_layer_mode_streams_a_pipeline_checkpoint(
    converted: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _json(capsys, ["verify", str(converted["pp2"]), "--mode", "layers", "--json", "--prompt-lengths", "37,1"])
    assert rc == 0 and out["pass"] is True and out["pp"] == 2
    assert len(out["layer_rel_errors"]) == 12 and max(out["layer_rel_errors"]) <= 1e-5


def test_verify_fails_when_the_tolerance_is_not_met(
    converted: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """An FP8 KV cache moves this tiny model's logits far beyond 1e-4: verify says FAIL and exits 1."""
    rc = main(["verify", str(converted["tp1"]), "--kv-dtype", "fp8", "--greedy-tokens", "0", "--prompt-lengths", "40"])
    text = capsys.readouterr().out
    assert rc == 1 and text.rstrip().endswith("FAIL") and "fp8 KV cache" in text


def test_verify_bf16_is_judged_against_hf_in_bf16(
    converted: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _json(capsys, ["verify", str(converted["tp1"]), "--dtype", "bf16", "--json", "--greedy-tokens", "0"])
    assert out["hf_low_precision_rel_error"] > 0
    assert rc == (0 if out["rel_logit_error"] <= max(3e-2, 1.5 * out["hf_low_precision_rel_error"]) else 1)


def test_verify_without_transformers_says_which_extra(
    converted: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    rc = main(["verify", str(converted["tp1"])])
    err = capsys.readouterr().err
    assert rc == 1 and "'tiny' extra" in err and len(err.strip().splitlines()) == 1


def test_verify_engine_needs_tensorrt_llm(converted: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import tensorrt_llm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT-LLM is installed here")
    rc = main(["verify", str(converted["tp1"]), "--engine", str(converted["tp1"] / "no-engine")])
    assert rc == 1 and "TensorRT-LLM 1.2.1" in capsys.readouterr().err


def test_calibrate_kv_reports_amax_bounds_scales_and_errors(
    tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _json(capsys, ["calibrate-kv", str(tiny_ckpt), "--json", "--num-prompts", "2"])
    assert rc == 0 and out["modelopt_version"] == "0.47.0" and out["prompt_lengths"] == [40, 40]
    assert len(out["layers"]) == 12
    for r in out["layers"]:
        assert r["v_amax"] <= r["v_bound"] and r["k_amax"] <= r["k_bound"]
        assert r["checkpoint_k_scale"] > 0 and r["checkpoint_v_scale"] > 0
        assert 0 < r["error_bf16"] < r["error_fp8_identity"]
        assert r["error_fp8_checkpoint"] > 0 and isinstance(r["checkpoint_scales_clip"], bool)
    rc = main(["calibrate-kv", str(tiny_ckpt), "--num-prompts", "1", "--prompt-len", "20"])
    text = capsys.readouterr().out
    assert rc == 0 and "written by ModelOpt 0.47.0" in text and "worst FP8 attention-output error" in text


def test_calibrate_kv_on_text_prompts(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tokenizers  # noqa: F401

    f = tmp_path / "prompts.txt"
    f.write_text("The quick brown fox jumps over the lazy dog.\n\nHello, how are you today?\n")
    rc, out = _json(capsys, ["calibrate-kv", str(tiny_ckpt), "--prompts", str(f), "--json"])
    assert rc == 0 and len(out["prompt_lengths"]) == 2 and min(out["prompt_lengths"]) > 1


def test_verify_speculative_reports_agreement_and_acceptance(
    converted: dict[str, Path], tiny_drafter_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _json(
        capsys,
        [
            "verify",
            str(converted["tp1"]),
            "--json",
            "--greedy-tokens",
            "8",
            "--prompt-lengths",
            "37,1",
            "--speculative",
            str(tiny_drafter_ckpt),
            "--draft-len",
            "3",
        ],
    )
    sp = out["speculative"]
    assert rc == 0 and out["pass"] is True
    assert sp["draft_len"] == 3 and sp["tokens_equal"] == sp["tokens_total"] == 16
    assert sp["acceptance_length"] >= 1.0
