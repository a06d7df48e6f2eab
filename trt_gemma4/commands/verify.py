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
    p.add_argument(
        "--mode",
        choices=["auto", "model", "layers"],
        default="auto",
        help="whole model, or layer by layer streaming the weights (default: layers above 2B params)",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="compute dtype of both sides")
    p.add_argument(
        "--kv-dtype",
        choices=sorted(KV_DTYPES),
        default=None,
        help="KV-cache storage of the torch backend (default: the compute dtype)",
    )
    p.add_argument("--kv-scales", choices=["identity", "checkpoint"], default="identity")
    p.add_argument("--device", default="cpu", help="torch device of the torch backend and HF (cpu, cuda)")
    p.add_argument("--prompt-lengths", default=None, help="comma-separated prompt lengths (random token ids)")
    p.add_argument("--greedy-tokens", type=int, default=32, help="greedy tokens compared (model mode; 0: none)")
    p.add_argument("--tokens-per-block", type=int, default=32, help="KV-cache tokens per block (a power of 2)")
    p.add_argument(
        "--tolerance", type=float, default=None, help="max relative logit error (default 1e-4 in fp32, 3e-2 in bf16)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--engine",
        metavar="DIR",
        default=None,
        help="also run the built TensorRT-LLM engine DIR on the same prompts (needs TensorRT-LLM)",
    )
    p.add_argument(
        "--speculative",
        metavar="DRAFTER",
        default=None,
        help="also check that greedy speculative decoding with the converted drafter DRAFTER equals "
        "greedy decoding, and report the acceptance length",
    )
    p.add_argument("--draft-len", type=int, default=4, help="draft tokens per step with --speculative")


def prompt_lengths(arg: str | None, window: int) -> list[int]:
    """The --prompt-lengths list, or the default [2·window + 8, 1, window + 3]."""
    if arg:
        from trt_gemma4.errors import Gemma4Error

        try:
            return [int(x) for x in arg.split(",") if x.strip()]
        except ValueError:
            raise Gemma4Error(f"--prompt-lengths: expected comma-separated integers, found {arg!r}") from None
    return [2 * window + 8, 1, window + 3]


# An engine runs bf16 GEMMs and an FP8 cache: its logits sit this far from the torch backend at most.
ENGINE_TOLERANCE = 5e-2


def random_prompts(lengths: list[int], vocab: int, seed: int) -> list[list[int]]:
    """Token ids drawn away from the special ids at the bottom of the vocabulary."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lo = min(16, vocab // 4)
    return [torch.randint(lo, vocab, (n,), generator=g).tolist() for n in lengths]


def _engine_runner() -> Any:
    """--engine: checked before any work. The engine runs only at a TensorRT-LLM 1.2.1 site."""
    import importlib.util

    from trt_gemma4.errors import MissingToolError

    if importlib.util.find_spec("tensorrt_llm") is None:
        raise MissingToolError(
            "verify --engine runs the engine with TensorRT-LLM 1.2.1 (tensorrt_llm is not importable here); use the "
            "NGC container nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3 (docs/site_build.md)"
        )
    return verify_engine


def verify_engine(engine_dir: str, backend: Any, prompts: list[list[int]], n_tokens: int) -> dict[str, Any]:
    """The engine vs this checkpoint's torch backend on the same prompts: greedy-token agreement, and the logit
    error of the engine's generation logits against the torch backend teacher-forced on the engine's tokens."""
    from trt_gemma4.backends.engine_runner import run_engine

    n_tokens = max(n_tokens, 1)
    eng = run_engine(engine_dir, prompts, n_tokens, with_logits=True)
    ours = backend.generate(prompts, n_tokens)
    equal = sum(_common_prefix(a, b) for a, b in zip(eng.tokens, ours))
    worst = 0.0
    for p, toks, lg in zip(prompts, eng.tokens, eng.logits or []):
        sid = backend.add_sequence()
        try:
            ref = backend.prefill(sid, list(p) + toks[:-1], all_logits=True)[len(p) - 1 :].float().cpu()
        finally:
            backend.free(sid)
        worst = max(worst, float((lg[: ref.shape[0]] - ref).abs().max() / ref.abs().max().clamp_min(1e-30)))
    return {
        "engine": str(engine_dir),
        "greedy_tokens_equal": equal,
        "greedy_tokens_total": n_tokens * len(prompts),
        "rel_logit_error": worst,
    }


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


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
    longest = max(lengths) + max(args.greedy_tokens, 1) + args.draft_len
    if longest > spec.max_position_embeddings:
        raise Gemma4Error(
            f"--prompt-lengths: the longest prompt plus the generated tokens needs {longest} positions, "
            f"but the model has max_position_embeddings {spec.max_position_embeddings}"
        )
    tpb = args.tokens_per_block
    if tpb <= 0 or tpb & (tpb - 1):
        raise Gemma4Error(f"--tokens-per-block: expected a positive power of two, found {tpb}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise Gemma4Error(f"--device: expected cpu or cuda[:N], found {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Gemma4Error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA GPU")
    prompts = random_prompts(lengths, spec.vocab_size, args.seed)
    mode = args.mode
    if mode == "auto":
        mode = "layers" if spec.text_parameter_count() > LAYER_MODE_ABOVE else "model"
    greedy = args.greedy_tokens if mode == "model" else 0
    cache = CacheConfig(
        dtype=kv_dtype,
        tokens_per_block=args.tokens_per_block,
        max_seq_len=max(lengths) + max(args.greedy_tokens, 1) + args.draft_len + 1,
        max_sequences=len(prompts),
        kv_scales=args.kv_scales,
    )
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
        eng = run_engine(args.engine, backend, prompts, args.greedy_tokens)
        result["engine"] = eng
        ok = ok and eng["rel_logit_error"] <= max(tol, ENGINE_TOLERANCE)
    result["pass"] = ok
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"verify {args.ckpt}: tp {weights.tp} pp {weights.pp}, {mode} mode, {args.dtype} compute, "
            f"{result['kv_dtype']} KV cache ({args.kv_scales} scales), prompts of {lengths} tokens"
        )
        if report.layer_rel_errors:
            worst = max(range(len(report.layer_rel_errors)), key=report.layer_rel_errors.__getitem__)
            print(
                f"  hidden states: max|Δh|/max|h| per layer up to {report.layer_rel_errors[worst]:.2e} (layer {worst})"
            )
        print(
            f"  logits vs HF fp32: max|Δ|/max|logit| = {report.rel_logit_error:.2e} "
            f"(max|Δ| {report.max_abs_logit_error:.2e}; tolerance {tol:.0e}); "
            f"argmax agreement {report.argmax_agreement:.1%}"
        )
        if floor is not None:
            print(f"  HF itself in {args.dtype}: {floor:.2e} from HF fp32 (a {args.dtype} run passes within 1.5x that)")
        if greedy:
            print(f"  greedy: {report.greedy_tokens_equal}/{report.greedy_tokens_total} tokens identical to HF")
        if "speculative" in result:
            from trt_gemma4.speculative.verify import format_report

            print("  " + format_report(result["speculative"]))
        if "engine" in result:
            e = result["engine"]
            print(
                f"  engine {e['engine']}: logits vs torch backend max|Δ|/max|logit| = {e['rel_logit_error']:.2e}; "
                f"greedy {e['greedy_tokens_equal']}/{e['greedy_tokens_total']} tokens identical"
            )
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1
