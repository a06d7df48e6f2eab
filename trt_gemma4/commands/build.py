"""Build the engine directory engines/<name>/: validate -> convert -> plan -> plugin library -> engine -> manifest.

With no --checkpoint it makes the tiny Gemma-4 export on the spot, so `trt-gemma4 build --arch sm_90` works on a
fresh machine. Where TensorRT-LLM 1.2.1 is not installed (anywhere but the NGC container
nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3) it runs every stage before the engine build, names what is
missing and how to get it, and exits 0; with --require-engines it exits 3 instead. docs/site_build.md has the
commands for a site build.
"""

from __future__ import annotations

import argparse

from trt_gemma4.commands.plan import add_plan_arguments, plan_overrides

HELP = __doc__ or ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, help="sm_90 (H100/H200, tuned), sm_100 or sm_120 (portable, untuned)")
    p.add_argument("--checkpoint", metavar="DIR", help="the ModelOpt export (default: make the tiny one)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    p.add_argument("--output", "-o", metavar="DIR", help="engine directory (default engines/<model>-<arch>-tp<N>)")
    p.add_argument("--require-engines", action="store_true", help="exit 3 unless the engine was built (CI at a site)")
    p.add_argument(
        "--kv-scales",
        choices=["identity", "checkpoint"],
        default="identity",
        help="KV-cache scales: 1.0 (default) or the export's",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument(
        "--no-keep-checkpoint",
        dest="keep_checkpoint",
        action="store_false",
        help="drop checkpoint/ once the engine is built",
    )
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs for the plugin library")
    add_plan_arguments(p)


def run(args: argparse.Namespace) -> int:
    from trt_gemma4.build import EXIT_NO_ENGINES, run_build

    overrides = plan_overrides(args)
    overrides.pop("tp", None)
    result = run_build(
        arch=args.arch,
        checkpoint=args.checkpoint,
        output=args.output,
        tp=args.tp,
        plan_overrides=overrides,
        kv_scales=args.kv_scales,
        overwrite=args.overwrite,
        keep_checkpoint=args.keep_checkpoint,
        jobs=args.jobs,
    )
    if result.engines_built:
        print(f"engines built: {result.output}")
        return 0
    print("engines NOT built; missing:")
    for m in result.missing:
        print(f"  - {m.line()}")
    if args.require_engines:
        print(f"trt-gemma4 build: error: --require-engines and no engine was built (exit {EXIT_NO_ENGINES})")
        return EXIT_NO_ENGINES
    return 0
