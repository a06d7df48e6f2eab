#!/usr/bin/env python3
"""Benchmark the block-FP8 weight-only GEMM against cuBLAS BF16 and the other references, on one GPU.

Columns per (shape, M):
  ours        trt_gemma4.kernels.block_fp8_gemm, the dispatched path (the CUDA op; the Triton kernel only with
              TRT_GEMMA4_TRITON_GEMM=1)
  cuda        the CUDA op trt_gemma4::block_fp8_gemm alone (its own dispatch: on sm_90 streaming for M <= 16, the
              wgmma kernels above; elsewhere split-dequantize + cuBLAS from M = 512); timed separately only where
              `ours` is the Triton kernel, else the same number
  triton      the Triton kernel alone with its default configuration (not dispatched; --no-triton skips it);
              --triton-sweep also times every configuration of triton_gemm.CONFIGS and reports the fastest
  bf16        cuBLAS BF16: F.linear on the dequantized BF16 weight (same function)
  speedup     bf16 / ours
  GB/s        FP8 weight bytes / ours, and that as a fraction of the device copy bandwidth measured in this run
  dq+bf16     our dequantize kernel to a BF16 temporary + cuBLAS BF16 (the two-kernel fallback)
  kernel      our own CUDA kernels alone (differs from `cuda` where it picks dequantize + cuBLAS)
  w8a8        FP8 W8A8 block-wise (1x128 activations, 128x128 weights) tensor-core GEMM through torch's scaled_mm,
              activations pre-quantized (activation-quant time NOT included); its error vs fp64 is printed too
Timing: every column is the median over replays of a CUDA graph that calls the op many times, rotating over
enough weight copies that they do not fit in L2 (>= 4 copies, >= 2x L2 bytes); time per call = replay / calls.
The whole Gemma-4-12B linear stack per token (40 sliding + 8 global layers, distinct weights for every layer) is
timed as one graph at M = 1 and M = 32 (--stack-ms) and compared with the FP8 floor = weight bytes / copy bandwidth.

--tune additionally times hand-set kernel configurations per (shape, M) and prints the fastest (used to set the
dispatch table in plugins/kernels/block_fp8_gemm.cu).

Writes a JSON (card, date, commit from $GIT_COMMIT or --commit or git, versions, every number) to --out and, when
$OUT is set, to $OUT as well.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trt_gemma4 import kernels  # noqa: E402
from trt_gemma4.kernels import triton_gemm  # noqa: E402
from trt_gemma4.kernels.reference import dequantize_block_fp8  # noqa: E402

SHAPES = {
    "qkv_sliding": (8192, 3840),
    "qkv_global": (8704, 3840),
    "o_sliding": (3840, 4096),
    "o_global": (3840, 8192),
    "gate_up": (30720, 3840),
    "down": (3840, 15360),
    "drafter_4096x1024": (4096, 1024),
    "drafter_16384x1024": (16384, 1024),
    "drafter_1024x8192": (1024, 8192),
}
MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
STACK = {
    "sliding": (40, ["qkv_sliding", "o_sliding", "gate_up", "down"]),
    "global": (8, ["qkv_global", "o_global", "gate_up", "down"]),
}


def git_commit(arg: str | None) -> str:
    if arg:
        return arg
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def quantize_random(n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random weights quantized the ModelOpt way: per 128x128 block, s = amax / 448, q = fp8(w / s)."""
    w = torch.randn(n, k, device="cuda", generator=gen) * 0.02
    nb, kb = -(-n // 128), -(-k // 128)
    pad = torch.zeros(nb * 128, kb * 128, device="cuda")
    pad[:n, :k] = w
    blocks = pad.view(nb, 128, kb, 128)
    s = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-12) / 448.0
    q = (blocks / s[:, None, :, None]).clamp(-448, 448).view(nb * 128, kb * 128)[:n, :k]
    return q.contiguous().to(torch.float8_e4m3fn), s.contiguous()


def time_graph(calls: list[Callable[[], object]], min_ms: float = 3.0, replays: int = 7) -> float:
    """Median microseconds per call of a CUDA graph that runs `calls` round-robin, long enough to time."""
    for c in calls:  # warm up: builds, cuBLAS heuristics, allocator pools
        c()
    torch.cuda.synchronize()

    def capture(n: int) -> torch.cuda.CUDAGraph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(n):
                calls[i % len(calls)]()
        return g

    def replay_ms(g: torch.cuda.CUDAGraph) -> float:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        return a.elapsed_time(b)

    g = capture(len(calls))
    g.replay()
    per_call = replay_ms(g) / len(calls)
    n = len(calls) * max(1, math.ceil(min_ms / max(per_call * len(calls), 1e-3)))
    n = min(n, 4000)
    del g
    g = capture(n)
    g.replay()
    times = [replay_ms(g) for _ in range(replays)]
    del g
    return statistics.median(times) / n * 1e3


def copy_bandwidth() -> tuple[float, dict[str, float]]:
    """Device copy bandwidth, bytes read + written per second (GB/s): the best of three ways of copying 2 GiB."""
    src = torch.empty(2**31, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    nbytes = 2 * src.numel()
    ways = {}
    ways["graph_copy"] = nbytes / (time_graph([lambda d=dst, s=src: d.copy_(s)], min_ms=20.0) * 1e-6) / 1e9
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    dst.copy_(src)
    a.record()
    for _ in range(10):
        dst.copy_(src)
    b.record()
    b.synchronize()
    ways["eager_memcpy"] = nbytes * 10 / (a.elapsed_time(b) * 1e-3) / 1e9
    sf, df = src.view(torch.float32), dst.view(torch.float32)
    ways["graph_elementwise"] = (
        nbytes / (time_graph([lambda d=df, s=sf: torch.neg(s, out=d)], min_ms=20.0) * 1e-6) / 1e9
    )
    del src, dst, sf, df
    torch.cuda.empty_cache()
    return max(ways.values()), ways


def scaling_enum(*names: str):
    enum = getattr(F, "ScalingType", None)
    for n in names:
        if enum is not None and hasattr(enum, n):
            return getattr(enum, n)
    return None


def make_w8a8(q: torch.Tensor, s: torch.Tensor, x: torch.Tensor) -> tuple[Callable[[], torch.Tensor] | None, str]:
    """W8A8 block-wise FP8 GEMM on pre-quantized activations; M padded to 4, weight scale padded to 4 k-blocks."""
    m, k = x.shape
    mp = max(4, -(-m // 4) * 4)
    kb = -(-k // 128)
    xp = torch.zeros(mp, k, device="cuda", dtype=torch.float32)
    xp[:m] = x.float()
    xb = F.pad(xp, (0, kb * 128 - k)).view(mp, kb, 128)
    xs = xb.abs().amax(-1).clamp_min(1e-12) / 448.0
    xq = (xb / xs[..., None]).clamp(-448, 448).view(mp, kb * 128)[:, :k].contiguous().to(torch.float8_e4m3fn)
    xs_cm = xs.t().contiguous().t()  # (M, K/128) with strides (1, M)
    kb4 = -(-kb // 4) * 4
    sp = torch.zeros(s.shape[0], kb4, device="cuda")
    sp[:, :kb] = s
    sb = sp[:, :kb]
    a_rec = scaling_enum("BlockWise1x128", "Blockwise1x128")
    b_rec = scaling_enum("BlockWise128x128", "Blockwise128x128")
    xs_pad = torch.zeros(kb4, mp, device="cuda")
    xs_pad[:kb] = xs.t()
    # Layouts to try, in order: the padded (round_up(K/128, 4), N/128) weight scale that F.scaled_mm asks for;
    # the same with the activation scale padded too; the unpadded view (silently wrong at K = 3840 on some
    # versions, hence the error check below before any timing).
    attempts = []
    if a_rec is not None and b_rec is not None and hasattr(F, "scaled_mm"):
        for sa, sbt, tag in ((xs_cm, sp.t(), "pad_b"), (xs_pad.t(), sp.t(), "pad_ab"), (xs_cm, sb.t(), "unpadded")):
            attempts.append(
                (
                    f"F.scaled_mm[{tag}]",
                    lambda sa=sa, sbt=sbt: F.scaled_mm(xq, q.t(), sa, a_rec, sbt, b_rec, output_dtype=torch.bfloat16),
                )
            )
    attempts.append(
        (
            "torch._scaled_mm[pad_b]",
            lambda: torch._scaled_mm(xq, q.t(), scale_a=xs_cm, scale_b=sb.t(), out_dtype=torch.bfloat16),
        )
    )
    errors = []
    for how, run in attempts:
        try:
            run()
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - a reference that cannot run is reported, not fatal
            errors.append(f"{how}: {type(e).__name__}: {str(e)[:80]}")
            continue
        return (lambda run=run: run()[:m]), how
    return None, " | ".join(errors)


def run_config(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, c: tuple[int, ...]) -> torch.Tensor:
    """Our GEMM with configuration c = (kernel, tile, row_groups, warps, splits, depth[, cluster[, prefetch]])."""
    cluster = len(c) > 6 and bool(c[6])
    prefetch = len(c) > 7 and bool(c[7])
    return torch.ops.trt_gemma4.block_fp8_gemm_config(x, q, s, *c[:5], depth=c[5], cluster=cluster, prefetch=prefetch)


def default_config(m: int, n: int, k: int) -> tuple[tuple[int, ...], bool]:
    """The dispatch's (kernel, tile, row_groups, warps, splits, depth, cluster, prefetch) and whether it prefers
    dequant."""
    c = torch.ops.trt_gemma4.block_fp8_gemm_default_config(m, n, k)
    return (*c[:6], c[7], c[8]), bool(c[6])


def fmt(v: float | None) -> str:
    return f"{v:9.1f}" if v is not None else f"{'-':>9}"


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


def bench_shapes(args, bw: float, l2: int, gen: torch.Generator, results: dict) -> None:
    ops = torch.ops.trt_gemma4
    for name, (n, k) in SHAPES.items():
        if args.shapes and name not in args.shapes:
            continue
        q0, s0 = quantize_random(n, k, gen)
        copies = max(4, math.ceil(2 * l2 / (n * k)))
        qs = [q0] + [quantize_random(n, k, gen)[0] for _ in range(copies - 1)]
        ss = [s0] * copies
        wd = [ops.block_fp8_dequantize(q, s) for q, s in zip(qs, ss)]
        wbytes = n * k + 4 * s0.numel()
        floor_us = wbytes / (bw * 1e9) * 1e6
        print(
            f"\n== {name}  N={n} K={k}  FP8 {wbytes / 1e6:.1f} MB  floor {floor_us:.1f} us @ {bw:.0f} GB/s  "
            f"({copies} rotated copies)"
        )
        print(
            f"{'M':>5} {'ours us':>9} {'bf16 us':>9} {'speedup':>7} {'GB/s':>6} {'%copy':>6} {'cuda us':>9} "
            f"{'triton':>9} {'tr best':>9} {'dq+bf16':>9} {'w8a8 us':>9} {'kernel':>9}  path / triton best config"
        )
        rows = []
        # Warm-up on this shape's fresh weights: the first M timed after the copies are made read 5-13% slow
        # (H200, 2026-11-27: M = 1 of 5 of 9 shapes; gemm_h200_2026-11-27.json, small_m_rerun).
        x = torch.randn(args.ms[0], k, device="cuda", generator=gen).to(torch.bfloat16)
        time_graph([lambda q=q, s=s, x=x: kernels.block_fp8_gemm(x, q, s) for q, s in zip(qs, ss)], min_ms=1.5)
        time_graph([lambda w=w, x=x: F.linear(x, w) for w in wd], min_ms=1.5)
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
            ref = x.double() @ dequantize_block_fp8(q0, s0, torch.float64).t()
            err = rel_err(kernels.block_fp8_gemm(x, q0, s0), ref)
            t_ours = time_graph([lambda q=q, s=s, x=x: kernels.block_fp8_gemm(x, q, s) for q, s in zip(qs, ss)])
            use_triton = triton_gemm.available() and triton_gemm.prefers_triton(m, n, k)
            t_cuda = t_ours  # the dispatched path is the CUDA op unless the Triton kernel is opted in
            if use_triton:
                t_cuda = time_graph([lambda q=q, s=s, x=x: ops.block_fp8_gemm(x, q, s) for q, s in zip(qs, ss)])
            t_bf16 = time_graph([lambda w=w, x=x: F.linear(x, w) for w in wd])
            t_triton, triton_err, sweep = None, None, {}
            if triton_gemm.available() and not args.no_triton:
                triton_err = rel_err(triton_gemm.block_fp8_gemm_triton(x, q0, s0), ref)
                t_triton = time_graph(
                    [lambda q=q, s=s, x=x: triton_gemm.block_fp8_gemm_triton(x, q, s) for q, s in zip(qs, ss)]
                )
                if args.triton_sweep:
                    for c in triton_gemm.CONFIGS:
                        if c.split_k > 1 and m > 512:  # the tile grid alone fills the SMs there
                            continue
                        sweep[c.name] = time_graph(
                            [
                                lambda q=q, s=s, x=x, c=c: triton_gemm.block_fp8_gemm_triton(x, q, s, config=c)
                                for q, s in zip(qs, ss)
                            ],
                            min_ms=1.5,
                            replays=3,
                        )
            best_name = min(sweep, key=sweep.get) if sweep else None
            t_dq, t_w8, w8_err, w8_how = None, None, None, "skipped (--quick)"
            if not args.quick:
                t_dq = time_graph(
                    [lambda q=q, s=s, x=x: F.linear(x, ops.block_fp8_dequantize(q, s)) for q, s in zip(qs, ss)]
                )
                w8 = [make_w8a8(q, s, x) for q, s in zip(qs, ss)]
                w8_how = w8[0][1]
                if w8[0][0] is not None:
                    w8_err = rel_err(w8[0][0](), ref)
                    if w8_err < 0.1:  # W8A8 with 1x128 activation quant lands near 3e-2; far above: a wrong call
                        t_w8 = time_graph([f for f, _ in w8])
                    else:
                        w8_how += " (wrong result, not timed)"
            cfg, prefers_dequant = default_config(m, n, k)
            t_kernel: float | None = t_cuda
            if prefers_dequant and args.quick:
                t_kernel = None
            elif prefers_dequant:  # the CUDA op chose dequant + cuBLAS: also time our own kernel
                t_kernel = time_graph([lambda q=q, s=s, x=x, c=cfg: run_config(x, q, s, c) for q, s in zip(qs, ss)])
            row = {
                "M": m,
                "ours_us": t_ours,
                "ours_path": "triton" if use_triton else "cuda",
                "cuda_us": t_cuda,
                "triton_us": t_triton,
                "triton_config": triton_gemm.default_config(m, n, k).name,
                "triton_rel_err": triton_err,
                "triton_sweep_us": sweep,
                "triton_best": best_name,
                "bf16_us": t_bf16,
                "speedup": t_bf16 / t_ours,
                "weight_GBps": wbytes / (t_ours * 1e-6) / 1e9,
                "frac_copy_bw": wbytes / (t_ours * 1e-6) / 1e9 / bw,
                "dequant_bf16_us": t_dq,
                "kernel_only_us": t_kernel,
                "w8a8_us": t_w8,
                "w8a8_rel_err": w8_err,
                "w8a8_method": w8_how,
                "ours_rel_err": err,
                "config": [*cfg[:6], int(prefers_dequant), *cfg[6:]],  # the op's default_config order
                "floor_us": floor_us,
            }
            rows.append(row)
            print(
                f"{m:5d} {t_ours:9.1f} {t_bf16:9.1f} {t_bf16 / t_ours:7.2f} {row['weight_GBps']:6.0f} "
                f"{row['frac_copy_bw']:6.2f} {t_cuda:9.1f} {fmt(t_triton)} {fmt(sweep.get(best_name))} {fmt(t_dq)} "
                f"{fmt(t_w8)} {fmt(t_kernel)}  {row['ours_path']} / {best_name}  err {err:.1e}"
                + (f" triton_err {triton_err:.1e}" if triton_err is not None else "")
                + (f" w8a8err {w8_err:.1e}" if w8_err is not None else "")
            )
            del x, ref
        results["shapes"][name] = {"N": n, "K": k, "fp8_bytes": wbytes, "copies": copies, "rows": rows}
        save(args, results)  # after every shape, so a run cut short still leaves its numbers
        del qs, ss, wd
        torch.cuda.empty_cache()


def bench_stack(args, bw: float, gen: torch.Generator, results: dict) -> None:
    """The whole 12B linear stack, distinct weights per layer, one graph per method and M."""
    ops = torch.ops.trt_gemma4
    layers = []
    for kind, (count, names) in STACK.items():
        for _ in range(count):
            layers.append([(kind, SHAPES[nm]) for nm in names])
    total_bytes = sum(n * k + 4 * (-(-n // 128)) * (-(-k // 128)) for layer in layers for _, (n, k) in layer)
    floor_us = total_bytes / (bw * 1e9) * 1e6
    # One FP8 copy per layer; BF16 weights are built per layer from it (21.5 GB in all).
    fp8 = [[quantize_random(n, k, gen) for _, (n, k) in layer] for layer in layers]
    out = {"fp8_bytes": total_bytes, "floor_us": floor_us}
    print(f"\n== whole 12B linear stack per token: 48 layers, FP8 {total_bytes / 1e9:.2f} GB, floor {floor_us:.0f} us")
    for m in args.stack_ms:
        xs = {k: torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16) for k in (3840, 4096, 8192, 15360)}
        calls = [
            lambda q=q, s=s, xs=xs: kernels.block_fp8_gemm(xs[q.shape[1]], q, s) for layer in fp8 for q, s in layer
        ]
        t_ours = time_graph(calls, min_ms=1.0, replays=5) * len(calls)
        out[f"M{m}_ours_us"] = t_ours
        print(f"M={m:3d} ours {t_ours:8.0f} us = {t_ours / floor_us:.3f}x floor", end="")
        if not args.no_bf16_stack:
            wd = [[ops.block_fp8_dequantize(q, s) for q, s in layer] for layer in fp8]
            calls = [lambda w=w, xs=xs: F.linear(xs[w.shape[1]], w) for layer in wd for w in layer]
            t_bf = time_graph(calls, min_ms=1.0, replays=5) * len(calls)
            out[f"M{m}_bf16_us"] = t_bf
            print(f"   cuBLAS BF16 {t_bf:8.0f} us   speedup {t_bf / t_ours:.2f}x", end="")
            del wd, calls
            torch.cuda.empty_cache()
        print()
    results["stack"] = out
    del fp8
    torch.cuda.empty_cache()


def tune(args, gen: torch.Generator, results: dict, l2: int) -> None:
    """Time hand-set configurations (kernel, tile, row_groups, warps, splits, depth, cluster, prefetch) per
    (shape, M)."""
    out = {}
    for name, (n, k) in SHAPES.items():
        if args.shapes and name not in args.shapes:
            continue
        copies = max(4, math.ceil(2 * l2 / (n * k)))
        qs, ss = zip(*[quantize_random(n, k, gen) for _ in range(copies)])
        wds = [dequantize_block_fp8(q, s, torch.bfloat16) for q, s in zip(qs, ss)]
        for m in args.tune_ms:
            x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
            t_bf16 = time_graph([lambda wd=wd, x=x: F.linear(x, wd) for wd in wds], min_ms=1.5, replays=3)
            cands = []
            if m <= 64:
                nt = 1 if m <= 8 else (2 if m <= 16 else 4)
                depths = {1: (2, 3, 4), 2: (2, 3), 4: (2,)}[nt]
                warps = args.tune_warps
                for d in depths:
                    for wp in warps:
                        for sp in (1, 2, 4):
                            cands.append((1, nt, 1, wp, sp, d))
                if nt < 4:
                    cands += [(1, nt, 2, wp, 1, d) for wp in warps for d in ((2, 3) if nt == 1 else (2,))]
                if 16 < m <= 32:
                    # 16-token tiles, two row groups: the token tiles' CTAs share weight rows (the second reads
                    # them from L2).
                    cands += [(1, 2, 2, wp, 1, 2) for wp in warps] + [(5, 2, 2, wp, 1, 3) for wp in warps]
                # The same kernel with its weight ring in shared memory (kernel 5).
                for d in {1: (3, 4, 5), 2: (3, 4), 4: (2, 3)}[nt]:
                    for wp in warps:
                        for sp in (1, 2, 4):
                            cands.append((5, nt, 1, wp, sp, d))
                if nt < 4:
                    cands += [(5, nt, 2, wp, sp, d) for wp in warps for sp in (1, 2) for d in (2, 3)]
            if m <= 16 and torch.cuda.get_device_capability()[0] >= 9:
                # The bulk-copy streaming kernel: consumer warps, split-K, ring stages.
                for wp in (2, 4, 8):
                    for sp in (1, 2, 4):
                        for st in (2, 3, 4):
                            cands.append((4, 1 if m <= 8 else 2, 1, wp, sp, st))
            if m >= 16:
                tiles = (2, 4, 5) if m <= 64 else ((1, 2, 4) if m <= 128 else (1, 3))
                for tile in tiles:
                    for sp in (1, 2, 4, 8):
                        cands.append((2, tile, 1, 1, sp, 2))
            if args.tune_wgmma and torch.cuda.get_device_capability() == (9, 0):
                # The sm_90a TMA + wgmma kernel: token tile 16..128 (no tile above 2x M), split-K 1..8.
                # Row groups 2: 64-row tiles whose two consumer warpgroups split the k-blocks.
                for tile in (16, 32, 64, 128):
                    if tile > max(16, 2 * m):
                        continue
                    for sp in args.tune_splits:
                        cands += [(3, tile, rg, 1, sp, 2) for rg in (1, 2)]
                if m >= 128:
                    cands.append((3, 256, 1, 1, 1, 2))  # persistent, no split-K
                    cands.append((3, 256, 1, 1, 0, 2))  # persistent, stream-K
                if m >= 32:
                    cands.append((3, 128, 1, 1, 0, 2))  # persistent 128-token tiles, stream-K
            only = {3} if args.tune_only_wgmma else set(args.tune_kernels or ())
            default = default_config(m, n, k)[0]
            if only:
                cands = [c for c in cands if c[0] in only]
            # Every candidate as (..., cluster, prefetch): wgmma split-K of 2-8 also summed across a thread-block
            # cluster; the register-streaming 16-token tiles (whole rows and k-blocks) also with the L2 prefetch.
            cands = [(*c, 0, 0) for c in cands]
            if torch.cuda.get_device_capability()[0] == 9:
                cands += [(*c[:6], 1, 0) for c in cands if 2 <= c[4] <= 8 and c[0] == 3 and c[1] <= 128]
            cands += [(*c[:7], 1) for c in cands if c[0] == 1 and c[1] == 2 and k % 128 == 0 and n % (16 * c[2]) == 0]
            cands = list(dict.fromkeys([*cands, default]))  # the default may already be a candidate: time it once
            timings = []
            for c in cands:
                t = time_graph(
                    [lambda q=q, s=s, c=c, x=x: run_config(x, q, s, c) for q, s in zip(qs, ss)],
                    min_ms=1.5,
                    replays=3,
                )
                timings.append((t, c))
            timings.sort()
            t_def = next((t for t, c in timings if c == default), None)
            out[f"{name}/M{m}"] = [(t, list(c)) for t, c in timings] + [(t_bf16, ["cublas_bf16"])]
            top = ", ".join(f"{c}:{t:.1f}" for t, c in timings[:4])
            print(
                f"tune {name:20s} M={m:5d} cuBLAS {t_bf16:.1f} best {top} (x{t_bf16 / timings[0][0]:.2f})"
                f"   default {default}:{t_def}"
            )
        del qs, ss, wds
        torch.cuda.empty_cache()
    results["tune"] = out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_gemm.json", help="JSON output path")
    p.add_argument("--commit", default=None, help="git commit of the code measured (else $GIT_COMMIT, else git)")
    p.add_argument("--ms", type=int, nargs="*", default=MS)
    p.add_argument("--shapes", nargs="*", default=None, help="subset of shape names")
    p.add_argument("--tune", action="store_true", help="also sweep kernel configurations")
    p.add_argument("--tune-ms", type=int, nargs="*", default=[1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048])
    p.add_argument("--tune-wgmma", action="store_true", help="--tune includes the sm_90a wgmma kernel")
    p.add_argument("--tune-only-wgmma", action="store_true", help="--tune times the wgmma kernel and the default")
    p.add_argument("--tune-kernels", type=int, nargs="*", default=None, help="--tune times only these kernels (1-5)")
    p.add_argument(
        "--tune-splits",
        type=int,
        nargs="*",
        default=[1, 2, 4, 8],
        help="--tune-wgmma: split-K counts tried for the token-tile kernels (1..16)",
    )
    p.add_argument(
        "--tune-warps",
        type=int,
        nargs="*",
        default=[1, 2, 4, 8],
        help="--tune: warps per CTA of the streaming kernels (1-8)",
    )
    p.add_argument("--no-table", action="store_true", help="skip the per-shape table")
    p.add_argument("--no-stack", action="store_true", help="skip the whole-stack timing")
    p.add_argument("--no-bf16-stack", action="store_true", help="skip cuBLAS in the whole-stack timing")
    p.add_argument("--stack-ms", type=int, nargs="*", default=[1, 32], help="token counts for the whole stack")
    p.add_argument("--triton-sweep", action="store_true", help="time every Triton configuration per (shape, M)")
    p.add_argument("--quick", action="store_true", help="skip the dq+bf16, w8a8 and CUDA-kernel-alone columns")
    p.add_argument("--no-triton", action="store_true", help="skip the Triton kernel's column (not dispatched)")
    args = p.parse_args()

    if not kernels.available():
        raise SystemExit(f"CUDA kernels unavailable: {kernels.unavailable_reason()}")
    kernels.load()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    gen = torch.Generator(device="cuda").manual_seed(0)
    bw, bw_ways = copy_bandwidth()
    results = {
        "card": props.name,
        "sms": props.multi_processor_count,
        "l2_bytes": l2,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(args.commit),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "copy_bandwidth_GBps": bw,
        "copy_bandwidth_ways_GBps": bw_ways,
        "triton": getattr(triton_gemm.triton, "__version__", None),
        "triton_unavailable": triton_gemm.unavailable_reason(),
        "timing": "CUDA-graph replay, rotated weight copies, median per call",
        "shapes": {},
    }
    print(
        f"{props.name}  SMs {props.multi_processor_count}  L2 {l2 / 2**20:.0f} MiB  torch {torch.__version__}  "
        f"copy bandwidth {bw:.0f} GB/s (read+write; best of {', '.join(f'{k} {v:.0f}' for k, v in bw_ways.items())})"
    )
    print("timing: CUDA-graph replay over rotated weight copies (all columns); w8a8 excludes activation quant")
    if args.tune:
        tune(args, gen, results, l2)
    if not args.no_table:
        bench_shapes(args, bw, l2, gen, results)
    if not args.no_stack:
        bench_stack(args, bw, gen, results)
    save(args, results)


def save(args, results: dict) -> None:
    """Write the JSON to --out and, when $OUT is set, to $OUT as well."""
    text = json.dumps(results, indent=1)
    Path(args.out).write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], Path(args.out).name).write_text(text)


if __name__ == "__main__":
    main()
