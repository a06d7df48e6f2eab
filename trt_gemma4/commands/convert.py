"""Convert a ModelOpt fp8_pb_wo export into a TRT-LLM checkpoint directory (config.json + rank{N}.safetensors).

The whole export is validated first; nothing is written unless it is sound. FP8 weights and their 128x128 block
scales are copied as they are (no requantization); q|k|v and gate|up are fused at 128-row aligned offsets.
Tensor parallelism never splits a 128-block (the error lists the TP sizes that work); the global layers' single
KV head is replicated on every rank. KV-cache scales are 1.0 unless --kv-scales checkpoint. The output appears
atomically, with conversion_report.json beside the rank files. Format: docs/checkpoint_format.md.
"""

from __future__ import annotations

import argparse

HELP = __doc__ or ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="ModelOpt export directory (config.json, hf_quant_config.json, *.safetensors)")
    p.add_argument("out", help="output directory (must not exist)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    p.add_argument(
        "--kv-scales",
        choices=["identity", "checkpoint"],
        default="identity",
        help="KV-cache scales: 1.0 (identity, default) or the export's k_scale/v_scale (checkpoint)",
    )
    p.add_argument(
        "--drafter",
        metavar="DIR",
        default=None,
        help="also convert the assistant drafter (gemma4_unified_assistant) in DIR into OUT/drafter",
    )
    p.add_argument(
        "--drafter-weights",
        choices=["bf16", "block_fp8"],
        default="bf16",
        help="the drafter's linear weights in the output: BF16 as published (default) or our block-FP8 format",
    )


def run(args: argparse.Namespace) -> int:
    import shutil

    from trt_gemma4.convert import convert

    result = convert(args.ckpt, args.out, tp=args.tp, pp=args.pp, kv_scales=args.kv_scales, progress=None)
    if args.drafter:
        from trt_gemma4.checkpoint.drafter import attach_drafter

        try:
            d = attach_drafter(result.out, args.drafter, args.drafter_weights)
        except BaseException:
            shutil.rmtree(result.out, ignore_errors=True)  # nothing half-written: no target without its drafter
            raise
        print(f"drafter {args.drafter}: {d.num_layers} layers, hidden {d.hidden_size} ({args.drafter_weights})")
    rep = result.report
    sizes = ", ".join(f"{r['file']} {r['bytes'] / 1e6:.1f} MB" for r in rep["ranks"])
    print(
        f"wrote {result.out} (tp {args.tp}, pp {args.pp}, kv scales {args.kv_scales}): {sizes} "
        f"in {rep['seconds']:.1f} s"
    )
    return 0
