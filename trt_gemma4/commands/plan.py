"""Plan an engine: build limits, KV pools per attention window and their memory on a GPU, runtime settings.

Prints what each choice means (e.g. an FP8 KV cache turns off paged context FMHA in TRT-LLM 1.2: prompts are
capped at max_num_tokens and KV reuse is off) and writes the plan as JSON for `build` and `package`.
Defaults come from engines/presets/<arch>.json; every flag overrides the preset.
"""

from __future__ import annotations

import argparse

HELP = __doc__ or ""


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The plan's flags (shared with `build`). None means: take the preset's value."""
    g = p.add_argument_group("plan")
    g.add_argument("--gpu", choices=["h100", "h200"], default=None, help="GPU memory preset (H100 80GB, H200 141GB)")
    g.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=None,
        help="GPU memory in GiB (nvidia-smi's total MiB / 1024); overrides --gpu",
    )
    g.add_argument(
        "--memory-fraction",
        dest="kv_cache_free_gpu_mem_fraction",
        type=float,
        default=None,
        help="kv_cache_free_gpu_mem_fraction: share of the free memory given to the KV cache",
    )
    g.add_argument("--max-batch-size", type=int, default=None)
    g.add_argument("--max-num-tokens", type=int, default=None, help="tokens per engine step (all requests)")
    g.add_argument("--max-seq-len", type=int, default=None, help="prompt + output; also max_position_embeddings")
    g.add_argument("--max-input-len", type=int, default=None)
    g.add_argument("--tokens-per-block", type=int, default=None)
    g.add_argument("--kv-cache-dtype", choices=["fp8", "bf16"], default=None)
    g.add_argument(
        "--paged-context-fmha-override",
        action="store_true",
        default=None,
        help="keep paged context FMHA on with an FP8 KV cache (our build; unverified on a GPU)",
    )
    g.add_argument(
        "--lm-head-shares-embedding",
        action="store_true",
        default=None,
        help="count the tied LM head once (when the backend shares the embedding's weights)",
    )
    g.add_argument("--max-draft-len", type=int, default=None, help="speculative drafts per step (needs the drafter)")


def plan_overrides(args: argparse.Namespace) -> dict[str, object]:
    keys = (
        "gpu",
        "gpu_memory_gb",
        "kv_cache_free_gpu_mem_fraction",
        "max_batch_size",
        "max_num_tokens",
        "max_seq_len",
        "max_input_len",
        "tokens_per_block",
        "kv_cache_dtype",
        "paged_context_fmha_override",
        "lm_head_shares_embedding",
        "max_draft_len",
    )
    out = {k: getattr(args, k, None) for k in keys}
    if getattr(args, "tp", None) is not None:
        out["tp"] = args.tp
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="sm_90", help="sm_90 (default), sm_100 or sm_120: picks the preset")
    p.add_argument(
        "--checkpoint", metavar="DIR", help="ModelOpt export or converted checkpoint (default: the Gemma-4-12B numbers)"
    )
    p.add_argument("--drafter", metavar="DIR", help="include the assistant drafter (its checkpoint directory)")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel size")
    add_plan_arguments(p)
    p.add_argument("--output", "-o", metavar="FILE", help="write the plan as JSON")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of the summary")


def run(args: argparse.Namespace) -> int:
    import json

    from trt_gemma4.plan import load_preset, make_plan, plan_arguments, spec_for_checkpoint
    from trt_gemma4.spec import GEMMA4_12B, check_drafter_fits, load_drafter_spec

    preset = load_preset(args.arch)
    if args.checkpoint:
        spec, model = spec_for_checkpoint(args.checkpoint), args.checkpoint.rstrip("/").split("/")[-1]
    else:
        spec, model = GEMMA4_12B.with_drafter(None), "gemma-4-12b"
    if args.drafter:
        drafter = load_drafter_spec(args.drafter)
        check_drafter_fits(spec, drafter)
        spec = spec.with_drafter(drafter)
    plan = make_plan(
        spec,
        model=model,
        arch=args.arch,
        with_drafter=bool(args.drafter),
        **plan_arguments(preset, plan_overrides(args)),
    )
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.summary())
    if args.output:
        plan.save(args.output)
        print(f"wrote {args.output}")
    return 0
