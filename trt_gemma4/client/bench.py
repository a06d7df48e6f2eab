"""Closed-loop serving benchmark: N workers stream requests back to back; TTFT, inter-token latency, tokens/s.

Definitions (as genai-perf / AIPerf use them): TTFT = first token's arrival - request start; inter-token latency
= (last token's arrival - first token's arrival) / (tokens - 1) for each request, and the gaps between
consecutive responses; output tokens/s = all generated tokens / wall time of the measured phase. Loops are bounded
by a request count and a wall-clock limit.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from trt_gemma4.client.triton import GenerateRequest, GenerateResult, GrpcClient, HttpClient, make_client


@dataclass
class BenchConfig:
    url: str
    model: str
    concurrency: int
    requests: int
    duration_s: float
    warmup: int
    timeout_s: float
    requests_for: Callable[[int], GenerateRequest]


@dataclass
class _Sample:
    start: float
    end: float
    ttft: float | None
    tokens: int
    gaps: list[float]  # seconds between consecutive token-carrying responses
    last: float | None  # arrival of the last token-carrying response


def _percentiles(xs: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    if not xs:
        return {"mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None}
    s = sorted(xs)

    def pct(q: float) -> float:
        i = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
        return s[i] * scale

    return {
        "mean": statistics.fmean(s) * scale,
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "min": s[0] * scale,
        "max": s[-1] * scale,
    }


def _one(client: GrpcClient | HttpClient, request: GenerateRequest, timeout: float) -> GenerateResult:
    if isinstance(client, GrpcClient):
        return client.generate(request, stream=True, timeout=timeout)
    return client.generate_streaming(request, timeout=timeout)


def _sample(r: GenerateResult) -> _Sample:
    arrivals = [c.arrival for c in r.chunks if c.token_ids or c.text]
    tokens = sum(max(len(c.token_ids), 1) for c in r.chunks if c.token_ids or c.text)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return _Sample(r.start, r.end, r.ttft, tokens, gaps, arrivals[-1] if arrivals else None)


def run_bench(cfg: BenchConfig, progress: TextIO | None = None) -> dict[str, Any]:
    """Run the benchmark and return the report (plain JSON-serializable dict)."""
    lock = threading.Lock()
    next_index = [0]
    samples: list[_Sample] = []
    errors: list[str] = []
    failed = [0]

    for i in range(cfg.warmup):  # not measured: loads caches, compiles nothing on the server but the first path
        try:
            _one(make_client(cfg.url, cfg.model, cfg.timeout_s), cfg.requests_for(i), cfg.timeout_s)
        except Exception as e:  # a warm-up failure is reported, the run goes on
            errors.append(f"warm-up: {e}")

    t0 = time.monotonic()
    deadline = t0 + cfg.duration_s

    def worker() -> None:
        client = make_client(cfg.url, cfg.model, cfg.timeout_s)
        while time.monotonic() < deadline:
            with lock:
                i = next_index[0]
                if i >= cfg.requests:
                    return
                next_index[0] += 1
            try:
                r = _one(client, cfg.requests_for(i), cfg.timeout_s)
                with lock:
                    samples.append(_sample(r))
            except Exception as e:  # counted and reported; the benchmark keeps going
                with lock:
                    failed[0] += 1
                    if len(errors) < 20:
                        errors.append(str(e))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(cfg.concurrency)]
    for t in threads:
        t.start()
    tty = progress is not None and progress.isatty()
    last_line, last_print = "", 0.0
    finished = False
    while not finished:
        for t in threads:
            t.join(0.5)
        finished = not any(t.is_alive() for t in threads)
        if progress is None:
            continue
        with lock:
            done, bad, toks = len(samples), failed[0], sum(s.tokens for s in samples)
        el = time.monotonic() - t0
        line = (
            f"{done}/{cfg.requests} done, {bad} failed, {toks} tokens, {el:.1f} s, "
            f"{toks / el if el > 0 else 0:.1f} tokens/s"
        )
        if tty and line != last_line:  # one line, rewritten in place
            progress.write("\r" + line + ("\n" if finished else ""))
        elif not tty and (finished or el - last_print >= 5.0):  # a log: a line every 5 s and at the end
            progress.write(line + "\n")
            last_print = el
        progress.flush()
        last_line = line
    wall = time.monotonic() - t0
    tokens = sum(s.tokens for s in samples)
    per_request_itl = [
        (s.last - s.start - s.ttft) / (s.tokens - 1)
        for s in samples
        if s.ttft is not None and s.last is not None and s.tokens > 1
    ]
    return {
        "url": cfg.url,
        "model": cfg.model,
        "concurrency": cfg.concurrency,
        "requests_planned": cfg.requests,
        "duration_limit_s": cfg.duration_s,
        "completed": len(samples),
        "failed": failed[0],
        "summary": {
            "wall_s": wall,
            "output_tokens": tokens,
            "output_tokens_per_s": tokens / wall if wall > 0 else 0.0,
            "requests_per_s": len(samples) / wall if wall > 0 else 0.0,
            "mean_output_tokens": tokens / len(samples) if samples else 0.0,
        },
        "ttft_ms": _percentiles([s.ttft for s in samples if s.ttft is not None]),
        "itl_ms": _percentiles(per_request_itl),
        "inter_response_gap_ms": _percentiles([g for s in samples for g in s.gaps]),
        "latency_ms": _percentiles([s.end - s.start for s in samples]),
        "errors": errors,
    }
