"""`trt-gemma4 build` on a machine without TensorRT-LLM: every stage before the engine, the manifest, exit codes,
and the messages for missing tools. The engine stage itself is exercised with a recording backend."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import types
from pathlib import Path

import pytest

import trt_gemma4.backends
from trt_gemma4 import build as build_mod
from trt_gemma4.build import EXIT_NO_ENGINES, verify_manifest
from trt_gemma4.cli import main
from trt_gemma4.plan import Plan


@pytest.fixture(autouse=True)
def no_tensorrt_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the path where tensorrt_llm is absent, wherever they run."""
    monkeypatch.setattr(build_mod, "tensorrt_llm_available", lambda: False)


@pytest.fixture(scope="module")
def plugin_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep built plugin libraries in $TRT_GEMMA4_CACHE, or in this run's temp dir (never the user's home)."""
    if not os.environ.get("TRT_GEMMA4_CACHE"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TRT_GEMMA4_CACHE", str(tmp_path_factory.mktemp("cache")))
            yield
    else:
        yield


def no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_mod, "find_nvcc", lambda: None)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory: pytest.TempPathFactory, plugin_cache: None) -> tuple[int, Path, str]:
    """`trt-gemma4 build --arch sm_90` with no checkpoint: the tiny export is made on the spot."""
    out = tmp_path_factory.mktemp("fresh") / "engine-dir"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build_mod, "tensorrt_llm_available", lambda: False)
        import io
        from contextlib import redirect_stdout

        buf = io.StringIO()
        with redirect_stdout(buf):
            rc = main(["build", "--arch", "sm_90", "--output", str(out)])
    return rc, out, buf.getvalue()


def test_fresh_machine_build_runs_every_stage_before_the_engine(fresh_build) -> None:
    rc, out, stdout = fresh_build
    assert rc == 0
    for n, name in enumerate(["validate", "convert", "plan", "plugin library", "engine", "manifest"], start=1):
        assert f"[{n}/6]" in stdout and name in stdout
    m = manifest(out)
    assert m["model"] == "gemma4-tiny" and m["arch"] == "sm_90" and m["engines_built"] is False
    assert [s["name"] for s in m["stages"]] == ["validate", "convert", "plan", "plugins", "engine", "manifest"]
    assert m["stages"][4]["status"] == "skipped"
    assert [x["name"] for x in m["missing"]][-1] == "tensorrt_llm 1.2.1"
    assert "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3" in m["missing"][-1]["how"]
    assert (out / "checkpoint" / "config.json").is_file() and (out / "checkpoint" / "rank0.safetensors").is_file()
    assert Plan.load(out / "plan.json").to_dict() == m["plan"]
    assert m["plan"]["max_seq_len"] == 4096  # the preset's 32768 lowered to the tiny model's positions
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["max_position_embeddings"] == m["plan"]["max_position_embeddings"] == 4096
    plugins_done = m["stages"][3]["status"] == "done"
    assert plugins_done == (out / "libtrt_gemma4_plugins.so").is_file()
    if os.environ.get("TRT_GEMMA4_REQUIRE_NVCC") == "1" and build_mod.find_trt_headers() is not None:
        assert plugins_done, m["stages"][3]
    assert not list(out.parent.glob(".engine-dir.tmp-*"))  # the staging directory was renamed, not left behind


def test_manifest_checksums_cover_every_file(fresh_build) -> None:
    _, out, _ = fresh_build
    files = manifest(out)["files"]
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(files) == [f for f in on_disk if f != "manifest.json"]
    rank0 = out / "checkpoint" / "rank0.safetensors"
    assert files["checkpoint/rank0.safetensors"] == {
        "sha256": hashlib.sha256(rank0.read_bytes()).hexdigest(),
        "bytes": rank0.stat().st_size,
    }
    assert verify_manifest(out) == []


def test_manifest_detects_changed_and_extra_files(fresh_build, tmp_path: Path) -> None:
    import shutil

    _, out, _ = fresh_build
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "plan.json", "a") as f:
        f.write(" ")
    (copy / "stray.txt").write_text("x")
    assert sorted(verify_manifest(copy)) == ["plan.json: sha256 differs", "stray.txt: not in the manifest"]


def test_require_engines_exits_nonzero(tiny_text_ckpt: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    no_compiler(monkeypatch)
    out = tmp_path / "e"
    argv = ["build", "--arch", "sm_100", "--checkpoint", str(tiny_text_ckpt), "-o", str(out), "--require-engines"]
    rc = main(argv + ["--max-seq-len", "2048"])
    assert rc == EXIT_NO_ENGINES
    assert "--require-engines and no engine was built" in capsys.readouterr().out
    assert manifest(out)["arch"] == "sm_100" and manifest(out)["cuda_architecture"] == "100"
    assert json.loads((out / "checkpoint" / "config.json").read_text())["max_position_embeddings"] == 2048


def test_missing_tools_are_named_with_how_to_get_them(
    tiny_text_ckpt: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    no_compiler(monkeypatch)
    monkeypatch.setattr(build_mod, "find_cmake", lambda: None)
    monkeypatch.setattr(build_mod, "find_trt_headers", lambda: None)
    out = tmp_path / "e"
    assert main(["build", "--arch", "sm_90", "--checkpoint", str(tiny_text_ckpt), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    missing = {m["name"]: m["how"] for m in manifest(out)["missing"]}
    assert list(missing) == ["nvcc", "cmake", "TensorRT 10.14 headers", "tensorrt_llm 1.2.1"]
    assert "nvidia-cuda-nvcc" in missing["nvcc"]
    assert "pip install cmake" in missing["cmake"]
    assert "TENSORRT_INCLUDE_DIR" in missing["TensorRT 10.14 headers"] and "v10.14" in missing["TensorRT 10.14 headers"]
    for how in missing.values():
        assert how in printed
    stages = {s["name"]: s for s in manifest(out)["stages"]}
    assert stages["plugins"]["status"] == "skipped" and "nvcc, cmake" in stages["plugins"]["detail"]
    assert not (out / "libtrt_gemma4_plugins.so").exists()


def test_existing_output_is_refused(tiny_text_ckpt: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    no_compiler(monkeypatch)
    out = tmp_path / "e"
    out.mkdir()
    assert main(["build", "--arch", "sm_90", "--checkpoint", str(tiny_text_ckpt), "-o", str(out)]) == 1
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert main(["build", "--arch", "sm_90", "--checkpoint", str(tiny_text_ckpt), "-o", str(out), "--overwrite"]) == 0
    assert (out / "manifest.json").is_file()


def test_failed_build_leaves_nothing_behind(tiny_text_ckpt: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    no_compiler(monkeypatch)
    out = tmp_path / "e"
    # A plan the tiny model cannot have: longer than its 4096 positions.
    rc = main(
        ["build", "--arch", "sm_90", "--checkpoint", str(tiny_text_ckpt), "-o", str(out), "--max-seq-len", "9000"]
    )
    assert rc == 1
    assert "exceeds the model's max_position_embeddings 4096" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_engine_stage_hands_over_to_the_backend(fresh_build, tiny_text_ckpt: Path, tmp_path: Path, monkeypatch):
    _, first, _ = fresh_build
    library = first / "libtrt_gemma4_plugins.so"
    if not library.is_file():
        pytest.skip("the plugin library was not built (no nvcc/cmake/TensorRT headers here)")
    calls = []

    @dataclasses.dataclass(frozen=True)
    class EngineBuildOptions:  # the fields trt_gemma4.backends.trtllm_backend.EngineBuildOptions has
        max_batch_size: int
        max_input_len: int
        max_seq_len: int
        max_num_tokens: int
        tokens_per_block: int
        kv_cache_dtype: str

    def build_engines(ckpt_dir: Path, engine_dir: Path, plugin_library: Path, options, *, log) -> Path:
        calls.append((Path(ckpt_dir).name, Path(plugin_library).name, options))
        (Path(engine_dir) / "config.json").write_text("{}")
        (Path(engine_dir) / "rank0.engine").write_bytes(b"engine")
        return Path(engine_dir)

    backend = types.ModuleType("trt_gemma4.backends.trtllm_backend")
    backend.EngineBuildOptions = EngineBuildOptions  # type: ignore[attr-defined]
    backend.build_engines = build_engines  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "trt_gemma4.backends.trtllm_backend", backend)
    monkeypatch.setattr(trt_gemma4.backends, "trtllm_backend", backend, raising=False)
    monkeypatch.setattr(build_mod, "tensorrt_llm_available", lambda: True)
    monkeypatch.setattr(build_mod, "cached_plugin_library", lambda *a, **k: library)
    out = tmp_path / "e"
    argv = ["build", "--arch", "sm_90", "--checkpoint", str(tiny_text_ckpt), "-o", str(out), "--require-engines"]
    assert main(argv + ["--no-keep-checkpoint"]) == 0
    plan = Plan.load(out / "plan.json")
    assert calls == [
        (
            "checkpoint",
            "libtrt_gemma4_plugins.so",
            EngineBuildOptions(plan.max_batch_size, plan.max_input_len, 4096, 8192, 32, "fp8"),
        )
    ]
    m = manifest(out)
    assert m["engines_built"] is True and m["missing"] == []
    assert m["stages"][4]["detail"] == "config.json, rank0.engine"
    assert {"rank0.engine", "config.json", "libtrt_gemma4_plugins.so"} <= set(m["files"])
    assert not (out / "checkpoint").exists()
    assert verify_manifest(out) == []
    # A plan asking for what this backend cannot do is refused with a one-line reason.
    argv2 = ["build", "--arch", "sm_90", "--checkpoint", str(tiny_text_ckpt), "-o", str(tmp_path / "f")]
    assert main(argv2 + ["--paged-context-fmha-override"]) == 1


def test_plan_reads_the_converted_checkpoint(fresh_build, capsys) -> None:
    from trt_gemma4.plan import spec_for_checkpoint
    from trt_gemma4.spec import Gemma4Spec

    _, out, _ = fresh_build
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert spec_for_checkpoint(out / "checkpoint") == Gemma4Spec.from_dict(config["gemma4"]["spec"])
    assert main(["plan", "--checkpoint", str(out / "checkpoint"), "--max-seq-len", "1024", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["max_attention_window"] == ([16] * 5 + [1024]) * 2  # the tiny model's 16-token window
