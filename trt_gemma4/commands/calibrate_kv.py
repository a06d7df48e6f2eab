"""Measure the FP8 KV cache of a checkpoint: per-layer K/V amax, bounds and the error of each scale choice.

Runs sample prompts through the torch backend (fp32) and reports, per layer: the amax of K (after RoPE, as cached)
and V; the analytic bounds |V_i| ≤ √d and |K_i| ≤ max|k_norm|·√d (V is a scale-free RMSNorm, K a weighted one
followed by a rotation); the checkpoint's k_scale / v_scale and the ModelOpt version that wrote them; and the
attention-output error max|o - o_fp32| / max|o_fp32| of a BF16 cache, an FP8 cache with identity scales (the
default) and an FP8 cache with the checkpoint's scales (sliding layers use their max, as stock gpt_attention
takes one merged scale). Each layer is replayed alone on the inputs the fp32 run gave it.

Prompts: random token ids by default, or lines of a text file (--prompts) with the checkpoint's tokenizer.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = __doc__ or ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="CKPT", help="ModelOpt export (has k_scale/v_scale) or converted checkpoint")
    p.add_argument("--prompts", metavar="FILE", help="text file, one prompt per line (needs a tokenizer.json)")
    p.add_argument("--tokenizer", metavar="DIR", help="directory with tokenizer.json (default: CKPT)")
    p.add_argument("--num-prompts", type=int, default=4, help="random prompts when --prompts is not given")
    p.add_argument("--prompt-len", type=int, default=None, help="random prompt length (default 2·window + 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _text_prompts(file: str, tokenizer_dir: Path) -> list[list[int]]:
    from trt_gemma4.errors import Gemma4Error, MissingToolError

    tok_file = tokenizer_dir / "tokenizer.json"
    if not tok_file.exists():
        raise Gemma4Error(f"{tok_file}: no such file (pass --tokenizer DIR with the model's tokenizer.json)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MissingToolError("--prompts needs the 'tokenizers' package: pip install 'trt-gemma4[tiny]'") from None
    tok = Tokenizer.from_file(str(tok_file))
    lines = [ln for ln in Path(file).read_text().splitlines() if ln.strip()]
    if not lines:
        raise Gemma4Error(f"{file}: no prompts (expected one per line)")
    return [tok.encode(ln).ids for ln in lines]


def run(args: argparse.Namespace) -> int:
    import json

    from trt_gemma4.backends.weights import open_weights
    from trt_gemma4.commands.verify import random_prompts
    from trt_gemma4.kv_calibration import calibrate

    weights = open_weights(args.ckpt)
    spec = weights.spec
    if args.prompts:
        prompts = _text_prompts(args.prompts, Path(args.tokenizer or args.ckpt))
    else:
        n = args.prompt_len or 2 * spec.sliding_window + 8
        prompts = random_prompts([n] * args.num_prompts, spec.vocab_size, args.seed)
    reports = calibrate(weights, prompts)
    version = weights.modelopt_version()
    has_ckpt = any(r.checkpoint_k_scale is not None for r in reports)
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": str(args.ckpt),
                    "modelopt_version": version,
                    "prompt_lengths": [len(p) for p in prompts],
                    "layers": [r.to_dict() for r in reports],
                },
                indent=2,
            )
        )
        return 0
    print(
        f"calibrate-kv {args.ckpt}: {len(prompts)} prompts of {[len(p) for p in prompts]} tokens; "
        f"checkpoint scales {'written by ModelOpt ' + str(version) if has_ckpt else 'not stored (identity)'}"
    )
    print("layer kind     K amax  K bound  V amax  V bound  k_scale   v_scale   err bf16  err fp8 id  err fp8 ckpt")
    for r in reports:
        ks = f"{r.checkpoint_k_scale:.3e}" if r.checkpoint_k_scale is not None else "-"
        vs = f"{r.checkpoint_v_scale:.3e}" if r.checkpoint_v_scale is not None else "-"
        ec = f"{r.error_fp8_checkpoint:.2e}" if r.error_fp8_checkpoint is not None else "-"
        print(
            f"{r.layer:5d} {r.kind:8s} {r.k_amax:6.2f}  {r.k_bound:7.2f}  {r.v_amax:6.2f}  {r.v_bound:7.2f}  "
            f"{ks:9s} {vs:9s} {r.error_bf16:.2e}  {r.error_fp8_identity:.2e}    {ec}"
        )
    worst_id = max(r.error_fp8_identity for r in reports)
    line = f"worst FP8 attention-output error: identity scales {worst_id:.2e}"
    if has_ckpt:
        worst_ck = max(r.error_fp8_checkpoint or 0.0 for r in reports)
        clipped = [r.layer for r in reports if r.checkpoint_scales_clip]
        line += f", checkpoint scales {worst_ck:.2e}"
        if clipped:
            line += f"; checkpoint scales clip K or V on layers {clipped}"
    print(line)
    return 0
