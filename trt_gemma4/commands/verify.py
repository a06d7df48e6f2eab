"""Check a converted checkpoint: run it in the torch backend against HF transformers holding the same weights.

The HF model is built from the checkpoint's spec and given the checkpoint's block-FP8 weights dequantized (TP
ranks put back together), so the comparison is about the forward: max|Δlogit| / max|logit| over every position of
every prompt (ours run as one batch of unequal lengths), argmax agreement, and greedy tokens (ours batched, HF's
generate). Prompt lengths default to [2·window + 8, 1, window + 3] so sliding layers wrap their ring.

Modes: 'model' holds both models whole (tiny and small models); 'layers' streams the weights, one HF decoder
layer and one of ours at a time, comparing hidden states after every layer and then the logits; what a 12B
needs on a 24 GB machine ('auto' picks it above 2B parameters). Needs the 'tiny' extra (transformers >= 5.10.1).

The reference is always HF in fp32. A --dtype bf16 run is also set beside HF's own bf16 run and passes within
max(tolerance, 1.5 x HF's bf16 error). --speculative DRAFTER adds greedy speculative decoding with the drafter
(it must equal greedy decoding; the acceptance length is reported). --engine DIR runs the built engine on the same
prompts, where TensorRT-LLM is installed. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = __doc__ or ""

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
KV_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp8": "float8_e4m3fn"}
DEFAULT_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}
LAYER_MODE_ABOVE = 2_000_000_000  # parameters


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="OUT", help="converted checkpoint (trt-gemma4 convert OUT) or a ModelOpt export")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--mode", choices=["auto", "model", "layers"], default="auto",
                   help="whole model, or layer by layer streaming the weights (default: layers above 2B params)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="compute dtype of both sides")
    p.add_argument("--kv-dtype", choices=sorted(KV_DTYPES), default=None,
                   help="KV-cache storage of the torch backend (default: the compute dtype)")
    p.add_argument("--kv-scales", choices=["identity", "checkpoint"], default="identity")
    p.add_argument("--device", default="cpu", help="torch device of the torch backend and HF (cpu, cuda)")
    p.add_argument("--prompt-lengths", default=None, help="comma-separated prompt lengths (random token ids)")
    p.add_argument("--greedy-tokens", type=int, default=32, help="greedy tokens compared (model mode; 0: none)")
    p.add_argument("--tokens-per-block", type=int, default=32, help="KV-cache tokens per block (a power of 2)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max relative logit error (default 1e-4 in fp32, 3e-2 in bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", metavar="DIR", default=None,
                   help="also run the built TensorRT-LLM engine DIR on the same prompts (needs TensorRT-LLM)")
    p.add_argument("--speculative", metavar="DRAFTER", default=None,
                   help="also check that greedy speculative decoding with the converted drafter DRAFTER equals "
                        "greedy decoding, and report the acceptance length")
    p.add_argument("--draft-len", type=int, default=4, help="draft tokens per step with --speculative")


def prompt_lengths(arg: str | None, window: int) -> list[int]:
    """The --prompt-lengths list, or the default [2·window + 8, 1, window + 3]."""
    if arg:
        return [int(x) for x in arg.split(",") if x.strip()]
    return [2 * window + 8, 1, window + 3]


def random_prompts(lengths: list[int], vocab: int, seed: int) -> list[list[int]]:
    """Token ids drawn away from the special ids at the bottom of the vocabulary."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lo = min(16, vocab // 4)
    return [torch.randint(lo, vocab, (n,), generator=g).tolist() for n in lengths]


def _engine_runner() -> Any:
    """--engine: the TRT-LLM backend's `verify_engine(engine_dir, ckpt_dir, prompts) -> dict` (the engine's logits
    error against this checkpoint's torch backend). Only at a TensorRT-LLM site; checked before any work."""
    from trt_gemma4.errors import Gemma4Error, MissingToolError

    try:
        from trt_gemma4.backends import trtllm_backend
    except ImportError as e:
        raise MissingToolError(
            f"verify --engine runs the engine with TensorRT-LLM 1.2.1 ({e.name} is not importable here); use the "
            "NGC container nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
        ) from None
    run_engine = getattr(trtllm_backend, "verify_engine", None)
    if run_engine is None:
        raise Gemma4Error("verify --engine: this installation's TRT-LLM backend has no verify_engine()")
    return run_engine


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from trt_gemma4.backends.torch_backend import CacheConfig, TorchBackend
    from trt_gemma4.backends.weights import open_weights
    from trt_gemma4.errors import Gemma4Error
    from trt_gemma4.parity import build_hf_model, compare_layers, compare_model, require_transformers

    require_transformers()
    run_engine = _engine_runner() if args.engine else None
    dtype = getattr(torch, DTYPES[args.dtype])
    kv_dtype = getattr(torch, KV_DTYPES[args.kv_dtype or args.dtype])
    weights = open_weights(args.ckpt)
    spec = weights.spec
    lengths = prompt_lengths(args.prompt_lengths, spec.sliding_window)
    if not lengths or min(lengths) < 1:
        raise Gemma4Error(f"--prompt-lengths: expected positive lengths, found {args.prompt_lengths!r}")
    prompts = random_prompts(lengths, spec.vocab_size, args.seed)
    mode = args.mode
    if mode == "auto":
        mode = "layers" if spec.text_parameter_count() > LAYER_MODE_ABOVE else "model"
    greedy = args.greedy_tokens if mode == "model" else 0
    cache = CacheConfig(dtype=kv_dtype, tokens_per_block=args.tokens_per_block,
                        max_seq_len=max(lengths) + max(args.greedy_tokens, 1) + args.draft_len + 1,
                        max_sequences=len(prompts), kv_scales=args.kv_scales)
    backend = TorchBackend(weights, dtype=dtype, device=args.device, cache=cache, cache_weights=mode == "model")
    # The reference is HF in fp32; a bf16 run is also set beside HF's own bf16 run (how far bf16 alone moves it).
    if mode == "model":
        hf = build_hf_model(weights, torch.float32).to(args.device)
        low = build_hf_model(weights, dtype).to(args.device) if dtype != torch.float32 else None
        report = compare_model(backend, hf, prompts, greedy_tokens=greedy, low_precision_model=low)
    else:
        report = compare_layers(backend, prompts, torch.float32)
    tol = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE[args.dtype]
    floor = report.hf_low_precision_rel_error
    ok = report.rel_logit_error <= max(tol, 1.5 * floor if floor is not None else 0.0)
    if args.dtype == "fp32" and greedy:
        ok = ok and report.greedy_tokens_equal == report.greedy_tokens_total
    result: dict[str, Any] = {
        "checkpoint": str(args.ckpt),
        "mode": mode,
        "dtype": args.dtype,
        "kv_dtype": args.kv_dtype or args.dtype,
        "kv_scales": args.kv_scales,
        "tp": weights.tp,
        "pp": weights.pp,
        "prompt_lengths": lengths,
        "tolerance": tol,
        **report.to_dict(),
    }
    if args.speculative:
        from trt_gemma4.speculative.verify import check_speculative

        sp = check_speculative(backend, args.speculative, prompts, max(args.greedy_tokens, 1), args.draft_len)
        result["speculative"] = sp
        if sp.get("exact_expected", True):
            ok = ok and sp["tokens_equal"] == sp["tokens_total"]
    if run_engine is not None:
        result["engine"] = run_engine(args.engine, args.ckpt, prompts)
    result["pass"] = ok
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"verify {args.ckpt}: tp {weights.tp} pp {weights.pp}, {mode} mode, {args.dtype} compute, "
              f"{result['kv_dtype']} KV cache ({args.kv_scales} scales), prompts of {lengths} tokens")
        if report.layer_rel_errors:
            worst = max(range(len(report.layer_rel_errors)), key=report.layer_rel_errors.__getitem__)
            print(f"  hidden states: max|Δh|/max|h| per layer up to {report.layer_rel_errors[worst]:.2e} "
                  f"(layer {worst})")
        print(f"  logits vs HF fp32: max|Δ|/max|logit| = {report.rel_logit_error:.2e} "
              f"(max|Δ| {report.max_abs_logit_error:.2e}; tolerance {tol:.0e}); "
              f"argmax agreement {report.argmax_agreement:.1%}")
        if floor is not None:
            print(f"  HF itself in {args.dtype}: {floor:.2e} from HF fp32 (a {args.dtype} run passes within 1.5x that)")
        if greedy:
            print(f"  greedy: {report.greedy_tokens_equal}/{report.greedy_tokens_total} tokens identical to HF")
        if "speculative" in result:
            from trt_gemma4.speculative.verify import format_report

            print("  " + format_report(result["speculative"]))
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1
