#!/usr/bin/env python3
"""Ahead-of-time compile the Triton block-FP8 GEMM (trt_gemma4/kernels/triton_gemm.py) for the TensorRT plugin.

For every configuration the dispatch can pick (or --configs NAME ...), this runs Triton's own AOT compiler,
``python -m triton.tools.compile``, on the SAME ``block_fp8_gemm_kernel`` object the torch path launches, and
writes into --out-dir:

  block_fp8_gemm_<cfg>.<hash>_<suffix>.c/.h   C launcher with the cubin embedded (``load_*``, ``unload_*``, and
                                              ``CUresult <fn>(CUstream, CUdeviceptr x, w, s, y, ws, int32 M, N, K,
                                              stride_xm, stride_wn, stride_ym, SCALE_KB)``)
  splitk_reduce_<k>.<hash>_<suffix>.c/.h      the split-K reduction (``ws, y, M, N, stride_ym``)
  *.cubin                                     the same cubins, extracted from the C sources (for cuobjdump / a
                                              plugin that prefers cuModuleLoadData on its own)
  block_fp8_gemm_triton_aot.h                 one header: includes the launchers, a table of the configurations
                                              (tile, swap, split-K, workspace rule) with their entry points
  manifest.json                               the same, for tools

Then it checks each cubin's architecture (sm_90a) and that its SASS holds HGMMA (wgmma), and with --check builds
the C sources into a shared library, calls every launcher through ctypes on random problems, and compares the
results bit-for-bit with the JIT-launched kernel and against an fp64 reference.

Needs triton (3.x) and a Hopper GPU (the target is the current GPU's; see run_compile).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trt_gemma4.kernels import triton_gemm  # noqa: E402

KERNEL_FILE = ROOT / "trt_gemma4" / "kernels" / "triton_gemm.py"
# Argument order of block_fp8_gemm_kernel; pointers and the row strides/N/K carry the divisibility-by-16 hint
# (N, K are multiples of 16 by the API contract; X, W, Y rows are then 16-byte aligned). M and SCALE_KB are not
# specialized, so one binary serves every token count.
GEMM_SIGNATURE = "*bf16:16, *fp8e4nv:16, *fp32:16, *bf16:16, *fp32:16, i32, i32:16, i32:16, i32:16, i32:16, i32:16, i32"
REDUCE_SIGNATURE = "*fp32:16, *bf16:16, i32, i32:16, i32:16"
GEMM_ARGS = ["x", "w", "s", "y", "ws", "M", "N", "K", "stride_xm", "stride_wn", "stride_ym", "SCALE_KB"]


def dispatch_configs() -> list[triton_gemm.TritonGemmConfig]:
    """Every configuration default_config returns on the 12B and drafter shapes for M = 64 .. 32768."""
    shapes = [(8192, 3840), (8704, 3840), (3840, 4096), (3840, 8192), (30720, 3840), (3840, 15360)]
    shapes += [(4096, 1024), (16384, 1024), (1024, 8192)]
    seen: dict[str, triton_gemm.TritonGemmConfig] = {}
    for n, k in shapes:
        for m in range(64, 32769, 16):
            c = triton_gemm.default_config(m, n, k)
            seen.setdefault(c.name, c)
    return list(seen.values())


def run_compile(name: str, kernel: str, signature: str, grid: str, warps: int, stages: int, args) -> dict:
    """One ``triton.tools.compile`` run; returns the entry point's name and its files."""
    out_base = args.out_dir / name
    cmd = [
        sys.executable,
        "-m",
        "triton.tools.compile",
        str(KERNEL_FILE),
        "--kernel-name",
        kernel,
        "--signature",
        signature,
        "--grid",
        grid,
        "--num-warps",
        str(warps),
        "--num-stages",
        str(stages),
        "--out-name",
        name,
        "--out-path",
        str(out_base),
    ]
    # No --target: in Triton 3.6 the CLI passes the arch through as a string ("90") and the NVIDIA backend then
    # fails comparing it with an int, so the target is the current GPU's (compute capability 9.0 -> sm_90a).
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"triton.tools.compile failed for {name}:\n{proc.stdout}\n{proc.stderr}")
    headers = sorted(args.out_dir.glob(f"{name}.*.h"))
    sources = sorted(args.out_dir.glob(f"{name}.*.c"))
    if len(headers) != 1 or len(sources) != 1:
        raise RuntimeError(f"{name}: expected one .h and one .c, found {headers} {sources}")
    text = sources[0].read_text()
    entry = re.search(r"^CUresult (\w+)\(CUstream stream", text, re.M)
    blob = re.search(r"unsigned char \w+\[(\d+)\] = \{ ([^}]*) \};", text)
    if entry is None or blob is None:
        raise RuntimeError(f"{name}: unexpected launcher layout in {sources[0].name}")
    cubin = bytes(int(b, 16) for b in blob.group(2).split(", "))
    if len(cubin) != int(blob.group(1)):
        raise RuntimeError(f"{name}: cubin size mismatch")
    cubin_path = args.out_dir / f"{name}.cubin"
    cubin_path.write_bytes(cubin)
    shared = re.search(r"int shared = (\d+);", text)
    return {
        "entry": entry.group(1),
        "header": headers[0].name,
        "source": sources[0].name,
        "cubin": cubin_path.name,
        "shared_bytes": int(shared.group(1)) if shared else None,
        "num_warps": warps,
        "grid": grid,
    }


def find_tool(name: str) -> str | None:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if bundled.is_file():
        return str(bundled)
    return shutil.which(name)


def inspect_cubin(path: Path) -> dict:
    """Architecture, registers/stack, and the matrix instructions of one cubin (cuobjdump)."""
    tool = find_tool("cuobjdump")
    if tool is None:
        return {"cuobjdump": "not found"}
    elf = subprocess.run([tool, "-lelf", str(path)], capture_output=True, text=True).stdout
    res = subprocess.run([tool, "-res-usage", str(path)], capture_output=True, text=True).stdout
    sass = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True).stdout
    arch = re.search(r"sm_\w+", elf + sass)
    regs = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    return {
        "arch": arch.group(0) if arch else None,
        "registers": int(regs.group(1)) if regs else None,
        "stack_bytes": int(stack.group(1)) if stack else None,
        "hgmma": len(re.findall(r"\bHGMMA\b", sass)),
        "hmma": len(re.findall(r"\bHMMA\b", sass)),
    }


def write_header(entries: list[dict], reduces: dict[int, dict], out_dir: Path) -> Path:
    lines = [
        "// Generated by scripts/aot_triton_gemm.py: Triton block-FP8 GEMM launchers (sm_90a) for the TRT plugin.",
        "// Y[M,N] bf16 = X[M,K] bf16 . dequant(W[N,K] e4m3, S[ceil(N/128), ceil(K/128)] fp32)^T; N, K multiples of",
        "// 16, X/W/Y rows 16-byte aligned, S contiguous. Every launcher: (stream, x, w, s, y, ws, M, N, K, stride_xm,",
        "// stride_wn, stride_ym, SCALE_KB = ceil(K/128)), strides in elements. With split_k > 1 the GEMM writes FP32",
        "// partials to ws [split_k, M, N] (4*split_k*M*N bytes) and the reduce launcher (ws, y, M, N, stride_ym)",
        "// writes Y; with split_k == 1 ws is unused (pass any valid pointer, e.g. s).",
        "#pragma once",
        "#include <cuda.h>",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {  // the launchers are C functions',
        "#endif",
    ]
    lines += [f'#include "{e["header"]}"' for e in entries]
    lines += [f'#include "{r["header"]}"' for r in reduces.values()]
    lines += [
        "",
        "typedef CUresult (*TritonBlockFp8GemmFn)(CUstream, CUdeviceptr, CUdeviceptr, CUdeviceptr, CUdeviceptr,",
        "                                         CUdeviceptr, int32_t, int32_t, int32_t, int32_t, int32_t, int32_t,",
        "                                         int32_t);",
        "typedef CUresult (*TritonSplitkReduceFn)(CUstream, CUdeviceptr, CUdeviceptr, int32_t, int32_t, int32_t);",
        "",
        "typedef struct {",
        "    const char* name;   // TritonGemmConfig.name in trt_gemma4/kernels/triton_gemm.py",
        "    int block_m;        // tokens per tile",
        "    int block_n;        // weight rows per tile",
        "    int swap_ab;",
        "    int split_k;",
        "    TritonBlockFp8GemmFn gemm;",
        "    TritonSplitkReduceFn reduce;  // NULL when split_k == 1",
        "    void (*load)(void);          // optional: load the module up front (else on first call)",
        "    void (*unload)(void);",
        "} TritonBlockFp8GemmKernel;",
        "",
        "static const TritonBlockFp8GemmKernel kTritonBlockFp8GemmKernels[] = {",
    ]
    for e in entries:
        red = reduces.get(e["split_k"])
        lines.append(
            f'    {{"{e["name"]}", {e["block_m"]}, {e["block_n"]}, {int(e["swap_ab"])}, {e["split_k"]}, '
            f"{e['entry']}, {red['entry'] if red else 'NULL'}, load_{e['entry']}, unload_{e['entry']}}},"
        )
    lines += ["};", f"static const int kTritonBlockFp8GemmKernelCount = {len(entries)};", ""]
    lines += ["#ifdef __cplusplus", '}  // extern "C"', "#endif", ""]
    path = out_dir / "block_fp8_gemm_triton_aot.h"
    path.write_text("\n".join(lines))
    return path


def check_library(entries: list[dict], reduces: dict[int, dict], out_dir: Path) -> list[dict]:
    """Build the C launchers into a shared library, run each through ctypes, compare with the JIT kernel."""
    import torch

    from trt_gemma4.kernels.reference import dequantize_block_fp8

    nvcc = shutil.which("nvcc")
    cuda_home = os.environ.get("CUDA_HOME") or (str(Path(nvcc).resolve().parents[1]) if nvcc else None)
    if cuda_home is None:
        raise RuntimeError("--check needs cuda.h: set CUDA_HOME or put nvcc on PATH")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler for --check")
    sources = [str(out_dir / e["source"]) for e in entries] + [str(out_dir / r["source"]) for r in reduces.values()]
    lib = out_dir / "libblock_fp8_gemm_triton_check.so"
    # -include stdlib.h: the generated launchers call exit() without including it.
    cmd = [cc, "-O2", "-shared", "-fPIC", "-include", "stdlib.h", f"-I{cuda_home}/include", *sources]
    cmd += ["-o", str(lib), "-lcuda"]
    stubs = Path(cuda_home) / "lib64" / "stubs"
    if stubs.is_dir():
        cmd.insert(-1, f"-L{stubs}")
    subprocess.run(cmd, check=True)
    so = ctypes.CDLL(str(lib))
    results = []
    gen = torch.Generator(device="cuda").manual_seed(1)
    for e in entries:
        cfg = next(c for c in triton_gemm.CONFIGS + tuple(dispatch_configs()) if c.name == e["name"])
        for m, n, k in ((200, 1024, 2064), (129, 3840, 4096), (1025, 384, 3840)):
            x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
            w = (torch.randn(n, k, device="cuda", generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
            s = torch.exp(torch.rand(-(-n // 128), -(-k // 128), device="cuda", generator=gen) * 8 - 12)
            y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
            ws = torch.empty((cfg.split_k, m, n), device="cuda") if cfg.split_k > 1 else s
            stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
            ptrs = [ctypes.c_uint64(t.data_ptr()) for t in (x, w, s, y, ws)]
            ints = [ctypes.c_int32(v) for v in (m, n, k, k, k, n, -(-k // 128))]
            rc = getattr(so, e["entry"])(stream, *ptrs, *ints)
            if rc != 0:
                raise RuntimeError(f"{e['entry']} returned CUresult {rc}")
            if cfg.split_k > 1:
                red = reduces[cfg.split_k]["entry"]
                rc = getattr(so, red)(stream, ptrs[4], ptrs[3], *[ctypes.c_int32(v) for v in (m, n, n)])
                if rc != 0:
                    raise RuntimeError(f"{red} returned CUresult {rc}")
            y_jit = triton_gemm.block_fp8_gemm_triton(x, w, s, config=cfg)
            torch.cuda.synchronize()
            ref = x.double() @ dequantize_block_fp8(w, s, torch.float64).t()
            rel = ((y.double() - ref).norm() / ref.norm()).item()
            same = bool(torch.equal(y.view(torch.int16), y_jit.view(torch.int16)))
            results.append({"config": e["name"], "M": m, "N": n, "K": k, "rel_err": rel, "bitwise_equal_jit": same})
            print(f"  {e['name']:24s} M={m:5d} N={n:5d} K={k:5d} rel_err {rel:.2e} same bits as JIT: {same}")
            if not same or rel > 2e-3 or torch.isnan(y).any():
                raise RuntimeError(f"AOT launcher {e['entry']} disagrees with the JIT kernel or the reference")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=ROOT / "build" / "triton_aot")
    p.add_argument("--configs", nargs="*", default=None, help="TritonGemmConfig names (default: the dispatch's)")
    p.add_argument("--all", action="store_true", help="every configuration in triton_gemm.CONFIGS (not maxnreg)")
    p.add_argument("--check", action="store_true", help="build a shared library and test it against the JIT path")
    args = p.parse_args()
    if triton_gemm.triton is None:
        raise SystemExit("triton is not installed")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {c.name: c for c in (*triton_gemm.CONFIGS, *dispatch_configs())}
    if args.all:
        configs = [c for c in triton_gemm.CONFIGS if not c.maxnreg]
    else:
        configs = [by_name[n] for n in args.configs] if args.configs else dispatch_configs()

    entries = []
    for c in configs:
        name = f"block_fp8_gemm_{c.name}"
        if c.maxnreg:
            raise SystemExit(f"{c.name}: triton.tools.compile cannot set maxnreg; this configuration is JIT-only")
        consts = f"{c.block_m}, {c.block_n}, {c.group_m}, {int(c.swap_ab)}, {int(c.bit_convert)}, {c.split_k}"
        consts += f", {int(c.rescale)}"
        grid = f"((M + {c.block_m - 1}) / {c.block_m}) * ((N + {c.block_n - 1}) / {c.block_n}), {c.split_k}, 1"
        info = run_compile(
            name, "block_fp8_gemm_kernel", f"{GEMM_SIGNATURE}, {consts}", grid, c.num_warps, c.num_stages, args
        )
        info.update(
            name=c.name, block_m=c.block_m, block_n=c.block_n, swap_ab=c.swap_ab, split_k=c.split_k, stages=c.num_stages
        )
        info.update(inspect_cubin(args.out_dir / info["cubin"]))
        entries.append(info)
        print(
            f"{c.name:24s} {info['entry']}  arch {info.get('arch')}  regs {info.get('registers')}  "
            f"stack {info.get('stack_bytes')}  smem {info['shared_bytes']}  HGMMA {info.get('hgmma')}"
        )
    reduces = {}
    block = triton_gemm.SPLITK_REDUCE_BLOCK
    for split in sorted({c.split_k for c in configs if c.split_k > 1}):
        info = run_compile(
            f"splitk_reduce_{split}",
            "splitk_reduce_kernel",
            f"{REDUCE_SIGNATURE}, {split}, {block}",
            f"(M * N + {block - 1}) / {block}, 1, 1",
            4,
            1,
            args,
        )
        info.update(split_k=split)
        reduces[split] = info
        print(f"splitk_reduce_{split:<10d} {info['entry']}")
    header = write_header(entries, reduces, args.out_dir)
    manifest = {
        "kernel_file": str(KERNEL_FILE.relative_to(ROOT)),
        "target": "current GPU",
        "triton": triton_gemm.triton.__version__,
        "gemm_signature": GEMM_SIGNATURE,
        "gemm_args": GEMM_ARGS,
        "header": header.name,
        "kernels": entries,
        "reduce": list(reduces.values()),
    }
    bad = [e["name"] for e in entries if e.get("hgmma") == 0 or (e.get("arch") and e["arch"] != "sm_90a")]
    if args.check:
        manifest["check"] = check_library(entries, reduces, args.out_dir)
    (args.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {len(entries)} GEMM + {len(reduces)} reduce launchers, {header.name}, manifest.json")
    if bad:
        raise SystemExit(f"not sm_90a / no HGMMA in: {bad}")


if __name__ == "__main__":
    main()
