"""Block-FP8 weight-only GEMM on Hopper tensor cores (wgmma), written in Triton, for large M.

Superseded in the dispatch by the CUDA sm_90a kernels (``plugins/kernels/block_fp8_gemm_sm90.cu``), which measured
faster on every shape; kept as a second, independently written implementation (its GPU tests cross-check the
numerics) and reachable with ``TRT_GEMMA4_TRITON_GEMM=1`` (see :func:`prefers_triton`).

Same problem and numerics as the CUDA kernels (``plugins/kernels/block_fp8_gemm.cuh``)::

    Y[M, N] (bf16) = X[M, K] (bf16) · dequant(W[N, K] fp8-e4m3, S[ceil(N/128), ceil(K/128)] fp32)ᵀ

* The K loop steps by exactly one 128-wide scale block, so every ``tl.dot`` covers a single k-block and its FP32
  result is multiplied by that block's scale before it is added to the FP32 accumulator (DeepGEMM-style
  promotion). The scale never touches BF16, so w·s is not rounded (folding it into BF16 weights fails the 2e-3
  accuracy bound).
* The weights travel as FP8 (half the bytes of BF16) and are widened to BF16 in registers, exactly: every E4M3
  value, subnormals included, is a BF16 value. ``BIT_CONVERT`` picks how: bit operations (the E4M3 bits moved into
  BF16 position, then one multiply by 2^120 to undo the exponent-bias difference), or Triton's own conversion
  (``cvt`` through FP16, which runs on Hopper's slow conversion pipe).
* ``SWAP_AB`` computes Yᵀ = W · Xᵀ so that the 64/128-row side of the wgmma is the weight tile; the converted
  weights can then feed the wgmma straight from registers and the token tile may be as small as 64.
* ``RESCALE`` keeps a single accumulator in units of the current k-block's scale instead (acc <- dot(w, x,
  acc · s_prev/s), times the last scale at the end): one FP32 multiply per accumulator per k-block as before, but
  half the accumulator registers, which allows a 256-token tile. Exact up to FP32 rounding while neighbouring block
  scales of a weight row are within ~1e30 of each other (s = amax/448 in any real checkpoint).
* ``SPLIT_K`` > 1 splits the k-blocks over a second grid dimension (FP32 partials in a workspace, then
  :func:`splitk_reduce_kernel`), for problems whose tile grid alone leaves most of the 132 SMs idle.

The kernels are plain ``triton.jit`` functions at module level, so ``scripts/aot_triton_gemm.py`` can compile the
same objects ahead of time (``triton.tools.compile``) into C launchers + cubins for the TensorRT plugin. This file
imports nothing from the package for the same reason (the AOT compiler executes it on its own).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch

try:  # Triton is optional: CPU-only installs and non-CUDA torch builds run without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

BLOCK_K = 128  # one scale block along K per loop step
SPLITK_REDUCE_BLOCK = 1024


class TritonGemmConfig(NamedTuple):
    """One compiled variant. ``block_m`` counts tokens (rows of X/Y), ``block_n`` weight rows (columns of Y).

    (A NamedTuple rather than a dataclass: ``triton.tools.compile`` executes this file outside ``sys.modules``,
    where dataclasses cannot resolve their annotations.)
    """

    block_m: int
    block_n: int
    swap_ab: bool
    num_warps: int
    num_stages: int
    split_k: int = 1
    bit_convert: bool = True
    group_m: int = 8
    rescale: bool = False  # one accumulator in units of the current block scale (see the kernel)
    maxnreg: int | None = None  # register cap (not supported by triton.tools.compile, so JIT only)

    @property
    def name(self) -> str:
        return (
            f"m{self.block_m}n{self.block_n}{'s' if self.swap_ab else 'n'}w{self.num_warps}st{self.num_stages}"
            f"k{self.split_k}{'b' if self.bit_convert else 'c'}{'r' if self.rescale else ''}"
            f"{f'R{self.maxnreg}' if self.maxnreg else ''}"
        )

    def grid(self, m: int, n: int) -> tuple[int, int]:
        return (-(-m // self.block_m)) * (-(-n // self.block_n)), self.split_k

    def workspace_bytes(self, m: int, n: int) -> int:
        return 4 * self.split_k * m * n if self.split_k > 1 else 0


def _cfg(
    bm: int,
    bn: int,
    swap: bool,
    warps: int,
    stages: int,
    split: int = 1,
    bit: bool = True,
    rescale: bool = False,
    maxnreg: int | None = None,
) -> TritonGemmConfig:
    return TritonGemmConfig(bm, bn, swap, warps, stages, split, bit, 8, rescale, maxnreg)


# The candidate set: swept by scripts/bench_gemm.py (--triton-sweep), every one checked by tests/test_gemm_gpu.py,
# and the set scripts/aot_triton_gemm.py compiles by default. Register budget: the promotion keeps two FP32 tiles
# live (accumulator + the k-block's partial), so tile elements / threads stays ≤ 64 per tile (128 registers).
CONFIGS: tuple[TritonGemmConfig, ...] = (
    _cfg(128, 128, False, 8, 3),
    _cfg(128, 128, False, 8, 4),
    _cfg(64, 256, False, 8, 3),
    _cfg(64, 128, False, 4, 4),
    _cfg(128, 128, True, 8, 3),
    _cfg(64, 128, True, 4, 4),
    _cfg(64, 256, True, 8, 3),
    # Two stages: ~half the shared memory, meant to let two 4-warp CTAs share an SM so that one's FP8 conversion
    # overlaps the other's wgmma (within one CTA the dot is waited on before the scale is applied). Measured
    # 5-20% slower than the four-stage versions; kept in the sweep, not in the dispatch.
    _cfg(64, 128, False, 4, 2),
    _cfg(64, 128, True, 4, 2),
    _cfg(128, 128, False, 8, 3, bit=False),
    _cfg(128, 128, True, 8, 3, bit=False),
    _cfg(64, 128, True, 4, 4, split=2),
    _cfg(64, 128, True, 4, 4, split=4),
    _cfg(128, 128, True, 8, 3, split=2),
    _cfg(128, 128, True, 8, 3, split=4),
    _cfg(64, 256, True, 8, 3, split=2),
    _cfg(64, 256, True, 8, 3, split=4),
    # Rescaled single accumulator: half the accumulator registers, so the token tile can grow to 256 (twice the
    # wgmma work per converted weight tile; measured the fastest from M = 512 on), or two 8-warp CTAs can share an
    # SM under a 128-register cap (measured 1.3-2x slower: the cap spills).
    _cfg(128, 128, True, 8, 3, rescale=True),
    _cfg(128, 128, True, 8, 3, split=2, rescale=True),
    _cfg(256, 128, True, 8, 3, rescale=True),
    _cfg(256, 128, True, 8, 2, rescale=True),
    _cfg(128, 128, True, 8, 2, rescale=True, maxnreg=128),
)


@functools.cache
def _device_reason(device: int) -> str | None:
    capability = torch.cuda.get_device_capability(device)
    if capability != (9, 0):
        # Tuned and measured on sm_90 only (wgmma); elsewhere the CUDA kernels stay in charge.
        return f"compute capability {capability} is not sm_90"
    return None


def unavailable_reason() -> str | None:
    """Why the Triton path cannot run here (on the current CUDA device), or ``None`` when it can."""
    if triton is None:
        return "triton is not installed"
    if torch.version.cuda is None or not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if os.environ.get("TRT_GEMMA4_NO_TRITON"):
        return "disabled by TRT_GEMMA4_NO_TRITON"
    return _device_reason(torch.cuda.current_device())


def available() -> bool:
    return unavailable_reason() is None


# Measured on an H200 (bench/results/gemm_triton_h200_2026-11-27.json, --triton-sweep): the fastest configuration
# per (N, K) of the 12B projections and M bucket; (m_max, config) rows, the first row with M <= m_max applies.
_A64 = _cfg(64, 128, True, 4, 4)
_S128 = _cfg(128, 128, True, 8, 3)
_R256 = _cfg(256, 128, True, 8, 3, rescale=True)
_BIG = 1 << 31
MEASURED: dict[tuple[int, int], tuple[tuple[int, TritonGemmConfig], ...]] = {
    (8192, 3840): ((64, _A64._replace(split_k=4)), (128, _S128._replace(split_k=2)), (256, _S128), (_BIG, _R256)),
    (8704, 3840): (
        (64, _A64._replace(split_k=4)),
        (128, _S128._replace(split_k=4)),
        (256, _R256),
        (512, _S128._replace(split_k=2)),
        (_BIG, _R256),
    ),
    (3840, 4096): (
        (64, _A64._replace(split_k=4)),
        (128, _S128._replace(split_k=4)),
        (256, _S128._replace(split_k=2)),
        (512, _S128),
        (_BIG, _R256),
    ),
    (3840, 8192): (
        (64, _A64._replace(split_k=4)),
        (128, _S128._replace(split_k=4)),
        (256, _S128._replace(split_k=2)),
        (512, _S128),
        (_BIG, _R256),
    ),
    (30720, 3840): ((64, _A64), (128, _S128), (_BIG, _R256)),
    (3840, 15360): (
        (64, _A64._replace(split_k=4)),
        (128, _S128._replace(split_k=4)),
        (256, _S128._replace(split_k=2)),
        (512, _S128),
        (_BIG, _R256),
    ),
}
# Shapes where the Triton path beat the CUDA kernels already at M = 64 (same run); elsewhere they keep M < 128.
TRITON_FROM_64 = {(8704, 3840), (30720, 3840)}


def default_config(m: int, n: int, k: int) -> TritonGemmConfig:
    """The configuration the dispatch runs for (M, N, K): the measured table, else a rule fitted to it.

    The rule: swap-AB with a 64-token tile up to M = 64, a 128-token tile up to M = 512, the rescaled 256-token tile
    above; below M = 512, split-K while the tile grid covers fewer than 132 SMs (to at most ~300 CTAs and at least
    4 k-blocks per split).
    """
    for m_max, cfg in MEASURED.get((n, k), ()):
        if m <= m_max:
            return cfg
    if m > 512:
        return _R256
    cfg = _A64 if m <= 64 else _S128
    tiles = cfg.grid(m, n)[0]
    k_blocks = -(-k // BLOCK_K)
    split = 1
    while tiles < 132 and split < 4 and tiles * split * 2 <= 300 and k_blocks // (split * 2) >= 4:
        split *= 2
    return cfg._replace(split_k=split)


def prefers_triton(m: int, n: int, k: int) -> bool:
    """True where the Triton path is the one to dispatch for (M, N, K); off unless ``TRT_GEMMA4_TRITON_GEMM=1``.

    The CUDA op's sm_90a TMA + wgmma kernels (plugins/kernels/block_fp8_gemm_sm90.cu) measured faster than this
    kernel on every 12B shape and M on the same H200 (bench/NOTES_gemm.md, v7-v10), and they are what the TensorRT
    plugin runs, so the dispatch keeps the CUDA op. With the variable set, the old rule applies: shapes of the
    measured table from M = 128 (M = 64 on the two widest).
    """
    if os.environ.get("TRT_GEMMA4_TRITON_GEMM") != "1" or (n, k) not in MEASURED:
        return False
    return m >= 128 or (m >= 64 and (n, k) in TRITON_FROM_64)


if triton is not None:

    @triton.jit
    def _fp8e4m3_to_bf16_bits(w):
        # w: raw E4M3 bytes (uint8). s.eeee.mmm -> BF16 s.0000eeee.mmm0000 is the value times 2^-120, for normal
        # and subnormal inputs alike (the BF16 exponent field covers E4M3's); one exact multiply by 2^120 restores
        # it. Bit operations avoid Triton's cvt chain (e4m3 -> f16 -> bf16) on Hopper's slow conversion pipe.
        b = w.to(tl.uint16)
        bits = (((b & 0x80) << 8) | ((b & 0x7F) << 4)).to(tl.uint16)
        return bits.to(tl.bfloat16, bitcast=True) * 1.329227995784916e36  # 2^120, exact in FP32 and BF16

    @triton.jit(do_not_specialize=["M", "SCALE_KB"])
    def block_fp8_gemm_kernel(
        x_ptr,
        w_ptr,
        s_ptr,
        y_ptr,
        ws_ptr,
        M,
        N,
        K,
        stride_xm,
        stride_wn,
        stride_ym,
        SCALE_KB,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        GROUP_M: tl.constexpr,
        SWAP_AB: tl.constexpr,
        BIT_CONVERT: tl.constexpr,
        SPLIT_K: tl.constexpr,
        RESCALE: tl.constexpr = False,
    ):
        """Y tile [BLOCK_M tokens, BLOCK_N weight rows] over one split of the k-blocks (grid: tiles x SPLIT_K).

        M is not specialized (any token count reuses one binary); N, K and the row strides are multiples of 16.
        """
        BK: tl.constexpr = 128
        pid = tl.program_id(0)
        pid_k = tl.program_id(1)
        # Grouped tile order: GROUP_M token tiles walk the weight tiles together, so each weight tile is read
        # from HBM about once per group and served from L2 to the rest.
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        in_group = GROUP_M * num_pid_n
        first_m = (pid // in_group) * GROUP_M
        group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % in_group) % group_rows
        pid_n = (pid % in_group) // group_rows

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BK)
        mask_m = offs_m < M
        mask_n = offs_n < N
        k_blocks = tl.cdiv(K, BK)
        per_split = tl.cdiv(k_blocks, SPLIT_K)
        kb_begin = pid_k * per_split
        kb_end = tl.minimum(kb_begin + per_split, k_blocks)

        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (kb_begin * BK + offs_k)[None, :]
        # The weights are read as raw bytes (masked lanes load 0x00 = +0.0) and widened below.
        w_bytes = w_ptr.to(tl.pointer_type(tl.uint8))
        w_ptrs = w_bytes + offs_n[:, None] * stride_wn + (kb_begin * BK + offs_k)[None, :]
        s_ptrs = s_ptr + (offs_n // BK) * SCALE_KB + kb_begin  # a BLOCK_N-wide tile may span two scale rows

        if SWAP_AB:
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # RESCALE: the accumulator is kept in units of the current k-block's scale, u (per weight row):
        # acc <- dot(w, x, acc * u_prev / u), and Y = acc * u at the end. The dot then chains through its own
        # accumulator, which lets the compiler keep the wgmma in flight while the next weight tile is converted.
        u = tl.full((BLOCK_N,), 1.0, dtype=tl.float32)
        for kb in range(kb_begin, kb_end):
            k_mask = offs_k < K - kb * BK  # only the last k-block can be partial (K is a multiple of 16)
            x = tl.load(x_ptrs, mask=mask_m[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=mask_n[:, None] & k_mask[None, :], other=0)
            s = tl.load(s_ptrs, mask=mask_n, other=0.0)
            if RESCALE:
                # A zero-scale block contributes nothing: zero its bytes and keep the row's unit.
                w = tl.where(s[:, None] == 0.0, 0, w)
            if BIT_CONVERT:
                wb = _fp8e4m3_to_bf16_bits(w)
            else:
                wb = w.to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
            if RESCALE:
                u_new = tl.where(s == 0.0, u, s)
                r = u / u_new
                u = u_new
                if SWAP_AB:
                    acc = tl.dot(wb, tl.trans(x), acc * r[:, None])
                else:
                    acc = tl.dot(x, tl.trans(wb), acc * r[None, :])
            else:
                # A fresh FP32 partial per k-block, scaled in FP32 and promoted into the accumulator.
                if SWAP_AB:
                    acc += tl.dot(wb, tl.trans(x)) * s[:, None]
                else:
                    acc += tl.dot(x, tl.trans(wb)) * s[None, :]
            x_ptrs += BK
            w_ptrs += BK
            s_ptrs += 1
        if RESCALE:
            if SWAP_AB:
                acc = acc * u[:, None]
            else:
                acc = acc * u[None, :]

        if SWAP_AB:
            out = tl.trans(acc)
        else:
            out = acc
        mask = mask_m[:, None] & mask_n[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], out.to(tl.bfloat16), mask=mask)
        else:
            ws = ws_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :]
            tl.store(ws, out, mask=mask)

    @triton.jit(do_not_specialize=["M"])
    def splitk_reduce_kernel(ws_ptr, y_ptr, M, N, stride_ym, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
        """Y = bf16(sum over splits of ws[split, M, N]), summed in FP32 in a fixed order (deterministic)."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        total = M * N
        mask = offs < total
        acc = tl.load(ws_ptr + offs, mask=mask, other=0.0)
        for i in tl.static_range(1, SPLIT_K):
            acc += tl.load(ws_ptr + i * total + offs, mask=mask, other=0.0)
        row = offs // N
        col = offs - row * N
        tl.store(y_ptr + row * stride_ym + col, acc.to(tl.bfloat16), mask=mask)


def block_fp8_gemm_triton(
    x: torch.Tensor,
    w: torch.Tensor,
    s: torch.Tensor,
    config: TritonGemmConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x [M, K] bf16 · dequant(w [N, K] fp8, s [ceil(N/128), ceil(K/128)] fp32)ᵀ`` -> bf16 ``[M, N]``.

    Inputs must already be validated and contiguous (``trt_gemma4.kernels.block_fp8_gemm`` does that and calls
    this where :func:`prefers_triton` says so). ``config`` defaults to :func:`default_config`; ``out`` may be
    given (``[M, N]`` bf16 with unit column stride).
    """
    if triton is None:
        raise RuntimeError("block_fp8_gemm_triton: triton is not installed")
    m, k = x.shape
    n = w.shape[0]
    if not (x.is_contiguous() and w.is_contiguous() and s.is_contiguous()):
        raise ValueError("block_fp8_gemm_triton: x, w and s must be contiguous")
    if max(m * k, n * k, m * n) >= 2**31:
        raise ValueError("block_fp8_gemm_triton: 32-bit offsets; split the problem along M")
    cfg = config if config is not None else default_config(m, n, k)
    y = out if out is not None else torch.empty((m, n), device=x.device, dtype=torch.bfloat16)
    if y.shape != (m, n) or y.dtype != torch.bfloat16 or y.stride(1) != 1:
        raise ValueError(f"block_fp8_gemm_triton: out must be bf16 [{m}, {n}] with unit column stride")
    if m == 0:
        return y
    ws = torch.empty((cfg.split_k, m, n), device=x.device, dtype=torch.float32) if cfg.split_k > 1 else s
    block_fp8_gemm_kernel[cfg.grid(m, n)](
        x,
        w,
        s,
        y,
        ws,
        m,
        n,
        k,
        x.stride(0),
        w.stride(0),
        y.stride(0),
        s.shape[1],
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        GROUP_M=cfg.group_m,
        SWAP_AB=cfg.swap_ab,
        BIT_CONVERT=cfg.bit_convert,
        SPLIT_K=cfg.split_k,
        RESCALE=cfg.rescale,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}),
    )
    if cfg.split_k > 1:
        grid = (-(-(m * n) // SPLITK_REDUCE_BLOCK),)
        splitk_reduce_kernel[grid](
            ws, y, m, n, y.stride(0), SPLIT_K=cfg.split_k, BLOCK=SPLITK_REDUCE_BLOCK, num_warps=4
        )
    return y
