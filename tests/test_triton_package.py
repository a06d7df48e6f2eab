"""The Triton model repository without a server: packaging, Triton-schema validation, ensemble wiring, the
chat template and tokenizer side, and the reference engine's sampling and in-flight batching."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jinja2  # noqa: F401, E402  (the dev extra has them: a broken install must fail, not skip)
import pytest
import tokenizers  # noqa: F401, E402
import tritonclient.grpc.model_config_pb2  # noqa: F401, E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from trt_gemma4.triton import package as pkg  # noqa: E402
from trt_gemma4.triton.text import (  # noqa: E402
    IncrementalDetokenizer,
    TextCodec,
    flatten_word_lists,
    load_text_config,
    unflatten_word_lists,
)
from trt_gemma4.triton.validate import RepositoryError, parse_config, validate_repository  # noqa: E402


@pytest.fixture(scope="module")
def reference_repo(converted_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    plan = pkg.serving_plan(converted_tiny, "reference", max_seq_len=256, max_input_len=128, max_batch_size=4)
    return pkg.write_repository(plan, tmp_path_factory.mktemp("pkg") / "reference").out


@pytest.fixture(scope="module")
def engine_repo(converted_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    plan = pkg.serving_plan(converted_tiny, "engine", engine_dir="/models/engines/tiny", max_seq_len=256)
    return pkg.write_repository(plan, tmp_path_factory.mktemp("pkg") / "engine").out


def _cfg(repo: Path, model: str) -> model_config_pb2.ModelConfig:
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse((repo / "model_repository" / model / "config.pbtxt").read_text(), cfg)
    return cfg


def _params(cfg: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


# ---- packaging ------------------------------------------------------------------------------------------------


def test_reference_repository_has_the_tensorrtllm_backend_layout(reference_repo: Path, converted_tiny: Path) -> None:
    repo = reference_repo / "model_repository"
    assert sorted(p.name for p in repo.iterdir()) == sorted(pkg.MODELS)
    models = validate_repository(repo)
    trt = models["tensorrt_llm"]
    assert trt.backend == "python" and trt.model_transaction_policy.decoupled
    assert (repo / "tensorrt_llm" / "1" / "model.py").read_text().count("InflightBatcher") >= 1
    assert _params(trt)["checkpoint_dir"] == str(converted_tiny.resolve())
    assert "gpt_model_path" not in _params(trt)  # engine-only parameters are removed, not left as ${...}
    for name in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        assert (repo / name / "1" / "gemma4_text.py").is_file()
        assert (repo / name / "1" / "model.py").is_file()
    assert (reference_repo / "tokenizer" / "tokenizer.json").is_file()
    assert all(m.max_batch_size == 4 for m in models.values())


def test_engine_repository_fills_windows_kv_fraction_and_preloads_plugins(
    engine_repo: Path, converted_tiny: Path
) -> None:
    from trt_gemma4.checkpoint.trtllm import TrtllmCheckpoint

    trt = _cfg(engine_repo, "tensorrt_llm")
    p = _params(trt)
    assert trt.backend == "tensorrtllm" and trt.model_transaction_policy.decoupled
    assert p["gpt_model_path"] == "/models/engines/tiny/engine"
    assert p["gpt_model_type"] == "inflight_fused_batching"
    assert p["kv_cache_free_gpu_mem_fraction"] == "0.9"
    assert p["exclude_input_in_output"] == "true"
    assert "checkpoint_dir" not in p
    info = json.loads((engine_repo / "package.json").read_text())
    windows = [int(w) for w in p["max_attention_window_size"].split(",")]
    assert windows == info["plan"]["attention_windows"]
    spec = TrtllmCheckpoint.open(converted_tiny).spec
    assert windows == [256 if spec.is_global(i) else spec.sliding_window for i in spec.layer_range]
    launch = (engine_repo / "launch_triton.sh").read_text()
    assert 'PLUGIN_LIB="${TRT_GEMMA4_PLUGIN_LIB:-/models/engines/tiny/plugins/libtrt_gemma4_plugins.so}"' in launch
    assert 'export LD_PRELOAD="$PLUGIN_LIB' in launch
    assert (engine_repo / "launch_triton.sh").stat().st_mode & 0o111


def test_engine_directory_plan_drives_the_limits(converted_tiny: Path, tmp_path: Path) -> None:
    from trt_gemma4.checkpoint.trtllm import TrtllmCheckpoint
    from trt_gemma4.plan import make_plan

    spec = TrtllmCheckpoint.open(converted_tiny).spec
    plan = make_plan(
        spec,
        model="tiny",
        arch="sm_90",
        max_batch_size=16,
        max_seq_len=512,
        max_num_tokens=1024,
        kv_cache_free_gpu_mem_fraction=0.75,
    )
    # the layout `trt-gemma4 build` writes where TensorRT-LLM is missing (trt_gemma4/build.py)
    engine = tmp_path / "engines" / "tiny"
    shutil.copytree(converted_tiny, engine / "checkpoint")
    plan.save(engine / "plan.json")
    (engine / "manifest.json").write_text(json.dumps({"engines_built": False}))
    sp = pkg.serving_plan(engine, "engine")
    assert (sp.max_batch_size, sp.max_seq_len, sp.kv_cache_free_gpu_mem_fraction) == (16, 512, 0.75)
    assert sp.attention_windows == plan.max_attention_window
    assert sp.engine_dir == str(engine.resolve())
    assert sp.plugin_library == str(engine.resolve() / "plugins" / "libtrt_gemma4_plugins.so")
    assert any("engines_built is false" in n for n in sp.notes)
    assert (Path(sp.tokenizer_dir) / "tokenizer.json").is_file()  # found through the checkpoint's source path
    out = pkg.write_repository(sp, tmp_path / "out").out
    params = _params(_cfg(out, "tensorrt_llm"))
    assert params["max_attention_window_size"] == plan.window_csv()
    assert params["gpt_model_path"] == str(engine.resolve() / "engine")
    with pytest.raises(pkg.PackageError, match="exceeds the plan's 16"):
        pkg.serving_plan(engine, "engine", max_batch_size=32)
    ref = pkg.serving_plan(engine, "reference", max_batch_size=2)
    assert ref.checkpoint_dir == str((engine / "checkpoint").resolve()) and ref.max_seq_len == 512
    shutil.rmtree(engine / "checkpoint")
    with pytest.raises(pkg.PackageError, match="reference variant needs the converted checkpoint"):
        pkg.serving_plan(engine, "reference")


def test_packaging_refuses_what_it_cannot_serve(converted_tiny: Path, tmp_path: Path, reference_repo: Path) -> None:
    with pytest.raises(pkg.PackageError, match="needs --engine-dir"):
        pkg.serving_plan(converted_tiny, "engine")
    with pytest.raises(pkg.PackageError, match="must be below max_seq_len"):
        pkg.serving_plan(converted_tiny, "reference", max_seq_len=64, max_input_len=64)
    with pytest.raises(pkg.PackageError, match="no tokenizer.json"):
        pkg.serving_plan(converted_tiny, "reference", tokenizer=tmp_path)
    plan = pkg.serving_plan(converted_tiny, "reference", max_seq_len=64)
    with pytest.raises(pkg.PackageError, match="exists and is not empty"):
        pkg.write_repository(plan, reference_repo)


def test_package_command_writes_a_valid_repository(converted_tiny: Path, tmp_path: Path, capsys) -> None:
    from trt_gemma4.cli import main

    out = tmp_path / "served"
    assert main(["package", str(converted_tiny), str(out), "--variant", "reference", "--max-seq-len", "128"]) == 0
    assert "max_attention_window_size" in capsys.readouterr().out
    validate_repository(out / "model_repository")
    assert main(["package", str(converted_tiny), str(tmp_path / "e"), "--variant", "engine"]) == 1
    assert "needs --engine-dir" in capsys.readouterr().err


# ---- schema and wiring ----------------------------------------------------------------------------------------


def test_every_template_fills_to_a_schema_valid_config(reference_repo: Path) -> None:
    for name in pkg.MODELS:
        text = (reference_repo / "model_repository" / name / "config.pbtxt").read_text()
        assert parse_config(text, name).name == name
    with pytest.raises(pkg.PackageError, match="has no value"):
        pkg.fill_config('name: "x" backend: "${b}" max_batch_size: ${n}', {"b": "python"}, "t")


@pytest.mark.parametrize(
    "text, message",
    [
        ('name: "m" backend: "python" max_batch_sizee: 4', "no field named"),
        ('name: "m" backend: "python" input [{ name: "a" data_type: TYPE_FLOAT32 dims: [1] }]', "TYPE_FLOAT32"),
        ('name: "m" backend: "python" max_batch_size: "4"', "integer"),
        ('name: "m" backend: "${b}"', "placeholders left unfilled"),
        ('name: "m" max_batch_size: 1', "neither backend nor platform"),
    ],
)
def test_schema_errors_are_reported(text: str, message: str) -> None:
    with pytest.raises(RepositoryError, match=message):
        parse_config(text, "config.pbtxt")


def _rewire(repo: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(repo / "model_repository", copy)
    cfg = _cfg(repo, "ensemble")
    edit(cfg)
    (copy / "ensemble" / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    return copy


def _step(cfg: model_config_pb2.ModelConfig, model: str):
    return next(s for s in cfg.ensemble_scheduling.step if s.model_name == model)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: _step(c, "tensorrt_llm").input_map.pop("input_lengths"), "does not feed required input"),
        (lambda c: _step(c, "tensorrt_llm").output_map.__setitem__("cum_log_probs", "_CUM"), "consumed by no"),
        (lambda c: _step(c, "preprocessing").input_map.pop("STOP_WORDS_DICT"), r"\['stop_words'\] feed no step"),
        (lambda c: _step(c, "tensorrt_llm").input_map.__setitem__("temperature", "_TOP_K"), "is TYPE_FP32 but"),
        (lambda c: _step(c, "tensorrt_llm").input_map.__setitem__("input_ids", "_NOWHERE"), "no ensemble input"),
        (lambda c: _step(c, "postprocessing").output_map.__setitem__("OUTPUT", "text_out"), "produced by no step"),
        (lambda c: _step(c, "tensorrt_llm").input_map.__setitem__("beam", "_END_ID"), "not an input of"),
        (lambda c: setattr(c, "max_batch_size", 64), "exceeds that of step model"),
    ],
)
def test_ensemble_wiring_errors_are_caught(reference_repo: Path, tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(RepositoryError, match=message):
        validate_repository(_rewire(reference_repo, tmp_path, edit))


def test_client_input_types_match_the_ensemble(reference_repo: Path) -> None:
    import numpy as np
    from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

    from trt_gemma4.client.triton import INPUT_DTYPES

    for model in ("ensemble", "tensorrt_llm_bls"):
        declared = {i.name: model_config_pb2.DataType.Name(i.data_type)[5:] for i in _cfg(reference_repo, model).input}
        assert set(declared) == set(INPUT_DTYPES)
        for name, dtype in INPUT_DTYPES.items():
            want = declared[name].replace("STRING", "BYTES")
            assert np_to_triton_dtype(np.dtype(dtype)) == want or triton_to_np_dtype(want) == dtype, name


# ---- text side ----------------------------------------------------------------------------------------------


def test_text_config_comes_from_the_checkpoint_files(tiny_text_ckpt: Path) -> None:
    from trt_gemma4.testing.tiny import END_OF_TURN, EOS, PAD

    gen = json.loads((tiny_text_ckpt / "generation_config.json").read_text())
    cfg = load_text_config(tiny_text_ckpt)
    assert cfg.end_id == EOS and cfg.stop_ids == (EOS, END_OF_TURN) and cfg.pad_id == PAD
    assert list(cfg.suppress_ids) == gen["suppress_tokens"]
    assert (cfg.sampling.temperature, cfg.sampling.top_k, cfg.sampling.top_p) == (1.0, 64, 0.95)
    assert not cfg.sampling.greedy


def test_chat_template_is_rendered_with_thinking_off_by_default(tiny_text_ckpt: Path) -> None:
    codec = TextCodec(tiny_text_ckpt)
    plain = codec.prompt("What is the capital of France?")
    thinking = codec.prompt("What is the capital of France?", enable_thinking=True)
    assert plain == "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    assert thinking.startswith("<bos><start_of_turn>system\n") and thinking.endswith(plain[len("<bos>") :])
    ids = codec.encode(plain)
    from trt_gemma4.testing.tiny import BOS, END_OF_TURN, START_OF_TURN

    assert ids[0] == BOS and ids.count(START_OF_TURN) == 2 and ids.count(END_OF_TURN) == 1
    assert codec.prompt("raw text", chat=False) == "raw text"


def test_word_lists_round_trip() -> None:
    words = [[5], [7, 8, 9], [11, 12]]
    rows = flatten_word_lists(words)
    assert rows == [[5, 7, 8, 9, 11, 12], [1, 4, 6, -1, -1, -1]]
    assert unflatten_word_lists(rows) == words
    assert flatten_word_lists([]) == [[0], [-1]]


def test_incremental_detokenizer_never_splits_a_character(tiny_text_ckpt: Path) -> None:
    codec = TextCodec(tiny_text_ckpt)
    text = "Héllo wörld ☃ — naïve café 💡 done"
    ids = codec.encode(text)
    assert len(ids) > len(text) // 2  # the multi-byte characters are several byte tokens each
    detok = IncrementalDetokenizer(codec)
    deltas = [detok.add([i]) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text == codec.decode(ids)
    assert not any("\ufffd" in d for d in deltas)


# ---- the reference engine -------------------------------------------------------------------------------------


def _sampling(**kw):
    from trt_gemma4.triton.reference import SamplingParams

    return SamplingParams(**{"max_new_tokens": 8, "end_id": 1, **kw})


def test_sampling_follows_tensorrt_llm_semantics() -> None:
    import torch

    from trt_gemma4.triton.reference import next_token, stopped_by

    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 5.0, 4.0, 3.0, -1.0, 2.0])
    assert next_token(logits, [], [], _sampling(top_k=1), g)[0] == 1
    assert next_token(logits, [], [], _sampling(top_k=1, min_tokens=1), g)[0] == 2  # end id masked
    assert next_token(logits, [], [], _sampling(top_k=1, bad_sequences=[[2]], min_tokens=1), g)[0] == 3
    assert next_token(logits, [], [7], _sampling(top_k=1, bad_sequences=[[7, 1]]), g)[0] == 2  # 2-token bad word
    assert next_token(logits, [1], [], _sampling(top_k=1, repetition_penalty=10.0), g)[0] == 2
    assert next_token(logits, [], [1, 1], _sampling(top_k=1, frequency_penalty=1.5), g)[0] == 2
    drawn = {next_token(logits, [], [], _sampling(top_k=2, temperature=1.0), g)[0] for _ in range(200)}
    assert drawn == {1, 2}
    drawn = {next_token(logits, [], [], _sampling(top_p=0.5, temperature=1.0), g)[0] for _ in range(100)}
    assert drawn == {1}  # the top token alone holds more than half the mass
    a = [next_token(logits, [], [], _sampling(), torch.Generator().manual_seed(3))[0] for _ in range(5)]
    b = [next_token(logits, [], [], _sampling(), torch.Generator().manual_seed(3))[0] for _ in range(5)]
    assert a == b
    assert stopped_by([4, 1], _sampling()) == "end_id"
    assert stopped_by([4, 7, 9], _sampling(stop_sequences=[[7, 9]])) == "stop"
    assert stopped_by([4] * 8, _sampling()) == "length"
    assert stopped_by([4, 7], _sampling(stop_sequences=[[7, 9]])) == ""


def test_inflight_batcher_matches_one_at_a_time_greedy_generation(converted_tiny: Path) -> None:
    import threading

    from trt_gemma4.backends.torch_backend import TorchBackend
    from trt_gemma4.triton.reference import InflightBatcher, TokenEvent

    prompts = [[2, 3, 40, 41, 42], [2, 3, 50], [2, 3, 60, 61, 62, 63, 64, 65, 66]]
    want = TorchBackend(str(converted_tiny)).generate([prompts[0]], 6, greedy=True)
    want += TorchBackend(str(converted_tiny)).generate([prompts[1]], 6, greedy=True)
    want += TorchBackend(str(converted_tiny)).generate([prompts[2]], 6, greedy=True)
    batcher = InflightBatcher.from_checkpoint(converted_tiny, max_batch_size=4, max_seq_len=64)
    got: list[list[int]] = [[], [], []]
    ends: list[str] = ["", "", ""]
    done = threading.Semaphore(0)
    try:
        for i, p in enumerate(prompts):

            def cb(ev: TokenEvent, i: int = i) -> None:
                if ev.finished:
                    ends[i] = ev.reason
                    done.release()
                else:
                    got[i].append(ev.token)

            batcher.submit(p, _sampling(max_new_tokens=6, end_id=-1, top_k=1), cb, lambda: False)
        for _ in prompts:
            assert done.acquire(timeout=60)
    finally:
        batcher.close()
    assert got == want and ends == ["length"] * 3
    assert batcher.backend.cache.sequences == {}  # every sequence's blocks were freed


def test_inflight_batcher_rejects_requests_it_cannot_hold(converted_tiny: Path) -> None:
    from trt_gemma4.triton.reference import GenerationError, InflightBatcher

    batcher = InflightBatcher.from_checkpoint(converted_tiny, max_batch_size=1, max_seq_len=32)
    try:
        with pytest.raises(GenerationError, match="exceed max_seq_len 32"):
            batcher.submit([2] * 30, _sampling(max_new_tokens=8), lambda ev: None, lambda: False)
        with pytest.raises(GenerationError, match="outside the vocabulary"):
            batcher.submit([2, 10**6], _sampling(), lambda ev: None, lambda: False)
    finally:
        batcher.close()


def test_client_names_fields_of_the_wrong_type() -> None:
    from trt_gemma4.client import GenerateRequest
    from trt_gemma4.client.triton import type_problems

    fields = GenerateRequest("hi", max_tokens=8, top_k=1, stop_words=["x"], enable_thinking=True).fields(stream=True)
    assert fields == {
        "text_input": "hi",
        "max_tokens": 8,
        "stream": True,
        "top_k": 1,
        "enable_thinking": True,
        "stop_words": ["x"],
    }
    assert type_problems(fields) == []
    bad = {"text_input": 3, "max_tokens": "ten", "temperature": True, "stream": 1, "stop_words": ["a", 2]}
    assert type_problems(bad) == [
        "text_input must be a string, got 3",
        "max_tokens must be a number (int32), got 'ten'",
        "temperature must be a number (float32), got True",
        "stream must be true/false, got 1",
        "stop_words must be a string, got ['a', 2]",
    ]
