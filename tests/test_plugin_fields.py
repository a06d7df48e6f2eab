"""Plugin fields: the Python schema (trt_gemma4.plugins) and the compiled creators agree, and every field survives
TensorRT's serialize -> deserialize path (getFieldsToSerialize -> createPlugin(kRUNTIME) -> clone).

The compiled half builds libtrt_gemma4_plugins.so (CMake + nvcc against the TensorRT 10.14 headers in
$TENSORRT_INCLUDE_DIR or .trt_headers/, see scripts/fetch_trt_headers.sh) and drives its creators from
tests/cpp/plugin_fields_harness.cpp, built with g++. Without the compilers it skips unless TRT_GEMMA4_REQUIRE_NVCC=1,
without the headers unless TRT_GEMMA4_REQUIRE_TRT_HEADERS=1; where demanded, it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from trt_gemma4.build import cached_plugin_library, find_cmake, find_nvcc, find_trt_headers
from trt_gemma4.errors import Gemma4Error
from trt_gemma4.plugins import (
    BLOCK_FP8_GEMM,
    DRAFT_ATTENTION_INPUTS,
    GLOBAL_ATTENTION,
    GLOBAL_ATTENTION_INPUTS,
    PLUGINS,
    global_attention_fields,
)
from trt_gemma4.spec import GEMMA4_12B

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "cpp" / "plugin_fields_harness.cpp"

# ---- the schema alone --------------------------------------------------------------------------------------


def test_schema_names_are_unique_and_typed() -> None:
    for schema in PLUGINS.values():
        names = [f.name for f in schema.fields]
        assert len(names) == len(set(names)), schema.name
        assert all(f.dtype in ("int32", "float32") for f in schema.fields)
        assert (schema.version, schema.namespace) == ("1", "trt_gemma4")


def test_field_arrays_fill_defaults_and_types() -> None:
    arrays = BLOCK_FP8_GEMM.field_arrays({"out_features": 256, "in_features": 3840})
    assert [(n, a.dtype, a.tolist(), t) for n, a, t in arrays] == [
        ("out_features", np.int32, [256], "INT32"),
        ("in_features", np.int32, [3840], "INT32"),
        ("block_size", np.int32, [128], "INT32"),
        ("weight_layout_version", np.int32, [1], "INT32"),
    ]
    with pytest.raises(Gemma4Error, match="field 'in_features' is required"):
        BLOCK_FP8_GEMM.field_arrays({"out_features": 256})
    with pytest.raises(Gemma4Error, match="unknown field"):
        BLOCK_FP8_GEMM.field_arrays({"out_features": 256, "in_features": 128, "bias": 1})


def test_global_attention_fields_for_the_12b() -> None:
    f = global_attention_fields(GEMMA4_12B, 47, tp=2)
    assert f["layer_idx"] == 47 and f["num_q_heads"] == 8 and f["num_kv_heads"] == 1
    assert f["head_dim"] == 512 and f["kv_head_size"] == 256 and f["sliding_window"] == 0
    assert f["draft_mode"] == 0 and f["softmax_scale"] == 1.0 and f["kv_cache_dtype"] == 0
    # The drafter's read of the last sliding layer: 256-d heads, 8 KV heads, the 1024 window.
    d = global_attention_fields(GEMMA4_12B, 46, draft_mode=True, kv_cache_dtype="bf16")
    assert (d["head_dim"], d["num_kv_heads"], d["sliding_window"], d["draft_mode"], d["kv_cache_dtype"]) == (
        256,
        8,
        1024,
        1,
        1,
    )
    with pytest.raises(Gemma4Error, match="sliding layer"):
        global_attention_fields(GEMMA4_12B, 46)


def test_input_lists_share_the_runtime_tensors() -> None:
    assert GLOBAL_ATTENTION_INPUTS[4:] == DRAFT_ATTENTION_INPUTS[3:]
    host = [t.name for t in GLOBAL_ATTENTION_INPUTS if t.host]
    assert host == [
        "host_past_key_value_lengths",
        "host_context_lengths",
        "host_request_types",
        "host_kv_cache_pool_pointers",
        "host_kv_cache_pool_mapping",
        "host_max_attention_window_sizes",
    ]


# ---- the compiled creators ---------------------------------------------------------------------------------


def _tools_or_skip() -> tuple[Path, Path, Path, str]:
    """nvcc, cmake, g++ (demanded by TRT_GEMMA4_REQUIRE_NVCC=1) and the TensorRT headers (demanded by
    TRT_GEMMA4_REQUIRE_TRT_HEADERS=1: they are not in the repository; scripts/fetch_trt_headers.sh gets them)."""
    nvcc, cmake, headers, gxx = find_nvcc(), find_cmake(), find_trt_headers(), shutil.which("g++")
    tools = [n for n, v in (("nvcc", nvcc), ("cmake", cmake), ("g++", gxx)) if not v]
    if tools:
        message = f"missing {', '.join(tools)}"
        if os.environ.get("TRT_GEMMA4_REQUIRE_NVCC") == "1":
            pytest.fail(message + "; TRT_GEMMA4_REQUIRE_NVCC=1 demands them")
        pytest.skip(message)
    if headers is None:
        message = "no TensorRT 10.14 headers ($TENSORRT_INCLUDE_DIR or .trt_headers/: scripts/fetch_trt_headers.sh)"
        if os.environ.get("TRT_GEMMA4_REQUIRE_TRT_HEADERS") == "1":
            pytest.fail(message + "; TRT_GEMMA4_REQUIRE_TRT_HEADERS=1 demands them")
        pytest.skip(message)
    return nvcc, cmake, headers, gxx  # type: ignore[return-value]


def _cuda_include(nvcc: Path) -> Path:
    """The toolkit's include directory (NvInferRuntimeBase.h includes cuda_runtime_api.h)."""
    candidates = [nvcc.parent.parent / "include", nvcc.resolve().parent.parent / "include"]
    candidates += [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include", Path("/usr/local/cuda/include")]
    for c in candidates:
        if (c / "cuda_runtime_api.h").is_file():
            return c
    pytest.fail(f"cuda_runtime_api.h not found near {nvcc} (looked in {', '.join(map(str, candidates))})")


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(harness binary, plugin library); the library is built once per source state ($TRT_GEMMA4_CACHE)."""
    nvcc, cmake, headers, gxx = _tools_or_skip()
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("TRT_GEMMA4_CACHE"):
            mp.setenv("TRT_GEMMA4_CACHE", str(tmp_path_factory.mktemp("cache")))
        lib = cached_plugin_library("sm_90", nvcc=nvcc, cmake=cmake, headers=headers, log=lambda _: None)
    binary = tmp_path_factory.mktemp("harness") / "plugin_fields_harness"
    cuda_include = _cuda_include(nvcc)
    subprocess.run(
        [
            gxx,
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Wno-deprecated-declarations",
            f"-I{headers}",
            f"-I{cuda_include}",
            str(HARNESS),
            "-o",
            str(binary),
            "-ldl",
            "-rdynamic",  # exports the harness's getPluginRegistry() to the library
        ],
        check=True,
    )
    return binary, lib


def ask(harness: tuple[Path, Path], *requests: str, env: dict[str, str] | None = None) -> list[dict]:
    binary, lib = harness
    proc = subprocess.run(
        [str(binary), str(lib)],
        input="\n".join(requests) + "\n",
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _request(cmd: str, name: str, values: dict) -> str:
    schema = PLUGINS[name]
    parts = [f"{k}:{schema.field(k).dtype}:{v}" for k, v in values.items()]
    return " ".join([cmd, name, *parts])


def test_creators_advertise_the_schema(harness) -> None:
    (creators,) = ask(harness, "names")
    assert [c["name"] for c in creators] == list(PLUGINS)
    for c in creators:
        schema = PLUGINS[c["name"]]
        assert c["kind"] == "PLUGIN CREATOR_V3ONE"
        assert (c["version"], c["namespace"]) == (schema.version, schema.namespace)
        assert c["fields"] == [[f.name, f.trt_type_code] for f in schema.fields]


# Every field at a value other than its default, so a field dropped on the way shows.
NON_DEFAULT = {
    "BlockFp8WoGemm": {"out_features": 4096, "in_features": 3840, "block_size": 128, "weight_layout_version": 1},
    "Gemma4GlobalAttention": {
        "layer_idx": 47,
        "num_q_heads": 8,
        "num_kv_heads": 8,
        "head_dim": 256,
        "kv_head_size": 256,
        "tokens_per_block": 64,
        "kv_cache_dtype": 1,
        "k_scale": 0.5,
        "v_scale": 0.25,
        "softmax_scale": 0.125,
        "rms_norm_eps": 1e-5,
        "sliding_window": 1024,
        "draft_mode": 1,
        "max_kv_splits": 8,
    },
}


@pytest.mark.parametrize("name", list(PLUGINS))
def test_fields_round_trip_through_serialization(harness, name: str) -> None:
    values = NON_DEFAULT[name]
    (reply,) = ask(harness, _request("create", name, values))
    assert reply["ok"] and reply["name"] == name
    expected = {k: [PLUGINS[name].field(k).dtype, pytest.approx(v), 1] for k, v in values.items()}
    assert reply["build"] == reply["runtime"] == reply["clone"]
    assert reply["build"] == expected


@pytest.mark.parametrize("schema", [BLOCK_FP8_GEMM, GLOBAL_ATTENTION], ids=lambda s: s.name)
def test_missing_optional_fields_take_the_schema_defaults(harness, schema) -> None:
    required = {f.name: NON_DEFAULT[schema.name][f.name] for f in schema.fields if f.default is None}
    if schema is GLOBAL_ATTENTION:
        required.update(head_dim=512, kv_head_size=256, num_q_heads=16)
    (reply,) = ask(harness, _request("create", schema.name, required))
    assert reply["ok"]
    resolved = schema.resolve(required)
    assert {k: v[1] for k, v in reply["build"].items()} == pytest.approx(resolved)


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("BlockFp8WoGemm", {"out_features": 250, "in_features": 128}),  # N not a multiple of 16
        ("BlockFp8WoGemm", {"out_features": 256, "in_features": 128, "block_size": 64}),
        ("BlockFp8WoGemm", {"in_features": 128}),  # required field missing
        ("Gemma4GlobalAttention", {"layer_idx": 5, "num_q_heads": 16, "head_dim": 384, "kv_head_size": 256}),
        (
            "Gemma4GlobalAttention",
            {"layer_idx": 5, "num_q_heads": 16, "head_dim": 512, "kv_head_size": 256, "tokens_per_block": 48},
        ),
        (
            "Gemma4GlobalAttention",
            {"layer_idx": 5, "num_q_heads": 16, "num_kv_heads": 2, "head_dim": 512, "kv_head_size": 256},
        ),  # target mode writes one KV head
    ],
)
def test_invalid_fields_are_refused(harness, name: str, values: dict) -> None:
    (reply,) = ask(harness, _request("create", name, values))
    assert reply == {"ok": False}


def test_wrong_field_type_is_refused(harness) -> None:
    (reply,) = ask(harness, "create BlockFp8WoGemm out_features:float32:256 in_features:int32:128")
    assert reply == {"ok": False}


def test_format_combinations_follow_the_input_lists(harness) -> None:
    trt = {"bfloat16": "bf16", "fp8": "fp8", "float32": "f32", "int32": "i32", "int64": "i64"}
    gemm = ["bf16", "fp8", "f32", "bf16"]
    target = [trt[t.dtype] for t in GLOBAL_ATTENTION_INPUTS] + ["bf16"]
    draft = [trt[t.dtype] for t in DRAFT_ATTENTION_INPUTS] + ["bf16"]
    gemm_fields = "out_features:int32:256 in_features:int32:128"
    attn = "layer_idx:int32:5 num_q_heads:int32:16 head_dim:int32:512 kv_head_size:int32:256"
    replies = ask(
        harness,
        f"formats BlockFp8WoGemm {gemm_fields} | {' '.join(gemm)}",
        f"formats BlockFp8WoGemm {gemm_fields} | f32 fp8 f32 f32",
        f"formats Gemma4GlobalAttention {attn} | {' '.join(target)}",
        f"formats Gemma4GlobalAttention {attn} draft_mode:int32:1 | {' '.join(draft)}",
        f"formats Gemma4GlobalAttention {attn} | {' '.join(['i32'] + target[1:])}",
    )
    assert replies[0]["supported"] == [True] * 4
    assert replies[1]["supported"] == [False, True, True, False]
    assert replies[2]["supported"] == [True] * len(target)
    assert replies[3]["supported"] == [True] * len(draft)
    assert replies[4]["supported"][0] is False


REGISTERED = [["BlockFp8WoGemm", "1", "trt_gemma4"], ["Gemma4GlobalAttention", "1", "trt_gemma4"]]


def test_library_registers_its_creators_when_loaded(harness) -> None:
    # The harness plays libnvinfer's getPluginRegistry(); the library finds it as it loads (LD_PRELOAD, ctypes).
    loaded, init = ask(harness, "registered", "init", env={"TRT_GEMMA4_PLUGINS_AUTOREGISTER": "1"})
    assert loaded == {"calls": 2, "registered": REGISTERED}
    assert init == {"init": True, "after": {"calls": 2, "registered": REGISTERED}}  # nothing registered twice


def test_autoregistration_can_be_switched_off_for_loadlibrary(harness) -> None:
    loaded, first, second = ask(harness, "registered", "init", "init", env={"TRT_GEMMA4_PLUGINS_AUTOREGISTER": "0"})
    assert loaded == {"calls": 0, "registered": []}
    assert first == second == {"init": True, "after": {"calls": 2, "registered": REGISTERED}}
