"""Write a tiny but real Gemma-4 ModelOpt export (fp8_pb_wo + FP8 KV), made on the spot on the CPU.

The tiny model has the 12B's structure (5 sliding : 1 global layers, 512-d-style global heads with one KV head
and K=V, proportional RoPE, layer_scalar, soft-cap), quantized and exported by nvidia-modelopt exactly as the
real checkpoint was, so every command can be tried without the 13 GB download. Needs the 'tiny' extra.
"""

from __future__ import annotations

import argparse

HELP = __doc__ or ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory (must not exist or be empty, unless --overwrite)")
    p.add_argument("--text-only", action="store_true", help="Gemma4UnifiedForCausalLM (no vision/audio embedders)")
    p.add_argument(
        "--shape",
        choices=["main", "tp"],
        default="main",
        help="'main' (partial blocks, 0-D scales) or 'tp' (shardable 2 and 4 ways)",
    )
    p.add_argument(
        "--config-form",
        choices=["per_layer", "global_head_dim"],
        default="per_layer",
        help="config.json as transformers >=5.15 writes it (per_layer) or <=5.14 / the hub (global_head_dim)",
    )
    p.add_argument("--drafter", metavar="DIR", help="also write the tiny assistant drafter (BF16) to DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trt_gemma4.errors import Gemma4Error
    from trt_gemma4.spec import load_spec
    from trt_gemma4.testing.tiny import make_tiny, make_tiny_drafter

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise Gemma4Error(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    print(f"making the tiny Gemma-4 export ({args.shape}, {'text-only' if args.text_only else 'multimodal'}) ...")
    make_tiny(
        out, text_only=args.text_only, shape=args.shape, config_form=args.config_form, seed=args.seed, overwrite=True
    )
    print(f"wrote {out}: {load_spec(out).summary()}")
    if args.drafter:
        make_tiny_drafter(args.drafter, shape=args.shape, seed=args.seed)
        print(f"wrote the tiny drafter to {args.drafter}")
    return 0
