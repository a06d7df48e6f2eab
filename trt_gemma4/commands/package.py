"""Write the Triton model repository (preprocessing, tensorrt_llm, postprocessing, ensemble, tensorrt_llm_bls).

SRC is the output of `trt-gemma4 build` (its plan.json gives the limits, the per-layer attention windows and the
KV memory fraction; engine/ is served, plugins/ preloaded, checkpoint/ used by the reference variant) or a
converted checkpoint (trt-gemma4 convert; --plan adds a plan). Variants:
  engine     tensorrt_llm runs the engine on TensorRT-LLM's C++ backend, our plugin library preloaded by
             OUT/launch_triton.sh (in the NGC container nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3);
  reference  tensorrt_llm is a python model running the torch backend on the converted checkpoint (CPU), with
             the same inputs, outputs and streaming, so the whole repository is served anywhere.
Preprocessing applies the checkpoint's own chat template (thinking off unless a request sets enable_thinking)
and its generation_config sampling defaults; generation stops on end of turn as well as eos. Every config.pbtxt
is checked against Triton's schema and the ensemble wiring before OUT is written. Text only.
"""

from __future__ import annotations

import argparse

HELP = __doc__ or ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="ENGINE_OR_CKPT_DIR", help="engine directory or converted checkpoint")
    p.add_argument("out", metavar="OUT", help="output directory (holds model_repository/ and launch_triton.sh)")
    p.add_argument("--variant", choices=["engine", "reference"], default="engine")
    p.add_argument("--plan", metavar="PLAN_JSON", help="plan for a converted checkpoint (engines/<name>/plan.json)")
    p.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="the checkpoint's tokenizer files (default: SRC, then the export it was converted from)",
    )
    p.add_argument(
        "--engine-dir",
        metavar="PATH",
        help="the build's output directory (engine/, plugins/) as the server sees it (default: SRC when it is one)",
    )
    p.add_argument(
        "--plugin-lib", metavar="PATH", help="library to preload (default: ENGINE_DIR/plugins/libtrt_gemma4_plugins.so)"
    )
    p.add_argument("--max-batch-size", type=int, help="at most the plan's (default: the plan's, else 8)")
    p.add_argument("--max-input-len", type=int, help="longest prompt in tokens (default: the plan's)")
    p.add_argument("--max-seq-len", type=int, help="prompt + generated tokens (default: the plan's)")
    p.add_argument("--kv-cache-fraction", type=float, help="kv_cache_free_gpu_mem_fraction (default: the plan's)")
    p.add_argument(
        "--no-decoupled", dest="decoupled", action="store_false", help="one response per request (no streaming)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from trt_gemma4.triton.package import serving_plan, write_repository

    plan = serving_plan(
        args.src,
        args.variant,
        plan_file=args.plan,
        tokenizer=args.tokenizer,
        engine_dir=args.engine_dir,
        plugin_library=args.plugin_lib,
        max_batch_size=args.max_batch_size,
        max_input_len=args.max_input_len,
        max_seq_len=args.max_seq_len,
        kv_cache_free_gpu_mem_fraction=args.kv_cache_fraction,
        decoupled=args.decoupled,
    )
    result = write_repository(plan, args.out, overwrite=args.overwrite)
    print(f"wrote {result.out} ({plan.variant} variant, from {plan.source})")
    print(f"  models: {', '.join(result.models)} (configs checked against Triton's schema, ensemble wiring checked)")
    print(
        f"  max_batch_size {plan.max_batch_size}, max_input_len {plan.max_input_len}, "
        f"max_seq_len {plan.max_seq_len}, decoupled {plan.decoupled}"
    )
    print(f"  max_attention_window_size {','.join(map(str, plan.attention_windows))}")
    if plan.variant == "engine":
        print(
            f"  engine {plan.engine_dir}/engine, plugin library {plan.plugin_library} (preloaded by launch_triton.sh)"
        )
    else:
        print(f"  checkpoint {plan.checkpoint_dir} (torch backend, CPU)")
    for note in plan.notes:
        print(f"  note: {note}")
    print(f"start it with: {result.out}/launch_triton.sh --http-port=8000 --grpc-port=8001")
    return 0
