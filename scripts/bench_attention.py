"""Benchmark the Gemma-4 global-layer attention kernels on a CUDA GPU.

Decode: batch 1/8/32 x context 1K/8K/32K/128K, 16 q heads over one 512-d KV head in an FP8 paged cache (two 256-d
planes, 64 tokens per block, blocks in random order). Compared with
* the bytes floor: K+V bytes of the cache (1 KiB per token) plus q/out, over the device-to-device copy bandwidth
  measured in the same run (bytes read + bytes written);
* torch SDPA on a dense BF16 copy of the same cache (enable_gqa, scale 1.0).
Prefill: one sequence, causal, q_len = kv_len = 4K/16K, FLOP rate vs SDPA on the dense copy.

Every timing is the median over CUDA-graph replays (each replay runs several calls) timed with CUDA events. The
kernels run without RoPE here (inv_freq=None) so that SDPA computes the same function; the decode output is checked
against SDPA.

Decode is timed for each kernel variant in --variants (default v4,v3) on the same cache in the same run: the
variant is chosen through the environment variable TRT_GEMMA4_ATTN_DECODE, which the launcher reads at every call
(so at graph capture). Each decode row records its "variant"; prefill always runs the general kernel.

    python scripts/bench_attention.py --commit <sha> [--out DIR] [--results-dir bench/results] [--variants v4,v3]

Writes attention_bench.json to --out (default $OUT or .) and attention_<card>_<date>.json to --results-dir.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trt_gemma4.kernels import attention as attn  # noqa: E402

HQ, D, HS, TPB = 16, 512, 256, 64


def time_graph(fn: Callable[[], object], calls: int = 10, replays: int = 30) -> float:
    """Median microseconds per call of fn, captured `calls` times in a CUDA graph and replayed."""
    fn()  # warm-up outside the graph (module load, attribute setting)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / calls)
    return statistics.median(times)


def copy_bandwidth() -> dict[str, float]:
    """Device copy bandwidth in bytes/s (bytes read + bytes written, 1 GiB buffers), three ways; the floor uses the
    best. A memcpy captured in a graph may run on the copy engines, which are slower than the SMs."""
    n = 1 << 30
    src = torch.empty(n // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    graph_us = time_graph(lambda: dst.copy_(src), calls=5, replays=10)
    kernel_us = time_graph(lambda: torch.mul(src, 1.0, out=dst), calls=5, replays=10)
    eager = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        eager.append(start.elapsed_time(end) * 1000.0)
    return {
        "graph_memcpy": 2 * n / (graph_us * 1e-6),
        "elementwise_kernel": 2 * n / (kernel_us * 1e-6),
        "eager_copy": 2 * n / (statistics.median(eager) * 1e-6),
    }


def warm_up_clocks(ms: float = 300.0) -> None:
    """Keep the GPU busy for a while so that timings do not start at idle clocks."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    while True:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        end.record()
        end.synchronize()
        if start.elapsed_time(end) > ms:
            return


def sdpa_or_none(fn: Callable[[], torch.Tensor]) -> torch.Tensor | None:
    """SDPA output, or None where its backend for 512-d heads runs out of memory (it expands the KV head)."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def make_cache(batch: int, ctx: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random FP8 pool [blocks, 1, 2, 2, T, 256], block offsets [batch, 2, nb] and memory blocks [batch, nb]."""
    nb = -(-ctx // TPB)
    blocks = batch * nb
    pool = (torch.randn(blocks, 1, 2, 2, TPB, HS, device="cuda") * 1.5).to(torch.float8_e4m3fn)
    mem = torch.randperm(blocks, generator=gen).view(batch, nb).cuda()
    offsets = torch.stack([mem * 2, mem * 2 + 1], dim=1).to(torch.int32).contiguous()  # 1 layer in the pool
    return pool, offsets, mem


def dense_copy(pool: torch.Tensor, mem: torch.Tensor, ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BF16 [batch, 1, ctx, 512] K and V: the planes of each block put side by side (dims 0-255 | 256-511)."""
    batch, nb = mem.shape
    blk = pool[mem.flatten(), 0]  # [batch*nb, 2 (K|V), 2 planes, T, 256]
    kv = blk.permute(1, 0, 3, 2, 4).reshape(2, batch, nb * TPB, D)[:, :, :ctx]
    k, v = kv[0].to(torch.bfloat16), kv[1].to(torch.bfloat16)
    return k.unsqueeze(1).contiguous(), v.unsqueeze(1).contiguous()


DECODE_ENV = "TRT_GEMMA4_ATTN_DECODE"


def bench_decode(ops: object, batch: int, ctx: int, bw: float, gen: torch.Generator, variants: list[str]) -> list[dict]:
    """One row per decode kernel variant, all on the same cache and queries."""
    pool, offsets, mem = make_cache(batch, ctx, gen)
    q = torch.randn(batch, HQ, D, device="cuda").to(torch.bfloat16)
    out = torch.empty_like(q)
    cu = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    kv = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")

    def run() -> None:
        ops.gemma4_paged_attention(out, q, pool, offsets, 0, 0, cu, kv, None, None, 1, 0, 1.0, 1.0, 1.0, 1, ctx,
                                   batch * ctx)  # fmt: skip

    k, v = dense_copy(pool, mem, ctx)
    qd = q.unsqueeze(2)  # [batch, 16, 1, 512]

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(qd, k, v, scale=1.0, enable_gqa=True)

    ref = sdpa_or_none(sdpa)
    sdpa_us = None if ref is None else time_graph(sdpa)
    bytes_moved = batch * ctx * 2 * D + 2 * q.numel() * 2 + offsets.numel() * 4
    floor_us = bytes_moved / bw * 1e6
    rows = []
    saved = os.environ.get(DECODE_ENV)
    try:
        for variant in variants:
            os.environ[DECODE_ENV] = variant
            out.fill_(float("nan"))
            us = time_graph(run)  # captures (and so selects the kernel) under this variant
            err = None if ref is None else float((out.float() - ref.squeeze(2).float()).norm() / ref.float().norm())
            rows.append({
                "variant": variant,
                "batch": batch,
                "context": ctx,
                "kernel_us": round(us, 2),
                "sdpa_bf16_us": None if sdpa_us is None else round(sdpa_us, 2),
                "floor_us": round(floor_us, 2),
                "fraction_of_floor": round(floor_us / us, 3),
                "achieved_GBps": round(bytes_moved / (us * 1e-6) / 1e9, 1),
                "speedup_vs_sdpa": None if sdpa_us is None else round(sdpa_us / us, 2),
                "rel_err_vs_sdpa": None if err is None else float(f"{err:.2e}"),
                "all_finite": bool(torch.isfinite(out).all()),
            })  # fmt: skip
    finally:
        if saved is None:
            os.environ.pop(DECODE_ENV, None)
        else:
            os.environ[DECODE_ENV] = saved
    return rows


def bench_prefill(ops: object, length: int, gen: torch.Generator) -> dict:
    pool, offsets, mem = make_cache(1, length, gen)
    q = torch.randn(length, HQ, D, device="cuda").to(torch.bfloat16)
    out = torch.empty_like(q)
    cu = torch.tensor([0, length], dtype=torch.int32, device="cuda")
    kv = torch.tensor([length], dtype=torch.int32, device="cuda")

    def run() -> None:
        ops.gemma4_paged_attention(out, q, pool, offsets, 0, 0, cu, kv, None, None, 1, 0, 1.0, 1.0, 1.0, length,
                                   length, length)  # fmt: skip

    us = time_graph(run, calls=3, replays=5)
    k, v = dense_copy(pool, mem, length)
    qd = q.transpose(0, 1).unsqueeze(0)  # [1, 16, L, 512]

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(qd, k, v, scale=1.0, is_causal=True, enable_gqa=True)

    ref = sdpa_or_none(sdpa)
    err = None if ref is None else float((out.float() - ref[0].transpose(0, 1).float()).norm() / ref.float().norm())
    sdpa_us = None if ref is None else time_graph(sdpa, 3, 5)
    flops = 4.0 * HQ * D * length * (length + 1) / 2  # QK^T and PV over the causal triangle
    return {
        "q_len": length,
        "kv_len": length,
        "kernel_us": round(us, 1),
        "sdpa_bf16_us": None if sdpa_us is None else round(sdpa_us, 1),
        "kernel_TFLOPs": round(flops / (us * 1e-6) / 1e12, 1),
        "sdpa_TFLOPs": None if sdpa_us is None else round(flops / (sdpa_us * 1e-6) / 1e12, 1),
        "rel_err_vs_sdpa": None if err is None else float(f"{err:.2e}"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commit", required=True, help="commit of the code being measured")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--results-dir", default="bench/results")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--contexts", default="1024,8192,32768,131072")
    ap.add_argument("--prefill", default="4096,16384")
    ap.add_argument("--variants", default="v4,v3", help="decode kernels to time (TRT_GEMMA4_ATTN_DECODE values)")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]

    ops = attn._cuda_ops()
    gen = torch.Generator().manual_seed(0)
    card = torch.cuda.get_device_name()
    warm_up_clocks()
    bws = copy_bandwidth()
    bw = max(bws.values())
    print(f"{card}: device copy GB/s (read + write): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in bws.items()))
    decode = []
    for batch in (int(b) for b in args.batches.split(",")):
        for ctx in (int(c) for c in args.contexts.split(",")):
            for r in bench_decode(ops, batch, ctx, bw, gen, variants):
                decode.append(r)
                print(json.dumps(r), flush=True)
            torch.cuda.empty_cache()
    prefill = []
    for length in (int(n) for n in args.prefill.split(",") if n):
        r = bench_prefill(ops, length, gen)
        prefill.append(r)
        print(json.dumps(r), flush=True)
        torch.cuda.empty_cache()

    date = datetime.date.today().isoformat()
    result = {
        "card": card,
        "date": date,
        "commit": args.commit,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "copy_bandwidth_GBps": {k: round(v / 1e9, 1) for k, v in bws.items()},
        "floor_bandwidth_GBps": round(bw / 1e9, 1),
        "shape": {
            "q_heads": HQ,
            "kv_heads": 1,
            "head_dim": D,
            "planes": D // HS,
            "tokens_per_block": TPB,
            "kv_dtype": "fp8_e4m3",
        },  # fmt: skip
        "decode_variants": variants,
        "decode": decode,
        "prefill": prefill,
    }
    text = json.dumps(result, indent=1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "attention_bench.json").write_text(text)
    slug = card.replace(" ", "_").replace("/", "_")
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.results_dir) / f"attention_{slug}_{date}.json").write_text(text)

    print(f"\n{'variant':>7} {'batch':>5} {'ctx':>7} {'kernel us':>10} {'floor us':>9} {'of floor':>8} "
          f"{'sdpa us':>9} {'x sdpa':>7} {'rel err':>8}")  # fmt: skip
    for r in decode:
        print(f"{r['variant']:>7} {r['batch']:>5} {r['context']:>7} {r['kernel_us']:>10.1f} {r['floor_us']:>9.1f} "
              f"{r['fraction_of_floor']:>8.0%} {r['sdpa_bf16_us']!s:>9} {r['speedup_vs_sdpa']!s:>7} "
              f"{r['rel_err_vs_sdpa']!s:>8}")  # fmt: skip
    if len(variants) > 1:
        base = {(r["batch"], r["context"]): r["kernel_us"] for r in decode if r["variant"] == variants[-1]}
        print(f"\nkernel time relative to {variants[-1]}:")
        for r in decode:
            if r["variant"] != variants[-1]:
                ratio = r["kernel_us"] / base[(r["batch"], r["context"])]
                print(f"  {r['variant']} batch {r['batch']:>2} ctx {r['context']:>6}: {ratio:.3f}")
    for r in prefill:
        print(f"prefill {r['q_len']}: {r['kernel_us']:.0f} us ({r['kernel_TFLOPs']} TFLOP/s), "
              f"sdpa {r['sdpa_bf16_us']} us ({r['sdpa_TFLOPs']} TFLOP/s)")  # fmt: skip


if __name__ == "__main__":
    main()
