"""Send a prompt to a served model and print the answer as it streams.

URL picks the protocol: grpc://HOST:PORT (gRPC streaming, decoupled responses) or http://HOST:PORT (Triton's
generate / generate_stream extension; HOST:PORT alone means http). The prompt is the user's message: the
server wraps it in the checkpoint's chat template (--raw sends it as is). Unset sampling options take the
checkpoint's generation_config defaults; --top-k 1 is greedy.
"""

from __future__ import annotations

import argparse

HELP = __doc__ or ""


def add_request_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with bench-serve: the model and the generation settings."""
    p.add_argument("--model", default="ensemble", help="ensemble (default) or tensorrt_llm_bls")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--min-tokens", type=int)
    p.add_argument("--stop", action="append", default=[], metavar="WORD", help="stop word (repeatable)")
    p.add_argument("--thinking", action="store_true", help="turn the chat template's thinking switch on")
    p.add_argument("--raw", action="store_true", help="send the prompt without the chat template")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole answer (default 120)")


def make_request(args: argparse.Namespace, text: str):  # -> GenerateRequest (import kept inside for a fast CLI)
    from trt_gemma4.client import GenerateRequest

    return GenerateRequest(
        text=text,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        min_tokens=args.min_tokens,
        stop_words=list(args.stop),
        enable_thinking=True if args.thinking else None,
        apply_chat_template=False if args.raw else None,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="grpc://HOST:PORT or http://HOST:PORT")
    p.add_argument("prompt", help="the user's message")
    add_request_arguments(p)
    p.add_argument("--no-stream", dest="stream", action="store_false", help="one response instead of a stream")
    p.add_argument("--show-stats", action="store_true", help="print tokens, time to first token and tokens/s")


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from trt_gemma4.client import GrpcClient, HttpClient, make_client
    from trt_gemma4.errors import Gemma4Error

    if args.max_tokens < 1:
        raise Gemma4Error(f"--max-tokens must be at least 1, got {args.max_tokens}")
    client = make_client(args.url, args.model, args.timeout)
    request = make_request(args, args.prompt)
    start = time.monotonic()
    first = None
    n_tokens = 0
    if isinstance(client, GrpcClient):
        chunks = client.stream(request, stream=args.stream)
    elif args.stream:
        chunks = client.stream(request)
    else:
        assert isinstance(client, HttpClient)
        chunks = iter(client.generate(request).chunks)
    for chunk in chunks:
        if first is None:
            first = chunk.arrival - start
        n_tokens += len(chunk.token_ids)
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.show_stats:
        total = time.monotonic() - start
        ttft = f"{first * 1000:.1f} ms" if first is not None else "n/a"
        print(
            f"{n_tokens} tokens in {total:.3f} s; time to first token {ttft}; "
            f"{n_tokens / total if total > 0 else 0:.1f} tokens/s",
            file=sys.stderr,
        )
    return 0
