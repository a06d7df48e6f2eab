"""The assistant drafter in our checkpoint format: exact copies, block-FP8, wiring, clear errors; engine settings."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from trt_gemma4.backends.torch_backend import CacheConfig, TorchBackend
from trt_gemma4.checkpoint import drafter as dck
from trt_gemma4.convert import convert
from trt_gemma4.errors import CheckpointError
from trt_gemma4.spec import GLOBAL, SLIDING, Gemma4Spec, load_spec
from trt_gemma4.speculative import decoding
from trt_gemma4.speculative.engine import (
    SPECULATIVE_DECODING_MODE_EAGLE,
    SpeculativeEngineConfig,
    chain_choices,
    choices_string,
    drafter_kv_lengths,
)
from trt_gemma4.speculative.torch_drafter import TorchDrafter


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matrices: one intra-op thread is many times faster than two threads contending on a small CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def spec(tiny_ckpt: Path) -> Gemma4Spec:
    return load_spec(tiny_ckpt)


@pytest.fixture(scope="module")
def converted(tiny_drafter_ckpt: Path, spec: Gemma4Spec, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drafters")
    out = {}
    for weights in dck.WEIGHT_FORMATS:
        record = dck.convert_drafter(tiny_drafter_ckpt, root / weights, spec, weights)
        assert record["weights"] == weights and record["path"] == weights
        out[weights] = root / weights
    return out


def _source(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_bf16_conversion_copies_every_tensor_exactly(
    tiny_drafter_ckpt: Path, converted: dict[str, Path], spec: Gemma4Spec
) -> None:
    src = _source(tiny_drafter_ckpt)
    ck = dck.load_drafter(converted["bf16"], spec)
    d = ck.spec
    for ours, hf in dck.iter_plain(d):
        assert torch.equal(ck.get(ours), src[hf]), ours
    for ours, parts in dck.iter_linears(d):
        w = ck.get(f"{ours}.weight")
        assert w.dtype == torch.bfloat16 and not ck.is_quantized(ours)
        for (off, n), part in zip(dck.fused_segments(dck.linear_sizes(d, ours)), parts):
            assert torch.equal(w[off : off + n], src[f"{part}.weight"]), ours
    used = {hf for _, hf in dck.iter_plain(d)} | {f"{p}.weight" for _, ps in dck.iter_linears(d) for p in ps}
    assert used == set(src), f"source tensors not converted: {set(src) - used}"
    cfg = json.loads((converted["bf16"] / "config.json").read_text())["gemma4_drafter"]
    assert cfg["wiring"]["target_layers"] == {SLIDING: spec.sliding_layers[-1], GLOBAL: spec.global_layers[-1]}
    assert cfg["wiring"]["layer_reads"] == [spec.drafter_target_layers[t] for t in d.layer_types]


def test_block_fp8_conversion_is_within_fp8_rounding(
    tiny_drafter_ckpt: Path, converted: dict[str, Path], spec: Gemma4Spec
) -> None:
    src = _source(tiny_drafter_ckpt)
    ck = dck.load_drafter(converted["block_fp8"], spec)
    for ours, parts in dck.iter_linears(ck.spec):
        assert ck.is_quantized(ours) and ck.get(f"{ours}.weight").dtype == torch.float8_e4m3fn
        s = ck.get(f"{ours}.{dck.SCALE_SUFFIX}")
        deq = ck.dense(ours)
        for (off, n), part in zip(dck.fused_segments(dck.linear_sizes(ck.spec, ours)), parts):
            w = src[f"{part}.weight"].float()
            # e4m3: 3 mantissa bits -> relative rounding <= 2^-4; the smallest subnormal step is 2^-9 * scale
            torch.testing.assert_close(deq[off : off + n], w, rtol=2**-4, atol=float(s.max()) * 2**-9)


def test_quantize_block_fp8_round_trip_and_scales() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 200, generator=g) * torch.linspace(0.01, 10, 300)[:, None]
    w[:128, :128] = 0  # an all-zero block keeps scale 1
    q, s = dck.quantize_block_fp8(w)
    assert q.shape == w.shape and s.shape == (3, 2)
    assert s[0, 0] == 1.0
    assert torch.allclose(s[2, 1], w[256:, 128:].abs().max() / 448)
    torch.testing.assert_close(dck.dequantize_block_fp8(q, s), w, rtol=2**-4, atol=float(s.max()) * 2**-9)


def test_drafter_that_does_not_fit_the_target_is_refused(
    tiny_drafter_ckpt: Path, spec: Gemma4Spec, tmp_path: Path
) -> None:
    wider = dataclasses.replace(spec, hidden_size=spec.hidden_size * 2)
    with pytest.raises(CheckpointError, match="backbone_hidden_size"):
        dck.convert_drafter(tiny_drafter_ckpt, tmp_path / "a", wider)
    other_window = dataclasses.replace(spec, sliding_window=spec.sliding_window * 2)
    with pytest.raises(CheckpointError, match="sliding_window"):
        dck.convert_drafter(tiny_drafter_ckpt, tmp_path / "b", other_window)
    other_rope = dataclasses.replace(spec, rope_theta_global=spec.rope_theta_global * 2)
    with pytest.raises(CheckpointError, match="global rope_theta"):
        dck.convert_drafter(tiny_drafter_ckpt, tmp_path / "c", other_rope)
    assert not any((tmp_path / n).exists() for n in "abc")
    not_a_drafter = tmp_path / "not_a_drafter"
    shutil.copytree(tiny_drafter_ckpt, not_a_drafter)
    cfg = json.loads((not_a_drafter / "config.json").read_text())
    cfg["model_type"] = "gemma4_unified"
    (not_a_drafter / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type gemma4_unified_assistant"):
        dck.convert_drafter(not_a_drafter, tmp_path / "d", spec)


def test_missing_or_misshapen_tensor_is_named(tiny_drafter_ckpt: Path, spec: Gemma4Spec, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_drafter_ckpt, broken)
    tensors = _source(tiny_drafter_ckpt)
    q_norm = tensors.pop("model.layers.2.self_attn.q_norm.weight")
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.self_attn\.q_norm\.weight.*missing"):
        dck.convert_drafter(broken, tmp_path / "out", spec)
    tensors["model.layers.2.self_attn.q_norm.weight"] = q_norm
    tensors["post_projection.weight"] = tensors["post_projection.weight"][:, :-1].contiguous()
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"post_projection\.weight.*shape"):
        dck.convert_drafter(broken, tmp_path / "out", spec)


def test_ordered_embedding_drafters_are_refused(tiny_drafter_ckpt: Path, tmp_path: Path) -> None:
    other = tmp_path / "ordered"
    shutil.copytree(tiny_drafter_ckpt, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["use_ordered_embeddings"] = True
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="use_ordered_embeddings"):
        dck.AssistantSource(other)


def test_attach_drafter_records_the_wiring_and_runs(tiny_ckpt: Path, tiny_drafter_ckpt: Path, tmp_path: Path) -> None:
    """convert + attach_drafter: the target config names the drafter; the converted pair decodes speculatively
    (block-FP8 drafter weights) to exactly greedy."""
    out = convert(tiny_ckpt, tmp_path / "ckpt").out
    d = dck.attach_drafter(out, tiny_drafter_ckpt, weights="block_fp8")
    g = json.loads((out / "config.json").read_text())["gemma4"]
    assert g["drafter"]["path"] == dck.DRAFTER_DIR and g["drafter"]["weights"] == "block_fp8"
    assert g["spec"]["drafter"]["hidden_size"] == d.hidden_size
    assert dck.find_drafter(out) == out / dck.DRAFTER_DIR
    with pytest.raises(CheckpointError, match="without a drafter"):
        dck.attach_drafter(out, tiny_drafter_ckpt)
    be = TorchBackend(out, dtype=torch.float32, cache=CacheConfig(dtype=torch.float32, max_draft_len=3))
    assert be.spec.drafter == d
    prompts = [list(range(20, 60)), list(range(100, 119))]
    greedy = be.generate(prompts, 12)
    res = decoding.generate(be, TorchDrafter(be, dck.find_drafter(out)), prompts, 12, 3)
    assert res.tokens == greedy


def test_engine_settings_for_a_chain_of_drafts(spec: Gemma4Spec) -> None:
    cfg = SpeculativeEngineConfig(max_draft_len=3)
    assert chain_choices(3) == [[0], [0, 0], [0, 0, 0]]
    assert choices_string(cfg.choices) == "{0}, {0, 0}, {0, 0, 0}"
    assert cfg.triton_parameters() == {"decoding_mode": "eagle", "eagle_choices": "{0}, {0, 0}, {0, 0, 0}"}
    assert cfg.build_config_fields() == {
        "speculative_decoding_mode": SPECULATIVE_DECODING_MODE_EAGLE,
        "max_draft_len": 3,
    }
    fields = cfg.pretrained_config_fields()
    assert fields["num_eagle_layers"] == 3 and fields["eagle_net_config"]["num_hidden_layers"] == 0
    assert cfg.sliding_ring(spec) == spec.sliding_window + 3
    assert cfg.check_build(max_batch_size=8, max_num_tokens=32) == []
    assert len(cfg.check_build(max_batch_size=600, max_num_tokens=100)) == 2
    with pytest.raises(ValueError):
        SpeculativeEngineConfig(max_draft_len=0)


def test_drafter_kv_length_from_engine_tensors_matches_the_rolled_back_cache(tiny_ckpt: Path) -> None:
    """The read-only plugin's kv_len formula (sequence_length - draft_lens + num_accepted - 1) equals the length
    the torch backend keeps after each round's rollback."""
    be = TorchBackend(tiny_ckpt, dtype=torch.float32, cache=CacheConfig(dtype=torch.float32, max_draft_len=4))
    prompts = [list(range(30, 70))]
    greedy = be.generate(prompts, 16)
    seen: list[tuple[int, int]] = []  # (cached length, drafts asked for) at each round

    class HalfRight:
        def propose(self, seeds, ks):  # type: ignore[no-untyped-def]
            (sid, _, _), k = seeds[0], ks[0]
            n = be.length(sid)
            seen.append((n, k))
            truth = (prompts[0] + greedy[0])[n + 1 : n + 1 + k]
            return [[t if i < 2 else (t + 1) % 500 for i, t in enumerate(truth)]]

    res = decoding.generate(be, HalfRight(), prompts, 16, 4)
    assert res.tokens == greedy
    accepted = res.stats[0].accepted_per_round
    assert 0 < min(accepted[:-1]) < 4  # partial acceptance: drafts were rolled back
    for (n, k), (n_next, _), m in zip(seen, seen[1:], accepted):
        sequence_length = n + k + 1  # the verify step cached the seed and k drafts
        assert drafter_kv_lengths(sequence_length, k, m + 1) == n_next
