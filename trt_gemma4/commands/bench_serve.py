"""Measure a served model: time to first token, inter-token latency and tokens/s at a given concurrency.

Works against any Triton endpoint serving the repository's `ensemble` or `tensorrt_llm_bls` (engine or
reference variant). CONCURRENCY workers each stream one request at a time until --requests have been sent or
--duration seconds have passed (both bounded); a progress line shows completed requests and running numbers.
Writes a JSON report (--out) with percentiles and every error message seen.
"""

from __future__ import annotations

import argparse

from trt_gemma4.commands.client import add_request_arguments, make_request

HELP = __doc__ or ""

DEFAULT_PROMPT = "Write a short story about a robot who learns to paint."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="grpc://HOST:PORT or http://HOST:PORT (HOST:PORT alone: http)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--requests", type=int, default=64, help="requests to send in all (default 64, at most 100000)")
    p.add_argument("--duration", type=float, default=300.0, help="stop sending after this many seconds (default 300)")
    p.add_argument("--warmup", type=int, default=1, help="requests sent first and not measured (default 1)")
    p.add_argument("--prompt", action="append", default=[], help="prompt (repeatable; cycled over requests)")
    p.add_argument("--out", metavar="JSON", help="write the report here")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_request_arguments(p)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from trt_gemma4.client import make_client
    from trt_gemma4.client.bench import BenchConfig, run_bench
    from trt_gemma4.errors import Gemma4Error
    from trt_gemma4.fsutil import write_text_atomic

    if args.concurrency < 1 or not 1 <= args.requests <= 100_000 or args.duration <= 0 or args.max_tokens < 1:
        raise Gemma4Error("--concurrency >= 1, 1 <= --requests <= 100000, --duration > 0 and --max-tokens >= 1")
    url = args.url if "://" in args.url else f"http://{args.url}"
    make_client(url, args.model)  # checks the scheme before any request
    prompts = args.prompt or [DEFAULT_PROMPT]
    cfg = BenchConfig(
        url=url,
        model=args.model,
        concurrency=args.concurrency,
        requests=args.requests,
        duration_s=args.duration,
        warmup=args.warmup,
        timeout_s=args.timeout,
        requests_for=lambda i: make_request(args, prompts[i % len(prompts)]),
    )
    progress = sys.stderr if args.progress else None
    report = run_bench(cfg, progress=progress)
    text = json.dumps(report, indent=2)
    if args.out:
        write_text_atomic(Path(args.out), text + "\n")
    s = report["summary"]
    print(
        f"{report['completed']} requests ({report['failed']} failed) in {s['wall_s']:.2f} s at concurrency "
        f"{args.concurrency}: {s['output_tokens_per_s']:.1f} tokens/s, {s['requests_per_s']:.2f} requests/s; "
        f"TTFT p50 {_ms(report['ttft_ms']['p50'])} p99 {_ms(report['ttft_ms']['p99'])}; "
        f"ITL p50 {_ms(report['itl_ms']['p50'])} p99 {_ms(report['itl_ms']['p99'])}"
        + (f"; report {args.out}" if args.out else "")
    )
    if report["completed"] == 0:
        first = report["errors"][0] if report["errors"] else "no request finished"
        raise Gemma4Error(f"no request completed: {first}")
    return 0


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"
