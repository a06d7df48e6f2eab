"""Runs a built Gemma-4 engine with TensorRT-LLM 1.2.1's C++ runtime, for `trt-gemma4 verify --engine`.

Only at a site with TensorRT-LLM 1.2.1 and a GPU. The runtime is `tensorrt_llm.runtime.ModelRunnerCpp` (the
Executor behind Triton's tensorrtllm backend), following tensorrt_llm/runtime/model_runner_cpp.py of the 1.x line
(from_dir(...) and generate(...); the commit read is not recorded, see trt_gemma4/testing/trtllm_api.json).
Our plugin library is loaded first: the engine's plugin layers are deserialised through TensorRT's plugin
registry, which must already hold our creators (research/trtllm.md §4.4).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trt_gemma4 import plugins
from trt_gemma4.errors import Gemma4Error
from trt_gemma4.spec import Gemma4Spec


@dataclass
class EngineOutput:
    """Greedy continuation of each prompt: its new tokens, and the fp32 logits [new tokens, vocab] that chose them."""

    tokens: list[list[int]]
    logits: list[torch.Tensor] | None


def engine_spec(engine_dir: str | Path) -> tuple[Gemma4Spec, dict[str, Any]]:
    """The model spec and the whole config.json of an engine directory (builder.py Engine.save writes
    {"version", "pretrained_config", "build_config"}; our `gemma4` key rides in pretrained_config)."""
    path = Path(engine_dir) / "config.json"
    if not path.is_file():
        raise Gemma4Error(f"{path}: not an engine directory (no config.json; build one with `trt-gemma4 build`)")
    cfg = json.loads(path.read_text())
    g = (cfg.get("pretrained_config") or {}).get("gemma4")
    if not isinstance(g, dict) or "spec" not in g:
        raise Gemma4Error(f"{path}: pretrained_config has no 'gemma4' key: not a trt-gemma4 engine")
    return Gemma4Spec.from_dict(g["spec"]), cfg


def attention_windows(spec: Gemma4Spec, max_seq_len: int) -> list[int]:
    """The runtime's per-layer max_attention_window_size: the sliding window on sliding layers, the whole
    sequence on global ones (research/trtllm.md §3: the window is a run-time setting, not in the engine)."""
    return [max_seq_len if spec.is_global(i) else spec.sliding_window for i in spec.layer_range]


def find_plugin_library(engine_dir: str | Path) -> Path:
    """The plugin library `trt-gemma4 build` puts beside the engines."""
    p = Path(engine_dir) / plugins.LIBRARY_NAME
    if not p.is_file():
        raise Gemma4Error(f"{p}: plugin library not found beside the engine; pass its path explicitly")
    return p


def run_engine(
    engine_dir: str | Path,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    plugin_library: str | Path | None = None,
    with_logits: bool = True,
    kv_cache_free_gpu_memory_fraction: float = 0.5,
) -> EngineOutput:
    """Greedy-generate `max_new_tokens` after each prompt with the engine (rank 0; TP engines run under mpirun
    with one process per rank, only rank 0 gets results). Logits are the generation logits of each new token."""
    from tensorrt_llm.runtime import ModelRunnerCpp  # model_runner_cpp.py (1.x)

    spec, cfg = engine_spec(engine_dir)
    build_cfg = cfg.get("build_config") or {}
    max_seq_len = int(build_cfg.get("max_seq_len") or spec.max_position_embeddings)
    paged_context_fmha = bool((build_cfg.get("plugin_config") or {}).get("use_paged_context_fmha", False))
    plugins.load_library(plugin_library if plugin_library is not None else find_plugin_library(engine_dir))
    runner = ModelRunnerCpp.from_dir(
        str(engine_dir),
        rank=0,
        max_attention_window_size=attention_windows(spec, max_seq_len),
        kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
        # chunked context and block reuse need paged context FMHA, off with an FP8 KV cache (trtllm_policy.py)
        kv_cache_enable_block_reuse=False,
        enable_chunked_context=paged_context_fmha,
        gather_generation_logits=with_logits,
    )
    batch = [torch.tensor(list(p), dtype=torch.int32) for p in prompts]
    out = runner.generate(
        batch,
        max_new_tokens=max_new_tokens,
        end_id=-1,  # no token id is -1: every prompt gets exactly max_new_tokens (verify compares fixed lengths)
        pad_id=spec.pad_token_id,
        top_k=1,  # greedy (generate() turns sampling keywords into an executor SamplingConfig)
        return_dict=True,
        output_sequence_lengths=True,
        output_generation_logits=with_logits,
    )
    ids, lengths = out["output_ids"].cpu(), out["sequence_lengths"].cpu()
    tokens = [ids[b, 0, len(p) : int(lengths[b, 0])].tolist() for b, p in enumerate(prompts)]
    logits = None
    if with_logits:
        gen = out["generation_logits"].float().cpu()  # [batch, beams, new tokens, vocab]
        logits = [gen[b, 0, : len(tokens[b])] for b in range(len(prompts))]
    return EngineOutput(tokens, logits)
