"""The converter: exact tensor placement, TP/PP sharding, KV scales, atomic output, flat memory."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trt_gemma4.checkpoint import names
from trt_gemma4.checkpoint.modelopt import ModelOptCheckpoint, dequantize_blocks
from trt_gemma4.checkpoint.trtllm import TrtllmCheckpoint, split_fused
from trt_gemma4.convert import ShardingError, convert, working_tp_sizes
from trt_gemma4.errors import CheckpointError, Gemma4Error
from trt_gemma4.spec import GEMMA4_12B, GLOBAL, SLIDING, hf_config_dict
from trt_gemma4.testing.edit import copy_export, edit_json


def u8(t: torch.Tensor) -> torch.Tensor:
    """Bytes of a tensor (exact comparison of fp8 data)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("converted")


@pytest.fixture(scope="module")
def tiny_tp1(tiny_ckpt: Path, out_dir: Path) -> Path:
    return convert(tiny_ckpt, out_dir / "tiny_tp1").out


@pytest.fixture(scope="module")
def tp_variants(tiny_tp_ckpt: Path, out_dir: Path) -> dict[tuple[int, int], Path]:
    return {
        (tp, pp): convert(tiny_tp_ckpt, out_dir / f"tp{tp}_pp{pp}", tp=tp, pp=pp).out
        for tp, pp in [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2)]
    }


def test_tiny_conversion_places_every_tensor_exactly(tiny_ckpt: Path, tiny_tp1: Path) -> None:
    src = ModelOptCheckpoint.open(tiny_ckpt)
    spec = src.spec
    with safe_open(str(tiny_tp1 / "rank0.safetensors"), framework="pt") as f:
        out = {k: f.get_tensor(k) for k in f.keys()}
    assert torch.equal(out["transformer.vocab_embedding.weight"], src.tensor(src.text_key("embed_tokens.weight")))
    assert torch.equal(out["transformer.ln_f.weight"], src.tensor(src.text_key("norm.weight")))
    assert not any(k.startswith("lm_head") for k in out)  # tied
    for i in spec.layer_range:
        for trt, hf in names.LAYER_TENSORS.items():
            assert torch.equal(out[names.trt_layer(i, trt)], src.tensor(src.layer_key(i, hf)))
        for lin in names.layer_linears(spec.has_v_proj(i), spec.is_global(i)):
            w = out[names.trt_layer(i, f"{lin.trt_name}.weight")]
            s = out[names.trt_layer(i, f"{lin.trt_name}.{names.SCALE_SUFFIX}")]
            mods = [src.layer_key(i, p) for p in lin.hf_parts]
            sizes = [src.entry(f"{m}.weight").shape[0] for m in mods]
            assert w.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
            assert s.shape == (-(-w.shape[0] // 128), -(-w.shape[1] // 128))
            covered = torch.zeros(w.shape[0], dtype=torch.bool)
            for m, (off, n), part in zip(mods, names.fused_segments(sizes), split_fused(w, sizes)):
                assert torch.equal(u8(part), u8(src.tensor(f"{m}.weight")))
                assert off % 128 == 0
                covered[off : off + n] = True
                # the component's blocks keep their own scales
                grid = src.weight_scale_grid(m)
                assert torch.equal(s[off // 128 : off // 128 + grid.shape[0]], grid)
                assert torch.equal(dequantize_blocks(w, s)[off : off + n], src.dequantized(m))
            assert not u8(w[~covered]).any()  # padding rows are FP8 zeros
        k = out[names.trt_layer(i, "attention.k_cache_scaling_factor")]
        assert k.dtype == torch.float32 and k.shape == (1,) and float(k) == 1.0  # identity by default
    # the partial-block case: gate|up of 320 rows each -> up at row 384, 704 rows in all
    assert out[names.trt_layer(0, "mlp.fc.weight")].shape == (704, 128)
    assert out[names.trt_layer(5, "attention.qkv.weight")].shape == (512 + 128, 128)  # [q | k_raw], no v


def test_config_and_report_follow_the_documented_format(tiny_ckpt: Path, tiny_tp1: Path) -> None:
    cfg = json.loads((tiny_tp1 / "config.json").read_text())
    spec = ModelOptCheckpoint.open(tiny_ckpt).spec
    assert cfg["architecture"] == "Gemma4ForCausalLM" and cfg["head_size"] == spec.sliding_head_dim
    assert cfg["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": "FP8"}
    assert cfg["num_kv_heads_per_layer"] == spec.num_kv_heads_per_layer(1)
    assert cfg["mapping"] == {"world_size": 1, "tp_size": 1, "pp_size": 1}
    g = cfg["gemma4"]
    assert g["format_version"] == 1 and g["kv_scales"] == "identity" and g["lm_head"] == "tied"
    assert g["block_fp8"]["block"] == 128 and g["source"]["quant_algo"] == "fp8_pb_wo"
    rep = json.loads((tiny_tp1 / "conversion_report.json").read_text())
    assert rep["source"]["written_by"]["modelopt"] == "0.47.0"
    assert set(rep["converter"]) >= {"trt_gemma4", "torch", "safetensors"}
    assert rep["choices"]["tp"] == 1 and rep["choices"]["kv_scales"] == "identity"
    assert rep["ranks"][0]["bytes"] == (tiny_tp1 / "rank0.safetensors").stat().st_size
    with TrtllmCheckpoint.open(tiny_tp1) as back:
        assert back.spec == spec and back.world_size == 1 and back.kv_scales == "identity"


def _layer_keys(path: Path, rank: int) -> set[int]:
    with safe_open(str(path / f"rank{rank}.safetensors"), framework="pt") as f:
        return {int(k.split(".")[2]) for k in f.keys() if k.startswith("transformer.layers.")}


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_shards_concatenate_back_to_tp1(tp_variants: dict[tuple[int, int], Path], tp: int) -> None:
    one, many = TrtllmCheckpoint.open(tp_variants[(1, 1)]), TrtllmCheckpoint.open(tp_variants[(tp, 1)])
    spec = one.spec
    assert json.loads((tp_variants[(tp, 1)] / "config.json").read_text())[
        "num_kv_heads_per_layer"
    ] == spec.num_kv_heads_per_layer(tp)
    for r in range(tp):
        for name in ("transformer.vocab_embedding.weight", "transformer.ln_f.weight"):
            assert torch.equal(many.tensor(r, name), one.tensor(0, name))
    for i in spec.layer_range:
        for lin in names.layer_linears(spec.has_v_proj(i), spec.is_global(i)):
            w1, s1 = one.linear(i, lin.trt_name)
            shards = [many.linear(i, lin.trt_name, r) for r in range(tp)]
            if lin.tp_dim == 1:  # row parallel: input columns
                assert torch.equal(u8(torch.cat([w for w, _ in shards], 1)), u8(w1))
                assert torch.equal(torch.cat([s for _, s in shards], 1), s1)
                continue
            full = split_fused(w1, one.component_sizes(i, lin.trt_name))
            sizes = many.component_sizes(i, lin.trt_name)
            per_rank = [split_fused(w, sizes) for w, _ in shards]
            for c, part in enumerate(lin.hf_parts):
                if part in lin.replicated:  # the global layer's single KV head: whole and identical on every rank
                    for r in range(tp):
                        assert torch.equal(u8(per_rank[r][c]), u8(full[c]))
                else:
                    assert torch.equal(u8(torch.cat([p[c] for p in per_rank])), u8(full[c]))
            # the scales of each rank dequantize its rows exactly as the TP=1 checkpoint does
            deq1 = split_fused(dequantize_blocks(w1, s1), one.component_sizes(i, lin.trt_name))
            for r, (w, s) in enumerate(shards):
                for c, part in enumerate(split_fused(dequantize_blocks(w, s), sizes)):
                    rows = slice(None) if lin.hf_parts[c] in lin.replicated else slice(r * sizes[c], (r + 1) * sizes[c])
                    assert torch.equal(part, deq1[c][rows])
    assert spec.is_global(5) and many.component_sizes(5, "attention.qkv") == [spec.q_size(5) // tp, spec.kv_size(5)]


def test_pp_splits_layers_between_stages(tp_variants: dict[tuple[int, int], Path]) -> None:
    pp2 = tp_variants[(1, 2)]
    cfg = json.loads((pp2 / "config.json").read_text())
    assert cfg["gemma4"]["pp_layers"] == [list(range(6)), list(range(6, 12))]
    assert _layer_keys(pp2, 0) == set(range(6)) and _layer_keys(pp2, 1) == set(range(6, 12))
    with (
        safe_open(str(pp2 / "rank0.safetensors"), framework="pt") as f0,
        safe_open(str(pp2 / "rank1.safetensors"), framework="pt") as f1,
    ):
        assert "transformer.vocab_embedding.weight" in f0.keys() and "transformer.ln_f.weight" not in f0.keys()
        assert {"transformer.vocab_embedding.weight", "transformer.ln_f.weight"} <= set(f1.keys())  # tied head
    both = TrtllmCheckpoint.open(tp_variants[(2, 2)])
    one = TrtllmCheckpoint.open(tp_variants[(2, 1)])
    assert both.world_size == 4 and _layer_keys(both.path, 3) == set(range(6, 12))
    for layer, tp_rank in [(0, 1), (11, 0), (11, 1)]:
        for suffix in ("attention.qkv.weight", "mlp.proj.weights_block_scaling_factor"):
            assert torch.equal(
                u8(both.layer_tensor(layer, suffix, tp_rank)), u8(one.layer_tensor(layer, suffix, tp_rank))
            )


def test_tp_that_cannot_be_honoured_explains_why(tiny_ckpt: Path, tiny_tp_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ShardingError) as e:
        convert(tiny_ckpt, tmp_path / "x", tp=2)
    msg = str(e.value)
    assert "--tp 2" in msg and "64 per rank" in msg and "128x128 block has one FP8 scale" in msg
    assert msg.endswith("TP sizes that work for this model: 1")
    with pytest.raises(
        ShardingError,
        match=r"4 KV heads of sliding layers are not divisible by 8\. TP sizes that "
        r"work for this model: 1, 2, 4$",
    ):
        convert(tiny_tp_ckpt, tmp_path / "x", tp=8)
    with pytest.raises(ShardingError, match="--pp 13"):
        convert(tiny_tp_ckpt, tmp_path / "x", pp=13)
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())
    assert working_tp_sizes(GEMMA4_12B) == [1, 2, 4, 8]


def test_kv_scales_from_the_checkpoint(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = convert(tiny_ckpt, tmp_path / "kv", kv_scales="checkpoint").out
    src = ModelOptCheckpoint.open(tiny_ckpt)
    back = TrtllmCheckpoint.open(out)
    assert back.kv_scales == "checkpoint"
    for i in (0, 5):
        k, v = src.kv_scales(i)
        assert float(back.layer_tensor(i, "attention.k_cache_scaling_factor")) == pytest.approx(k, rel=0)
        assert float(back.layer_tensor(i, "attention.v_cache_scaling_factor")) == pytest.approx(v, rel=0)
        assert float(back.layer_tensor(i, names.KV_MERGED_SCALE)) == pytest.approx(max(k, v), rel=0)
    old = copy_export(tiny_ckpt, tmp_path / "old_modelopt")
    edit_json(old / "hf_quant_config.json", lambda d: d["producer"].update(version="0.25.0"))
    with pytest.raises(CheckpointError, match="ModelOpt >= 0.27"):
        convert(old, tmp_path / "kv_old", kv_scales="checkpoint")
    assert not (tmp_path / "kv_old").exists()


def test_output_is_atomic(tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trt_gemma4.convert as conv

    calls = {"n": 0}
    real = conv.SafetensorsWriter.write

    def failing_write(self, name, data):  # noqa: ANN001, ANN202 - same signature as the method it replaces
        calls["n"] += 1
        if calls["n"] == 40:
            raise OSError("disk full")
        return real(self, name, data)

    monkeypatch.setattr(conv.SafetensorsWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        convert(tiny_ckpt, tmp_path / "out")
    assert calls["n"] == 40
    assert list(tmp_path.iterdir()) == []  # neither OUT nor the temp dir beside it
    monkeypatch.undo()
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep").write_text("x")
    with pytest.raises(Gemma4Error, match="already exists"):
        convert(tiny_ckpt, tmp_path / "exists")
    assert (tmp_path / "exists" / "keep").read_text() == "x"


def test_cli_convert(tiny_tp_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "trt_gemma4.cli", "convert", str(tiny_tp_ckpt), str(out), "--tp", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "rank1.safetensors" in r.stdout and sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "conversion_report.json",
        "rank0.safetensors",
        "rank1.safetensors",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "trt_gemma4.cli", "convert", str(tiny_tp_ckpt), str(tmp_path / "t8"), "--tp", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "TP sizes that work" in r.stderr
    assert not (tmp_path / "t8").exists()


# ---- memory: flat in the number of layers ------------------------------------------------------------------------

_MEASURE = textwrap.dedent("""
    import json, sys, threading, time
    from trt_gemma4.convert import convert

    def rss_anon():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no RssAnon")

    peak, done = [rss_anon()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.002)

    base = rss_anon()
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    convert(sys.argv[1], sys.argv[2])
    done.set()
    t.join()
    peak[0] = max(peak[0], rss_anon())
    print(json.dumps({"base": base, "peak": peak[0]}))
""")


def _write_12b_shaped_export(root: Path, n_layers: int) -> Path:
    """A text-only export with the 12B's per-layer shapes (vocab cut to 4096), one safetensors shard per layer,
    written with the safetensors library; fp8 bytes are a cheap random-ish pattern (never NaN)."""
    types = tuple(GLOBAL if (i % 2) else SLIDING for i in range(n_layers))
    spec = dataclasses.replace(GEMMA4_12B, vocab_size=4096, layer_types=types, multimodal=False, drafter=None)
    root.mkdir()
    cfg = hf_config_dict(spec)
    cfg["architectures"] = ["Gemma4UnifiedForCausalLM"]
    cfg["quantization_config"] = {
        "quant_algo": "fp8_pb_wo",
        "quant_method": "modelopt",
        "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"},
        "producer": {"name": "modelopt", "version": "0.47.0"},
    }
    (root / "config.json").write_text(json.dumps(cfg))
    pattern = torch.randint(0, 0x7E, (1 << 20,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def fp8(n: int, k: int) -> torch.Tensor:
        return pattern.repeat(-(-n * k // pattern.numel()))[: n * k].view(torch.float8_e4m3fn).reshape(n, k)

    def linear(ts: dict, name: str, n: int, k: int) -> None:
        ts[f"{name}.weight"] = fp8(n, k)
        ts[f"{name}.weight_scale"] = torch.full((-(-n // 128), 1, -(-k // 128), 1), 1e-3)

    weight_map = {}
    files = []
    H, I = spec.hidden_size, spec.intermediate_size
    for i in range(n_layers):
        p = f"model.layers.{i}."
        ts: dict[str, torch.Tensor] = {}
        for hf in names.LAYER_TENSORS.values():
            shape = (1,) if hf == "layer_scalar" else (spec.head_dim(i),) if hf.startswith("self_attn") else (H,)
            ts[p + hf] = torch.ones(shape, dtype=torch.bfloat16)
        linear(ts, p + "self_attn.q_proj", spec.q_size(i), H)
        linear(ts, p + "self_attn.k_proj", spec.kv_size(i), H)
        if spec.has_v_proj(i):
            linear(ts, p + "self_attn.v_proj", spec.kv_size(i), H)
        linear(ts, p + "self_attn.o_proj", H, spec.q_size(i))
        linear(ts, p + "mlp.gate_proj", I, H)
        linear(ts, p + "mlp.up_proj", I, H)
        linear(ts, p + "mlp.down_proj", H, I)
        ts[p + names.HF_K_SCALE] = torch.tensor(0.01)
        ts[p + names.HF_V_SCALE] = torch.tensor(0.01)
        files.append(f"model-{i:05d}.safetensors")
        save_file(ts, str(root / files[-1]))
        weight_map.update(dict.fromkeys(ts, files[-1]))
        del ts
    rest = {
        "model.embed_tokens.weight": torch.ones(spec.vocab_size, H, dtype=torch.bfloat16),
        "model.norm.weight": torch.ones(H, dtype=torch.bfloat16),
    }
    save_file(rest, str(root / "model-rest.safetensors"))
    weight_map.update(dict.fromkeys(rest, "model-rest.safetensors"))
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return root


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_layers(tmp_path: Path) -> None:
    layer_bytes = 15360 * 3840 * 3 + 8192 * 3840 * 2 + 512 * 3840  # one global layer's fp8 weights
    peaks = {}
    for n in (2, 8):
        src = _write_12b_shaped_export(tmp_path / f"src{n}", n)
        ModelOptCheckpoint.open(src).validate()
        r = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(src), str(tmp_path / f"out{n}")],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout.strip().splitlines()[-1])
        peaks[n] = m["peak"] - m["base"]
        assert (tmp_path / f"out{n}" / "rank0.safetensors").stat().st_size > n * 200e6
        shutil.rmtree(src)  # gigabytes: do not leave them to pytest's kept temp dirs
        shutil.rmtree(tmp_path / f"out{n}")
    assert abs(peaks[8] - peaks[2]) < layer_bytes, peaks
    assert peaks[8] < layer_bytes, peaks  # never more than about one layer's tensors in memory at once
