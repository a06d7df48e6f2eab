"""The TRT-LLM backend, run on CPU against the recording stand-in of tensorrt_llm 1.2.1 / tensorrt 10.14.

What is checked: the stand-in's signatures are the ones recorded from the 1.2-line sources
(trt_gemma4/testing/trtllm_api.json) and the backend touches nothing else; the converted tiny checkpoint binds
one-to-one to the model's parameters; a "build" emits the same graph-op trace as the torch backend running the
same graph; gpt_attention and our plugins get the arguments and fields the model needs; the FP8-KV context-FMHA
choice is made explicitly; the engine runner drives ModelRunnerCpp as the runtime expects.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from trt_gemma4 import plugins
from trt_gemma4.backends.trtllm_policy import context_fmha_choice
from trt_gemma4.checkpoint import names
from trt_gemma4.graph import gemma4
from trt_gemma4.graph.trace import TracingOps, first_difference
from trt_gemma4.testing import trtllm_standin as S

API_FILE = Path(__file__).resolve().parents[1] / "trt_gemma4" / "testing" / "trtllm_api.json"
BACKEND_MODULES = ("trt_gemma4.backends.trtllm_backend", "trt_gemma4.backends.engine_runner")


def _plugin_schema() -> dict[str, tuple[str, str, dict[str, S.PluginFieldType], set[str]]]:
    """What the C++ creators advertise, from trt_gemma4/plugins.py."""
    return {
        s.name: (
            s.version,
            s.namespace,
            {f.name: S.PluginFieldType[f.trt_type] for f in s.fields},
            {f.name for f in s.fields if f.default is None},
        )
        for s in plugins.PLUGINS.values()
    }


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[S.Recorder]:
    """tensorrt_llm / tensorrt replaced by the stand-in; the backend modules imported fresh against it."""
    rec = S.install(sys.modules, lambda k, v: monkeypatch.setitem(sys.modules, k, v), _plugin_schema())
    monkeypatch.setattr(plugins, "load_library", lambda p: rec.loaded_libraries.append(str(p)))
    for m in BACKEND_MODULES:
        sys.modules.pop(m, None)
    yield rec
    pkg = sys.modules["trt_gemma4.backends"]
    for m in BACKEND_MODULES:
        sys.modules.pop(m, None)
        if hasattr(pkg, m.rsplit(".", 1)[1]):
            delattr(pkg, m.rsplit(".", 1)[1])


def _backend() -> ModuleType:
    return importlib.import_module("trt_gemma4.backends.trtllm_backend")


@pytest.fixture(scope="session")
def converted(tiny_converted: Path) -> Path:
    return tiny_converted


@pytest.fixture(scope="session")
def converted_tp2(tiny_tp_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trt_gemma4.convert import convert

    return convert(tiny_tp_ckpt, tmp_path_factory.mktemp("trtllm_tp2") / "ckpt", tp=2).out


def _spec(ckpt: Path) -> Any:
    from trt_gemma4.spec import Gemma4Spec

    return Gemma4Spec.from_dict(json.loads((ckpt / "config.json").read_text())["gemma4"]["spec"])


def _build(ckpt: Path, rank: int = 0, tracer: TracingOps | None = None, kv: str = "fp8") -> Any:
    b = _backend()
    cfg = b.load_config(ckpt)
    if kv == "bf16":
        cfg.quantization.kv_cache_quant_algo = None
    model = b.Gemma4ForCausalLM.from_checkpoint(ckpt, rank, config=cfg)
    if tracer is not None:
        model.op_tracer = lambda ops: setattr(tracer, "inner", ops) or tracer
    opts = b.EngineBuildOptions(
        max_batch_size=4, max_input_len=64, max_seq_len=128, max_num_tokens=256, tokens_per_block=16, kv_cache_dtype=kv
    )
    S.build(model, b.make_build_config(opts, context_fmha_choice(kv)))
    return model


# ---- the API data and the stand-in -----------------------------------------------------------------------------


def _apis() -> list[dict[str, Any]]:
    return json.loads(API_FILE.read_text())["apis"]


def _resolve(api: str, modules: dict[str, ModuleType]) -> tuple[Any, Any]:
    """(object, its owner: a module or a class) of a dotted API name in the stand-in."""
    roots = {**modules, **S.CLASSES}
    prefix = max((p for p in roots if api == p or api.startswith(p + ".")), key=len)
    owner, obj = None, roots[prefix]
    for part in api[len(prefix) :].split(".")[1:]:
        owner, obj = obj, (inspect.getattr_static(obj, part, None) if isinstance(obj, type) else getattr(obj, part))
    return obj, owner  # obj None: an instance attribute of the class `owner`


def test_standin_signatures_match_the_recorded_sources() -> None:
    modules = S.build_modules(_plugin_schema())
    for entry in _apis():
        obj, owner = _resolve(entry["api"], modules)
        kind = entry["kind"]
        if kind == "callable":
            if isinstance(obj, type):
                found = S.signature_tokens(obj.__init__, drop_first=True)
            elif isinstance(obj, classmethod):
                found = S.signature_tokens(obj.__func__, drop_first=True)
            else:
                found = S.signature_tokens(obj, drop_first=isinstance(owner, type))
            assert found == entry["params"], entry["api"]
        elif kind == "enum":
            assert {m: int(getattr(obj, m).value) for m in entry["members"]} == entry["members"], entry["api"]
        elif kind == "fields":
            instance = obj()
            for name, default in entry["fields"]:
                assert S._default_text(getattr(instance, name)) == default, f"{entry['api']}.{name}"
        else:
            assert kind == "attribute", entry["api"]
            cls = owner if isinstance(owner, type) else None
            assert obj is not None or (
                cls is not None and entry["api"].rsplit(".", 1)[1] in getattr(cls, "_instance_attrs", ())
            ), entry["api"]


def test_backend_touches_exactly_the_listed_apis(standin: S.Recorder, converted: Path, tmp_path: Path) -> None:
    b = _backend()
    engine = b.build_engines(
        converted,
        tmp_path / "engine",
        tmp_path / "lib.so",
        b.EngineBuildOptions(max_seq_len=64, max_input_len=32),
        log=lambda s: None,
    )
    er = importlib.import_module("trt_gemma4.backends.engine_runner")
    er.run_engine(engine, [[2, 5, 7]], 2, plugin_library=tmp_path / "lib.so")
    listed = {e["api"] for e in _apis()}
    assert standin.touched <= listed, sorted(standin.touched - listed)
    used_by_trtllm = {e["api"] for e in _apis() if "used_by" in e}
    assert listed - standin.touched == used_by_trtllm, sorted(listed - standin.touched - used_by_trtllm)


# ---- weights -----------------------------------------------------------------------------------------------------


def test_checkpoint_tensors_bind_to_parameters_one_to_one(standin: S.Recorder, converted: Path) -> None:
    b = _backend()
    model = b.Gemma4ForCausalLM.from_checkpoint(converted, 0)
    spec = model.spec
    stored = load_file(str(converted / "rank0.safetensors"))
    dropped = set()
    for i in spec.layer_range:
        if spec.is_global(i):
            dropped.add(names.trt_layer(i, names.KV_MERGED_SCALE))
        else:
            dropped |= {names.trt_layer(i, s) for s in names.KV_SCALE_TENSORS}
    bound = {n: p for n, p in model.named_parameters() if not p.is_buffer}
    derived = {names.trt_layer(i, b.KV_RCP_SCALE) for i in spec.sliding_layers}
    assert set(bound) == (set(stored) - dropped) | derived
    for name, p in bound.items():
        value = p._value
        if name in derived:
            merged = stored[name.replace("kv_cache_rcp_scaling_factor", "kv_cache_scaling_factor")]
            assert torch.equal(value, 1.0 / merged.float()), name
            continue
        assert value.dtype == stored[name].dtype and tuple(p.shape) == tuple(stored[name].shape), name
        assert torch.equal(
            value.view(torch.uint8) if value.dtype == torch.float8_e4m3fn else value,
            stored[name].view(torch.uint8) if value.dtype == torch.float8_e4m3fn else stored[name],
        )
    decl = {d.name: d for d in b.rank_parameters(spec, model.config)}
    assert set(decl) == set(bound)
    assert standin.warnings == [w for w in standin.warnings if w.startswith("Implicitly setting")]


def test_a_config_without_the_planes_declaration_is_refused(standin: S.Recorder, converted: Path) -> None:
    b = _backend()
    cfg = b.load_config(converted)
    spec = b.spec_of(cfg)
    cfg.num_kv_heads_per_layer = [1 if spec.is_global(i) else spec.sliding_kv_heads for i in spec.layer_range]
    with pytest.raises(Exception, match="num_kv_heads_per_layer"):
        b.Gemma4ForCausalLM(cfg)


# ---- the network -----------------------------------------------------------------------------------------------


def test_build_emits_the_same_op_trace_as_the_torch_backend(standin: S.Recorder, converted: Path) -> None:
    from trt_gemma4.backends.torch_backend import TorchBackend

    spec = _spec(converted)
    torch_trace = TracingOps(None)
    tb = TorchBackend(converted)
    sid = tb.add_sequence()
    with tb.step([(sid, [2, 17, 33, 9])]) as (ops, ids):
        torch_trace.inner = ops
        gemma4.forward(torch_trace, spec, ids)
    trt_trace = TracingOps(None)
    _build(converted, tracer=trt_trace)
    assert len(torch_trace.calls) > 10 * spec.num_layers
    assert first_difference(torch_trace.calls, trt_trace.calls) is None
    assert standin.outputs["logits"] == ((-1, spec.vocab_size), "FLOAT")


def test_sliding_layers_use_stock_gpt_attention_with_unit_softmax_scale(standin: S.Recorder, converted: Path) -> None:
    model = _build(converted)
    spec = model.spec
    calls = standin.calls_to("tensorrt_llm.functional.gpt_attention")
    assert [c.args["layer_idx"] for c in calls] == spec.sliding_layers  # PP 1: local index = model index
    hd = spec.sliding_head_dim
    for c in calls:
        a = c.args
        assert math.isclose(1.0 / (math.sqrt(a["head_size"]) * a["q_scaling"]), 1.0)  # softmax scale 1.0
        assert (a["num_heads"], a["num_kv_heads"], a["num_kv_heads_origin"], a["head_size"]) == (
            spec.num_attention_heads,
            spec.sliding_kv_heads,
            spec.sliding_kv_heads,
            hd,
        )
        assert (a["position_embedding_type"], a["rotary_embedding_dim"], a["rotary_embedding_base"]) == (
            "rope_gpt_neox",
            hd,
            spec.rope_theta_sliding,
        )
        positions = model.config.max_position_embeddings
        assert a["rotary_inv_freq_shape"] == (hd // 2,) and a["rotary_cos_sin_shape"] == (1, positions * hd)
        assert a["kv_scales"] == (True, True) and a["mask_type"] == "causal" and a["use_cache"]


def test_global_layers_use_our_attention_plugin_with_the_declared_fields(standin: S.Recorder, converted: Path) -> None:
    model = _build(converted)
    spec = model.spec
    made = [p for p in standin.plugins if p.name == plugins.GLOBAL_ATTENTION.name]
    assert len(made) == len(spec.global_layers)
    schema = plugins.GLOBAL_ATTENTION
    for p, layer in zip(made, spec.global_layers):
        assert (p.namespace, p.version) == (plugins.NAMESPACE, plugins.VERSION)
        assert list(p.fields) == [f.name for f in schema.fields]
        assert all(p.fields[f.name][0] == f.trt_type for f in schema.fields)
        v = {k: t[1][0] for k, t in p.fields.items()}
        assert (v["layer_idx"], v["num_q_heads"], v["num_kv_heads"], v["head_dim"], v["kv_head_size"]) == (
            layer,
            spec.num_attention_heads,
            1,
            spec.global_head_dim,
            spec.kv_head_size,
        )
        assert (v["tokens_per_block"], v["kv_cache_dtype"], v["draft_mode"], v["sliding_window"]) == (16, 0, 0, 0)
        assert (v["k_scale"], v["v_scale"], v["softmax_scale"]) == (1.0, 1.0, 1.0)
        assert math.isclose(v["rms_norm_eps"], spec.rms_norm_eps, rel_tol=1e-6)
        inputs = plugins.attention_inputs(draft_mode=False)
        assert len(p.input_shapes) == len(inputs)
        assert p.input_shapes[1] == (-1, spec.global_head_dim)  # k_raw: the one K projection
        assert p.input_shapes[2] == (spec.global_head_dim,) and p.input_dtypes[2] == "FLOAT"  # k_norm weight
        assert p.input_shapes[3] == (spec.global_head_dim // 2,)
        assert p.output_shape == (-1, spec.num_attention_heads * spec.global_head_dim)


def test_every_quantized_linear_is_a_block_fp8_plugin(standin: S.Recorder, converted: Path) -> None:
    model = _build(converted)
    made = [p for p in standin.plugins if p.name == plugins.BLOCK_FP8_GEMM.name]
    assert len(made) == 4 * model.spec.num_layers
    for p in made:
        n, k = p.fields["out_features"][1][0], p.fields["in_features"][1][0]
        assert p.input_shapes == [(-1, k), (n, k), (-(-n // 128), -(-k // 128))]
        assert p.input_dtypes == ["BF16", "FP8", "FLOAT"] and p.output_shape == (-1, n)
    assert not standin.calls_to("tensorrt_llm.functional.allreduce")  # TP 1


def test_the_global_plugin_refuses_k_and_v_not_made_from_one_projection(standin: S.Recorder, converted: Path) -> None:
    from trt_gemma4.graph.ops import AttentionLayer

    b = _backend()
    model = b.Gemma4ForCausalLM.from_checkpoint(converted, 0)
    net = S.Network(b.make_build_config(b.EngineBuildOptions(), context_fmha_choice("fp8")).plugin_config)
    S._NET.append(net)
    try:
        ops = b.TrtllmOps(model, None, None, None, True)
        i = model.spec.global_layers[0]
        hd = model.spec.global_head_dim
        k_raw = S._new((-1, hd), S.DataType.BF16, "x")
        other = S._new((-1, hd), S.DataType.BF16, "x")
        q = S._new((-1, model.spec.q_size(i)), S.DataType.BF16, "x")
        k = ops.rms_norm(k_raw, names.trt_layer(i, "attention.k_layernorm.weight"), 1e-6, head_dim=hd)
        v = ops.rms_norm(other, None, 1e-6, head_dim=hd)
        with pytest.raises(Exception, match="k_raw"):
            ops.attention(AttentionLayer.of(model.spec, i), q, k, v)
    finally:
        S._NET.pop()


def test_tensor_parallel_rank_takes_its_share_and_all_reduces(standin: S.Recorder, converted_tp2: Path) -> None:
    model = _build(converted_tp2, rank=1)
    spec = model.spec
    assert len(standin.calls_to("tensorrt_llm.functional.allreduce")) == 2 * spec.num_layers
    assert all(c.args["group"] == (0, 1) for c in standin.calls_to("tensorrt_llm.functional.allreduce"))
    for c in standin.calls_to("tensorrt_llm.functional.gpt_attention"):
        assert (c.args["num_heads"], c.args["num_kv_heads"], c.args["tp_rank"]) == (
            spec.num_attention_heads // 2,
            spec.sliding_kv_heads // 2,
            1,
        )
    glob = [p for p in standin.plugins if p.name == plugins.GLOBAL_ATTENTION.name]
    assert {p.fields["num_q_heads"][1][0] for p in glob} == {spec.num_attention_heads // 2}
    assert model.config.num_kv_heads_per_layer == spec.num_kv_heads_per_layer(2)


# ---- the build entry and the FP8-KV context-FMHA rule ----------------------------------------------------------


@pytest.mark.parametrize("kv", ["fp8", "bf16"])
def test_build_states_and_fixes_the_context_fmha_choice(
    standin: S.Recorder, converted: Path, tmp_path: Path, kv: str
) -> None:
    b = _backend()
    lines: list[str] = []
    opts = b.EngineBuildOptions(
        max_batch_size=2, max_input_len=32, max_seq_len=64, max_num_tokens=64, kv_cache_dtype=kv
    )
    out = b.build_engines(converted, tmp_path / "engine", tmp_path / plugins.LIBRARY_NAME, opts, log=lines.append)
    assert standin.loaded_libraries == [str(tmp_path / plugins.LIBRARY_NAME)]
    (built,) = standin.calls_to("tensorrt_llm.builder.build")
    assert built.args["use_paged_context_fmha"] is (kv == "bf16") and built.args["use_fp8_context_fmha"] is False
    assert not [w for w in standin.warnings if "Context FMHA is disabled" in w]  # nothing switched behind our back
    text = "\n".join(lines)
    assert ("paged context FMHA OFF" in text) is (kv == "fp8")
    cfg = json.loads((out / "config.json").read_text())["pretrained_config"]
    assert cfg["quantization"]["kv_cache_quant_algo"] == ("FP8" if kv == "fp8" else None)
    assert cfg["max_position_embeddings"] == 64
    assert cfg["num_kv_heads_per_layer"] == _spec(converted).num_kv_heads_per_layer(1)
    glob = [p for p in standin.plugins if p.name == plugins.GLOBAL_ATTENTION.name]
    assert {p.fields["kv_cache_dtype"][1][0] for p in glob} == {plugins.KV_CACHE_DTYPES[kv]}
    scales = {c.args["kv_scales"] for c in standin.calls_to("tensorrt_llm.functional.gpt_attention")}
    assert scales == ({(True, True)} if kv == "fp8" else {(False, False)})


def test_context_fmha_choice() -> None:
    fp8, bf16 = context_fmha_choice("fp8"), context_fmha_choice("bf16")
    assert (fp8.paged_context_fmha, fp8.fp8_context_fmha) == (False, False)
    assert (bf16.paged_context_fmha, bf16.fp8_context_fmha) == (True, False)
    assert context_fmha_choice("fp8", "FP8").paged_context_fmha
    with pytest.raises(ValueError):
        context_fmha_choice("int8")


# ---- the engine runner -------------------------------------------------------------------------------------------


def test_engine_runner_drives_model_runner_cpp(standin: S.Recorder, converted: Path, tmp_path: Path) -> None:
    b = _backend()
    engine = b.build_engines(
        converted,
        tmp_path / "engine",
        tmp_path / "lib.so",
        b.EngineBuildOptions(max_seq_len=64, max_input_len=32),
        log=lambda s: None,
    )
    standin.loaded_libraries.clear()
    er = importlib.import_module("trt_gemma4.backends.engine_runner")
    prompts = [[2, 10, 11], [2, 40]]
    out = er.run_engine(engine, prompts, 3, plugin_library=tmp_path / "lib.so")
    spec = _spec(converted)
    vocab = spec.vocab_size
    assert out.tokens == [[(sum(p) + t) % vocab for t in range(3)] for p in prompts]
    assert out.logits is not None and [lg.argmax(-1).tolist() for lg in out.logits] == out.tokens
    assert standin.loaded_libraries == [str(tmp_path / "lib.so")]
    (fd,) = standin.calls_to("tensorrt_llm.runtime.ModelRunnerCpp.from_dir")
    assert fd.args["max_attention_window_size"] == [
        64 if spec.is_global(i) else spec.sliding_window for i in spec.layer_range
    ]
    assert fd.args["enable_chunked_context"] is False and fd.args["gather_generation_logits"] is True
    (gen,) = standin.calls_to("tensorrt_llm.runtime.ModelRunnerCpp.generate")
    assert gen.args["top_k"] == 1 and gen.args["end_id"] == -1 and gen.args["max_new_tokens"] == 3
