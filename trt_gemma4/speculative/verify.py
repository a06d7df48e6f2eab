"""`trt-gemma4 verify --speculative DRAFTER`: greedy speculative decoding must equal greedy target decoding.

The check runs on the verify command's backend weights and prompts, with its own KV cache sized for speculative
verification (sliding ring of window + draft length), so the result does not depend on how the caller sized its
cache. It reports agreement (tokens identical to plain greedy) and acceptance (drafts accepted per verify step,
tokens per verify step).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trt_gemma4.backends.torch_backend import TorchBackend
from trt_gemma4.checkpoint.drafter import DrafterCheckpoint, convert_drafter, load_drafter
from trt_gemma4.errors import CheckpointError
from trt_gemma4.spec import DRAFTER_MODEL_TYPES, load_json
from trt_gemma4.speculative import decoding
from trt_gemma4.speculative.torch_drafter import TorchDrafter


def open_drafter(path: str | Path, backend: TorchBackend, workdir: str | Path | None = None) -> DrafterCheckpoint:
    """A converted drafter directory, or an HF assistant checkpoint converted (BF16) into `workdir` first."""
    path = Path(path)
    cfg = load_json(path / "config.json")
    if "gemma4_drafter" in cfg:
        return load_drafter(path, backend.spec)
    if cfg.get("model_type") in DRAFTER_MODEL_TYPES:
        if workdir is None:
            raise ValueError("an HF assistant checkpoint needs a workdir to be converted into")
        out = Path(workdir) / "drafter"
        convert_drafter(path, out, backend.spec)
        return load_drafter(out, backend.spec)
    raise CheckpointError(
        str(path / "config.json"),
        None,
        "a converted drafter (trt-gemma4 convert --drafter) or a gemma4_unified_assistant checkpoint",
        f"model_type {cfg.get('model_type')!r}",
    )


def check_speculative(
    backend: TorchBackend,
    drafter: str | Path,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    draft_len: int,
) -> dict[str, Any]:
    """Greedy with and without the drafter on `prompts` (batched): agreement and acceptance as a JSON-able dict.

    Keys: tokens_equal / tokens_total (positions where the speculative output equals plain greedy), identical
    (every sequence equal), mean_accepted (accepted drafts per verify step), acceptance_length (tokens per verify
    step, bonus included), acceptance_rate (accepted / drafted), rounds, draft_len, seconds (speculative run),
    exact_expected (whether this compute/KV dtype guarantees identical tokens).
    """
    if draft_len < 1:
        raise ValueError(f"--draft-len must be at least 1, not {draft_len}")
    cfg = dataclasses.replace(
        backend.cache_cfg,
        max_draft_len=max(draft_len, backend.cache_cfg.max_draft_len),
        max_seq_len=max(len(p) for p in prompts) + max_new_tokens + draft_len + 1,
        max_sequences=max(len(prompts), backend.cache_cfg.max_sequences),
    )
    target = TorchBackend(backend.weights, dtype=backend.ops.dtype, device=backend.ops.device, cache=cfg)
    with tempfile.TemporaryDirectory(prefix="trt-gemma4-drafter-") as tmp:
        ckpt = open_drafter(drafter, target, tmp)
        greedy = target.generate([list(p) for p in prompts], max_new_tokens)
        t0 = time.perf_counter()
        res = decoding.generate(target, TorchDrafter(target, ckpt), prompts, max_new_tokens, draft_len)
        seconds = time.perf_counter() - t0
    equal = sum(a == b for s, g in zip(res.tokens, greedy) for a, b in zip(s, g))
    total = sum(len(g) for g in greedy)
    tot = res.total
    return {
        "draft_len": draft_len,
        "tokens_equal": equal,
        "tokens_total": total,
        "identical": res.tokens == greedy,
        "rounds": tot.rounds,
        "drafted": tot.drafted,
        "accepted": tot.accepted,
        "mean_accepted": tot.accepted / tot.rounds if tot.rounds else 0.0,
        "acceptance_length": tot.acceptance_length,
        "acceptance_rate": tot.acceptance_rate,
        "per_prompt_acceptance_length": [s.acceptance_length for s in res.stats],
        "drafter_weights": ckpt.weights,
        # Token-for-token equality is guaranteed with fp32 compute and an fp32 KV cache. With FP8/BF16 storage or
        # bf16 compute, the (k+1)-row verify step and the 1-row decode round slightly different values, and a
        # near-tie argmax can flip: report agreement, do not require it.
        "exact_expected": target.ops.dtype == torch.float32 and cfg.dtype == torch.float32,
        "seconds": round(seconds, 3),
    }


def format_report(rep: dict[str, Any]) -> str:
    """One line for the verify command's text output."""
    return (
        f"speculative (k={rep['draft_len']}): {rep['tokens_equal']}/{rep['tokens_total']} tokens identical to "
        f"greedy; acceptance length {rep['acceptance_length']:.2f} tokens per verify step "
        f"({rep['accepted']}/{rep['drafted']} drafts accepted over {rep['rounds']} steps)"
    )
