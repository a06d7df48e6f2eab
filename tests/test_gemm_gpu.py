"""GPU tests of the block-FP8 weight-only GEMM against an fp64 reference.

Every case draws fresh random inputs, poisons the output with NaN before the call, and checks
‖ΔY‖/‖Y‖ ≤ 2e-3, every element within (0.5 ulp of itself + 2 ulp of the output RMS) in BF16, and no NaN left. For
outputs of a few dozen elements, where the exact result rounded once to BF16 can itself exceed 2e-3 (5% of random
48-element draws), the norm bound is 1.25x that best possible error instead.
Block scales vary by ~3000x between blocks so that the kernels' scale handling is exercised.
"""

from __future__ import annotations

import math

import pytest
import torch

from trt_gemma4 import kernels
from trt_gemma4.kernels import triton_gemm
from trt_gemma4.kernels.reference import dequantize_block_fp8

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not kernels.available(), reason=f"CUDA kernels unavailable: {kernels.unavailable_reason()}"),
]

# (N, K): Gemma-4-12B projections, the drafter's, and small shapes with partial 128-blocks.
SHAPES_12B = [(8192, 3840), (8704, 3840), (3840, 4096), (3840, 8192), (30720, 3840), (3840, 15360)]
SHAPES_DRAFTER = [(4096, 1024), (16384, 1024), (1024, 8192)]
SHAPES_ODD = [(320, 192), (192, 320), (48, 16), (144, 272)]
ODD_M = [1, 3, 7, 17, 33, 63, 129, 255, 513, 1025, 2047, 4097, 8191]

CASES = (
    [(n, k, m) for (n, k) in SHAPES_12B for m in (1, 7, 33, 129, 1025)]
    + [(8192, 3840, 2047), (3840, 4096, 8191), (3840, 15360, 513), (30720, 3840, 63), (8704, 3840, 255)]
    + [(8704, 3840, 16), (30720, 3840, 13), (16384, 1024, 16), (1024, 8192, 24), (8704, 3840, 513)]
    + [(4096, 1024, 63), (1024, 8192, 97), (1024, 8192, 13), (4096, 1024, 40), (1024, 8192, 48)]
    + [(3840, 4096, 100), (1024, 8192, 120), (3840, 4096, 20), (8192, 3840, 97)]
    + [(8704, 3840, 24), (8704, 3840, 64), (8704, 3840, 100), (8704, 3840, 384)]  # the token tiles' stream-K
    + [(n, k, m) for (n, k) in SHAPES_DRAFTER for m in (1, 17, 255, 4097)]
    + [(n, k, m) for (n, k) in SHAPES_ODD for m in ODD_M]
)


def random_problem(m: int, n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh x (bf16), w (fp8-e4m3, full range incl. subnormals) and per-block scales spanning ~e^8."""
    dev = "cuda"
    x = torch.randn(m, k, generator=gen, device=dev).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=gen, device=dev) * 120).clamp(-448, 448).to(torch.float8_e4m3fn)
    nb, kb = -(-n // 128), -(-k // 128)
    s = torch.exp(torch.rand(nb, kb, generator=gen, device=dev) * 8 - 12)
    return x, w, s


def check(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, what: str) -> None:
    ref = x.double() @ dequantize_block_fp8(w, s, torch.float64).t()
    assert not torch.isnan(y).any(), f"{what}: NaN in output (unwritten elements?)"
    yd = y.double()
    rel = ((yd - ref).norm() / ref.norm()).item()
    # The 2e-3 bound, unless the output is so small that even the exact product rounded once to BF16 misses it
    # (M x N = 48: in 5% of random draws): then within 25% of that best possible error.
    best = ((ref.to(torch.bfloat16).double() - ref).norm() / ref.norm()).item()
    bound = max(2e-3, 1.25 * best)
    assert rel <= bound, (
        f"{what}: relative error {rel:.3e} > {bound:.3e} (BF16 rounding of the exact result: {best:.3e})"
    )
    rms = ref.pow(2).mean().sqrt().item()
    ulp_rms = 2.0 ** (math.floor(math.log2(rms)) - 7)
    ulp_elem = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(1e-300))) - 7)
    bound = 0.5 * ulp_elem + 2 * ulp_rms
    excess = ((yd - ref).abs() - bound).max().item()
    assert excess <= 0, f"{what}: an element is off by {excess / ulp_rms:.2f} BF16 ulps of the RMS beyond the bound"


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    kernels.load()


@pytest.mark.parametrize(("n", "k", "m"), CASES, ids=lambda v: str(v))
def test_default_dispatch_matches_fp64(n: int, k: int, m: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(m, n, k, gen)
    y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    torch.ops.trt_gemma4.block_fp8_gemm_out(x, w, s, y)
    torch.cuda.synchronize()
    check(y, x, w, s, f"M={m} N={n} K={k}")


# Every kernel variant (kernel, tile, row_groups, warps, splits, depth), on shapes with partial blocks and tails.
STREAM_VARIANTS = [(1, 1, 2), (1, 1, 3), (1, 1, 4), (1, 2, 2), (1, 2, 3), (2, 1, 2), (2, 1, 3), (2, 2, 2), (4, 1, 2)]
# The streaming kernel with its weight ring in shared memory (kernel 5): every instantiation.
SMEM_VARIANTS = [(1, 1, 3), (1, 1, 4), (1, 1, 5), (1, 2, 2), (1, 2, 3), (2, 1, 3), (2, 1, 4), (2, 2, 2), (2, 2, 3)]
SMEM_VARIANTS += [(4, 1, 2), (4, 1, 3)]
CONFIGS = (
    [(1, nt, rg, wp, sp, d) for nt, rg, d in STREAM_VARIANTS for wp, sp in ((8, 1), (4, 3), (1, 1))]
    + [(5, nt, rg, wp, sp, d) for nt, rg, d in SMEM_VARIANTS for wp, sp in ((8, 1), (4, 3), (1, 1))]
    + [(2, tile, 1, 1, sp, 2) for tile in range(6) for sp in (1, 2, 5)]
)
# The Hopper wgmma kernel (sm_90a only): token tiles 16..128, split-K incl. splits with no k-blocks (zeros), with
# 128-row tiles (row groups 1) and 64-row tiles whose two warpgroups split the k-blocks (row groups 2: odd k-block
# counts, a warpgroup with none); the persistent kernel data-parallel (tile 256, splits 1) and stream-K (splits 0:
# the token tiles 32 / 64 / 128 and the persistent 256-token kernel).
WGMMA_STREAM_K = [(3, 32, 1, 1, 0, 2), (3, 64, 1, 1, 0, 2), (3, 128, 1, 1, 0, 2), (3, 256, 1, 1, 0, 2)]
WGMMA_CONFIGS = (
    [(3, tile, rg, 1, sp, 2) for tile in (16, 32, 64, 128) for rg in (1, 2) for sp in (1, 2, 5)]
    + [(3, 256, 1, 1, 1, 2)]
    + WGMMA_STREAM_K
)


# The sm_90+ bulk-copy streaming kernel: token tiles 1 and 2 (x 8), consumer warps, split-K (incl. splits with no
# k-blocks), ring stages.
BULK_CONFIGS = [(4, nt, 1, wp, sp, st) for nt in (1, 2) for wp, sp, st in ((4, 1, 3), (2, 3, 2), (8, 2, 4), (1, 5, 2))]


def _is_hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "k{}t{}r{}w{}s{}d{}".format(*c))
# (256, 2048, 19): whole k-blocks and row groups, the streaming kernel's bounds-check-free path (tokens past M read
# token M-1 there), with a partial token tile.
@pytest.mark.parametrize(
    ("n", "k", "m"), [(144, 272, 37), (320, 1040, 13), (1024, 2064, 200), (256, 2048, 19)], ids=str
)
def test_every_config_matches_fp64(config: tuple[int, ...], n: int, k: int, m: int) -> None:
    check_config(config, n, k, m, "config")


def check_config(config: tuple[int, ...], n: int, k: int, m: int, what: str) -> None:
    """One hand-set configuration on fresh inputs, NaN-poisoned output, against fp64."""
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(m, n, k, gen)
    y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    torch.ops.trt_gemma4.block_fp8_gemm_config(x, w, s, *config[:5], depth=config[5], out=y)
    torch.cuda.synchronize()
    check(y, x, w, s, f"{what} {config} M={m} N={n} K={k}")


@pytest.mark.parametrize("variant", SMEM_VARIANTS, ids=lambda v: "t{}r{}d{}".format(*v))
@pytest.mark.parametrize(("n", "k", "m"), [(144, 272, 37), (3840, 4096, 1), (8704, 3840, 16), (1040, 1168, 5)], ids=str)
def test_smem_ring_is_bit_identical_to_register_ring(variant: tuple[int, int, int], n: int, k: int, m: int) -> None:
    """Kernel 5 does kernel 1's arithmetic in kernel 1's order: same bits, for every instantiation."""
    nt, rg, d = variant
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(m, n, k, gen)
    run = torch.ops.trt_gemma4.block_fp8_gemm_config
    for wp, sp in ((8, 1), (4, 2)):
        ref = run(x, w, s, 1, nt, rg, wp, sp, depth=2)
        y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
        run(x, w, s, 5, nt, rg, wp, sp, depth=d, out=y)
        assert torch.equal(y, ref), f"kernel 5 {variant} warps={wp} splits={sp} M={m} N={n} K={k} differs from kernel 1"


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9, reason="the bulk kernel is sm_90+"
)
@pytest.mark.parametrize("config", BULK_CONFIGS, ids=lambda c: "k{}t{}r{}w{}s{}d{}".format(*c))
@pytest.mark.parametrize(
    ("n", "k", "m"),
    # M <= 8 with the activations staged in shared memory (M x K small) and without (M = 8, K = 15360).
    [(144, 272, 37), (320, 1040, 5), (1024, 2064, 200), (48, 4112, 1), (320, 15360, 8), (3840, 15360, 9)],
    ids=str,
)
def test_bulk_config_matches_fp64_and_repeats(config: tuple[int, ...], n: int, k: int, m: int) -> None:
    """Fresh inputs, NaN-poisoned output, against fp64; a second call gives the same bits (fixed summation order)."""
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(m, n, k, gen)
    y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    run = torch.ops.trt_gemma4.block_fp8_gemm_config
    run(x, w, s, *config[:5], depth=config[5], out=y)
    check(y, x, w, s, f"bulk {config} M={m} N={n} K={k}")
    assert torch.equal(run(x, w, s, *config[:5], depth=config[5]), y), f"bulk {config}: results differ between calls"


@pytest.mark.skipif(not _is_hopper(), reason="the wgmma kernel is sm_90a only")
@pytest.mark.parametrize("config", WGMMA_CONFIGS, ids=lambda c: "k{}t{}r{}w{}s{}d{}".format(*c))
@pytest.mark.parametrize(
    ("n", "k", "m"),
    [
        (144, 272, 37),
        (320, 1040, 13),
        (1024, 2064, 200),
        (384, 3840, 129),
        (8704, 3840, 1),
        (3840, 4096, 300),
        (8208, 528, 1100),  # more tiles than SMs (the persistent 256-token kernel loops), partial edges
    ],
    ids=str,
)
def test_wgmma_config_matches_fp64(config: tuple[int, ...], n: int, k: int, m: int) -> None:
    check_config(config, n, k, m, "wgmma config")


@pytest.mark.skipif(not _is_hopper(), reason="the wgmma kernel is sm_90a only")
@pytest.mark.parametrize(("tile", "splits"), [(16, 1), (128, 1), (256, 1), (32, 0), (64, 0), (128, 0), (256, 0)])
def test_wgmma_zero_scale_blocks(tile: int, splits: int) -> None:
    """All-zero weight blocks (s = 0) between live ones: the persistent kernel must leave them out of its rescaling
    (stream-K: also in pieces of a cut tile that hold only zero blocks)."""
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    m, n, k = 300, 384, 1040
    x, w, s = random_problem(m, n, k, gen)
    s[:, 0] = 0.0
    s[1, 3:6] = 0.0
    s[2, :] = 0.0
    y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    torch.ops.trt_gemma4.block_fp8_gemm_config(x, w, s, 3, tile, 1, 1, splits, depth=2, out=y)
    torch.cuda.synchronize()
    assert torch.all(y[:, 256:] == 0)
    check(y, x, w, s, f"wgmma tile {tile} splits {splits} zero-scale blocks")


@pytest.mark.skipif(not _is_hopper(), reason="the wgmma kernel is sm_90a only")
@pytest.mark.parametrize("config", WGMMA_STREAM_K, ids=lambda c: f"t{c[1]}")
@pytest.mark.parametrize(("n", "k", "m"), [(1024, 2064, 200), (8704, 3840, 33), (3840, 4096, 129)], ids=str)
def test_wgmma_semaphore_forms_agree(config: tuple[int, ...], n: int, k: int, m: int) -> None:
    """Stream-K with its flags in the op's semaphores and with them zeroed in the workspace by a memset: the same
    additions in the same order, so the same bits; repeated calls reuse the semaphores (left at zero), and so do
    the replays of a CUDA graph (whose captured call takes a slice of the op's capture pool)."""
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(m, n, k, gen)
    run = torch.ops.trt_gemma4.block_fp8_gemm_config
    with_sem = [run(x, w, s, *config[:5], depth=2) for _ in range(3)]
    without = run(x, w, s, *config[:5], depth=2, semaphores=False)
    torch.cuda.synchronize()
    check(with_sem[0], x, w, s, f"semaphores {config} M={m} N={n} K={k}")
    for y in with_sem[1:] + [without]:
        assert torch.equal(y, with_sem[0]), f"{config}: the semaphore and memset forms differ"
    graph, y_graph = torch.cuda.CUDAGraph(), torch.empty_like(without)
    with torch.cuda.graph(graph):
        run(x, w, s, *config[:5], depth=2, out=y_graph)
    for _ in range(3):
        y_graph.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y_graph, with_sem[0]), f"{config}: a graph replay differs"


@pytest.mark.skipif(not _is_hopper(), reason="the wgmma kernel is sm_90a only")
@pytest.mark.parametrize("config", WGMMA_STREAM_K, ids=lambda c: f"t{c[1]}")
@pytest.mark.parametrize(
    ("n", "k", "m"),
    # last two: 6 whole rounds first; one tile of 132 k-blocks, one per CTA on a 132-SM card: its owner adds 131
    # partners' partials (more than one poll per owner thread)
    [(8704, 3840, 128), (3840, 4096, 200), (256, 1152, 9), (3840, 1024, 8191), (128, 16896, 17)],
    ids=str,
)
def test_wgmma_stream_k_is_deterministic(config: tuple[int, ...], n: int, k: int, m: int) -> None:
    """Stream-K adds a cut tile's pieces in a fixed order: repeated calls give identical bits (and stale flags in a
    reused workspace do not leak into the next call)."""
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(m, n, k, gen)
    ys = [torch.ops.trt_gemma4.block_fp8_gemm_config(x, w, s, *config[:5], depth=2) for _ in range(5)]
    torch.cuda.synchronize()
    check(ys[0], x, w, s, f"stream-K {config} M={m} N={n} K={k}")
    for y in ys[1:]:
        assert torch.equal(y, ys[0]), f"stream-K {config}: results differ between calls"


# Split-K summed across a thread-block cluster (sm_90): the wgmma token tiles with 2..8 splits (8 on K = 1040: splits
# with no k-blocks; 3 and 5: shares of the tile that are not powers of two).
CLUSTER_CONFIGS = [(3, t, 1, 1, sp, 2) for t, sp in ((16, 2), (32, 8), (64, 5), (64, 3), (128, 2), (128, 4), (128, 8))]
CLUSTER_CONFIGS += [(3, t, 2, 1, sp, 2) for t, sp in ((16, 8), (64, 2), (64, 3), (128, 2), (128, 4))]  # 64-row tiles


@pytest.mark.skipif(not _is_hopper(), reason="the wgmma kernel (and its cluster split-K) is sm_90a only")
@pytest.mark.parametrize("config", CLUSTER_CONFIGS, ids=lambda c: "k{}t{}r{}w{}s{}d{}".format(*c))
@pytest.mark.parametrize(
    ("n", "k", "m"), [(144, 1040, 37), (320, 2064, 13), (1024, 8192, 16), (3840, 4096, 130)], ids=str
)
def test_cluster_split_k_is_bit_identical_to_reduce_pass(config: tuple[int, ...], n: int, k: int, m: int) -> None:
    """Fresh inputs, NaN-poisoned output, against fp64; the cluster sums the splits in the reduce pass's order, so the
    same bits as the workspace form, on every call."""
    y, ref, again = run_with_and_without(config, n, k, m, "cluster", cluster=True)
    assert torch.equal(y, ref), f"cluster {config} M={m} N={n} K={k}: differs from the reduce pass"
    assert torch.equal(again, y), f"cluster {config}: results differ between calls"


def run_with_and_without(
    config: tuple[int, ...], n: int, k: int, m: int, what: str, **option: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One configuration on fresh inputs with `option` set (NaN-poisoned output, checked against fp64), then the same
    inputs without it, then with it again: the three outputs."""
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(m, n, k, gen)
    run = torch.ops.trt_gemma4.block_fp8_gemm_config
    y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    run(x, w, s, *config[:5], depth=config[5], out=y, **option)
    check(y, x, w, s, f"{what} {config} M={m} N={n} K={k}")
    return y, run(x, w, s, *config[:5], depth=config[5]), run(x, w, s, *config[:5], depth=config[5], **option)


def _all_codes_problem(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every E4M3 byte but NaN (incl. subnormals and both zeros) tiled over an [n, k] weight, scale 1, and the
    identity as activations: y[i, j] = w[j, i], each output one weight value (FP32 accumulation adds no rounding)."""
    codes = torch.arange(256, dtype=torch.int32, device="cuda").to(torch.uint8)
    codes = codes[(codes != 0x7F) & (codes != 0xFF)]  # no NaN in checkpoints
    w = codes.repeat(n * k // codes.numel() + 1)[: n * k].view(n, k).view(torch.float8_e4m3fn)
    s = torch.ones((n + 127) // 128, (k + 127) // 128, device="cuda")
    return torch.eye(k, device="cuda", dtype=torch.bfloat16), w, s


# The wgmma kernels load only the tokens that exist for the last token tile (rows past M keep whatever shared memory
# held): token tiles, the persistent 256-token kernel and stream-K; (kernel, tile, row groups, warps, splits, depth,
# cluster).
TAIL_CONFIGS = [(3, 64, 1, 1, 1, 2, 0), (3, 128, 1, 1, 2, 2, 1), (3, 32, 2, 1, 1, 2, 0), (3, 128, 2, 1, 2, 2, 1)]
TAIL_CONFIGS += [(3, 64, 2, 1, 3, 2, 0), (3, 256, 1, 1, 1, 2, 0), (3, 256, 1, 1, 0, 2, 0), (3, 128, 1, 1, 0, 2, 0)]
TAIL_CONFIGS += [(3, 32, 1, 1, 0, 2, 0), (3, 64, 1, 1, 0, 2, 0)]


@pytest.mark.skipif(not _is_hopper(), reason="the wgmma kernel is sm_90a only")
@pytest.mark.parametrize("config", TAIL_CONFIGS, ids=lambda c: "k{}t{}r{}w{}s{}d{}c{}".format(*c))
def test_wgmma_rows_past_m_stay_out(config: tuple[int, ...]) -> None:
    """After calls on all-Inf activations (Inf left in shared memory), partial token tiles still match fp64, no NaN."""
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    n, k, tile = 1024, 1040, config[1]
    x, w, s = random_problem(2 * tile, n, k, gen)
    run = torch.ops.trt_gemma4.block_fp8_gemm_config
    ws = torch.full_like(x, float("inf"))
    for m in (1, tile // 2 + 1, tile + 1, 2 * tile - 1):  # tile + 1: a one-token last tile after a full one
        run(ws, w, s, *config[:5], depth=config[5], cluster=bool(config[6]))
        y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
        run(x[:m], w, s, *config[:5], depth=config[5], out=y, cluster=bool(config[6]))
        torch.cuda.synchronize()
        check(y, x[:m], w, s, f"tail {config} M={m} N={n} K={k}")


# The L2 prefetch of the register-streaming 16-token tiles (whole rows and k-blocks): the same arithmetic in the same
# order, so the same bits as without it, for every instantiation it has; split-K incl. splits with no k-blocks.
PREFETCH_CONFIGS = [
    (1, 2, rg, wp, sp, d) for rg, d in ((1, 2), (1, 3), (2, 2)) for wp, sp in ((1, 1), (4, 2), (8, 1), (3, 5))
]


@pytest.mark.parametrize("config", PREFETCH_CONFIGS, ids=lambda c: "k{}t{}r{}w{}s{}d{}".format(*c))
@pytest.mark.parametrize(("n", "k", "m"), [(256, 2048, 16), (1024, 8192, 13), (320, 1024, 9)], ids=str)
def test_prefetch_is_bit_identical(config: tuple[int, ...], n: int, k: int, m: int) -> None:
    y, ref, _ = run_with_and_without(config, n, k, m, "prefetch", prefetch=True)
    assert torch.equal(y, ref), f"prefetch {config}: differs from without"


# (kernel, tile, row groups, warps, splits, depth): the register and shared-memory streaming rings, the tiled
# mma.sync kernel; on sm_90 also the bulk-copy streaming kernel and every wgmma form.
EXACT_CONFIGS = [(1, 1, 1, 4, 1, 2), (1, 2, 2, 4, 2, 2), (1, 4, 1, 8, 1, 2), (5, 1, 1, 4, 1, 3), (5, 2, 2, 8, 1, 2)]
EXACT_CONFIGS += [(2, 1, 1, 1, 1, 2), (2, 5, 1, 1, 2, 2)]
EXACT_CONFIGS_SM90 = [(4, 1, 1, 4, 1, 3)]
EXACT_CONFIGS_SM90 += [(3, t, 1, 1, sp, 2) for t, sp in ((16, 1), (128, 1), (256, 1), (128, 0), (256, 0))]
EXACT_CONFIGS_SM90 += [(3, 16, 2, 1, 1, 2), (3, 128, 2, 1, 2, 2)]


@pytest.mark.parametrize("config", EXACT_CONFIGS + EXACT_CONFIGS_SM90, ids=lambda c: "k{}t{}r{}w{}s{}d{}".format(*c))
def test_fp8_conversion_is_exact(config: tuple[int, ...]) -> None:
    """Every kernel's FP8 -> BF16 conversion gives the FP8 values exactly."""
    if config in EXACT_CONFIGS_SM90 and not _is_hopper():
        pytest.skip("the bulk and wgmma kernels are sm_90 / sm_90a only")
    x, w, s = _all_codes_problem(256, 256)
    y = torch.full((256, 256), float("nan"), device="cuda", dtype=torch.bfloat16)
    torch.ops.trt_gemma4.block_fp8_gemm_config(x, w, s, *config[:5], depth=config[5], out=y)
    assert torch.equal(y.float(), w.float().t().contiguous()), f"config {config}: inexact FP8 -> BF16 conversion"


def test_zero_scale_blocks_and_single_block_scale() -> None:
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(300, 256, 512, gen)
    s[0, 1] = 0.0
    s[1, 3] = 0.0
    for m in (5, 300):
        y = kernels.block_fp8_gemm(x[:m], w, s)
        check(y, x[:m], w, s, f"zero-scale blocks M={m}")
    x1, w1, _ = random_problem(9, 112, 96, gen)
    s0 = torch.tensor(0.0123, device="cuda")
    check(kernels.block_fp8_gemm(x1, w1, s0), x1, w1, s0.reshape(1, 1), "0-D scale")


def test_dequantize_matches_reference() -> None:
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    _, w, s = random_problem(1, 400, 272, gen)
    wd = torch.ops.trt_gemma4.block_fp8_dequantize(w, s)
    torch.testing.assert_close(wd, dequantize_block_fp8(w, s, torch.float32).to(torch.bfloat16), rtol=0, atol=0)
    _, w, s = _all_codes_problem(128, 256)  # every code, scale 1: the BF16 result is the FP8 value itself
    assert torch.equal(torch.ops.trt_gemma4.block_fp8_dequantize(w, s).float(), w.float())


def test_wrapper_rejects_bad_inputs() -> None:
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.zeros(128, 256, device="cuda").to(torch.float8_e4m3fn)
    s = torch.ones(1, 2, device="cuda")
    with pytest.raises(TypeError, match="bfloat16"):
        kernels.block_fp8_gemm(x.float(), w, s)
    with pytest.raises(ValueError, match="ceil"):
        kernels.block_fp8_gemm(x, w, torch.ones(2, 2, device="cuda"))
    with pytest.raises(ValueError, match=r"\[\.\.\., 256\]"):
        kernels.block_fp8_gemm(x[:, :128], w, s)
    y = kernels.block_fp8_gemm(x.view(2, 2, 256), w, s)
    assert y.shape == (2, 2, 128)


def test_ops_raise_on_bad_calls() -> None:
    """The ops' own checks raise with the values in the message (they must not take the process down: see
    plugins/torch/check.h)."""
    ops = torch.ops.trt_gemma4
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.zeros(128, 256, device="cuda").to(torch.float8_e4m3fn)
    s = torch.ones(1, 2, device="cuda")
    with pytest.raises(RuntimeError, match=r"K=256\], got \[4, 128\]"):
        ops.block_fp8_gemm(x[:, :128].contiguous(), w, s)
    with pytest.raises(RuntimeError, match="must be float8_e4m3fn, got Float"):
        ops.block_fp8_gemm(x, w.float(), s)
    with pytest.raises(RuntimeError, match="512 elements"):
        ops.block_fp8_gemm_out(x, w, s, torch.empty(4, 128, device="cuda"))
    with pytest.raises(RuntimeError, match="kernel=1 tile=2 splits=1 cluster=0"):  # 9 warps: no such configuration
        ops.block_fp8_gemm_config(x, w, s, 1, 2, 2, 9, 1, depth=2)
    with pytest.raises(RuntimeError, match="kernel=1 tile=1 splits=2 cluster=1"):  # only the wgmma kernel has one
        ops.block_fp8_gemm_config(x, w, s, 1, 1, 1, 4, 2, depth=2, cluster=True)
    with pytest.raises(RuntimeError, match="splits=9 cluster=1"):  # over the portable cluster size
        ops.block_fp8_gemm_config(x, w, s, 3, 64, 1, 1, 9, depth=2, cluster=True)
    with pytest.raises(RuntimeError, match="kernel=1 tile=1 splits=1 cluster=0 prefetch=1"):  # 16-token tiles only
        ops.block_fp8_gemm_config(x, w, s, 1, 1, 1, 4, 1, depth=2, prefetch=True)
    with pytest.raises(RuntimeError, match="kernel=3 tile=16 splits=1 cluster=0 prefetch=1"):  # streaming only
        ops.block_fp8_gemm_config(x, w, s, 3, 16, 1, 1, 1, depth=2, prefetch=True)
    if _is_hopper():  # 64-row wgmma tiles: token tiles 16..128 only; no third row-group form
        with pytest.raises(RuntimeError, match="kernel=3 tile=256 splits=1 cluster=0 prefetch=0 row_groups=2"):
            ops.block_fp8_gemm_config(x, w, s, 3, 256, 2, 1, 1, depth=2)
        with pytest.raises(RuntimeError, match="kernel=3 tile=64 splits=1 cluster=0 prefetch=0 row_groups=3"):
            ops.block_fp8_gemm_config(x, w, s, 3, 64, 3, 1, 1, depth=2)
        # stream-K: 128-row tiles of 32..256 tokens only
        with pytest.raises(RuntimeError, match="kernel=3 tile=64 splits=0 cluster=0 prefetch=0 row_groups=2"):
            ops.block_fp8_gemm_config(x, w, s, 3, 64, 2, 1, 0, depth=2)
        with pytest.raises(RuntimeError, match="kernel=3 tile=16 splits=0 cluster=0 prefetch=0"):
            ops.block_fp8_gemm_config(x, w, s, 3, 16, 1, 1, 0, depth=2)
    x2, w2 = torch.randn(16, 272, device="cuda", dtype=torch.bfloat16), w[:, :16].repeat(1, 17).contiguous()
    with pytest.raises(RuntimeError, match="K=272 kernel=1 tile=2 splits=1 cluster=0 prefetch=1"):  # whole k-blocks
        ops.block_fp8_gemm_config(x2, w2, torch.ones(1, 3, device="cuda"), 1, 2, 1, 4, 1, depth=2, prefetch=True)


# ---- Triton wgmma path (trt_gemma4/kernels/triton_gemm.py) ----

triton_only = pytest.mark.skipif(
    not triton_gemm.available(), reason=f"Triton GEMM unavailable: {triton_gemm.unavailable_reason()}"
)


@triton_only
@pytest.mark.parametrize("config", triton_gemm.CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize(
    ("n", "k", "m"), [(144, 272, 37), (320, 1040, 13), (1024, 2064, 200), (384, 3840, 129)], ids=str
)
def test_triton_every_config_matches_fp64(config: triton_gemm.TritonGemmConfig, n: int, k: int, m: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(m, n, k, gen)
    y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    triton_gemm.block_fp8_gemm_triton(x, w, s, config=config, out=y)
    torch.cuda.synchronize()
    check(y, x, w, s, f"triton {config.name} M={m} N={n} K={k}")


@triton_only
@pytest.mark.parametrize(
    ("n", "k", "m"),
    [(n, k, m) for (n, k) in SHAPES_12B for m in (64, 129, 1025)]
    + [(8192, 3840, 4097), (30720, 3840, 2047), (3840, 15360, 255)]
    + [(n, k, m) for (n, k) in SHAPES_DRAFTER for m in (65, 511)]
    + [(n, k, m) for (n, k) in SHAPES_ODD for m in (64, 255, 2047)],
    ids=str,
)
def test_triton_dispatch_matches_fp64(n: int, k: int, m: int) -> None:
    """The configuration the dispatch picks, NaN-poisoned output; then the dispatch itself gives the same bits."""
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(m, n, k, gen)
    y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    triton_gemm.block_fp8_gemm_triton(x, w, s, out=y)
    torch.cuda.synchronize()
    check(y, x, w, s, f"triton default M={m} N={n} K={k}")
    if triton_gemm.prefers_triton(m, n, k):
        torch.testing.assert_close(kernels.block_fp8_gemm(x, w, s), y, rtol=0, atol=0)


@triton_only
@pytest.mark.parametrize("bit_convert", [True, False], ids=["bits", "cvt"])
def test_triton_fp8_conversion_is_exact(bit_convert: bool) -> None:
    """X = identity, S = 1: Y[m, n] = W[n, m] exactly, for every finite E4M3 code (subnormals and -0 included)."""
    codes = torch.arange(256, dtype=torch.int32, device="cuda")
    codes = codes[(codes & 0x7F) != 0x7F].to(torch.uint8)  # drop the two NaN codes
    n, k = 256, 128
    w = codes.repeat(-(-n * k // codes.numel()))[: n * k].view(n, k).view(torch.float8_e4m3fn)
    x = torch.eye(k, device="cuda", dtype=torch.bfloat16)
    s = torch.ones(2, 1, device="cuda")
    cfg = triton_gemm.TritonGemmConfig(128, 128, True, 8, 3, bit_convert=bit_convert)
    configs = [cfg, cfg._replace(swap_ab=False), cfg._replace(block_m=256, rescale=True)]
    for config in configs:
        y = triton_gemm.block_fp8_gemm_triton(x, w, s, config=config)
        expected = w.float().t().to(torch.bfloat16)
        # Compared as values: a -0 weight sums to +0 with the zero products, which is the same number.
        assert torch.equal(y.float(), expected.float()), f"{config.name}: inexact FP8 -> BF16 conversion"


@triton_only
def test_triton_zero_scale_blocks() -> None:
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % (2**31))
    x, w, s = random_problem(300, 256, 512, gen)
    s[0, 1] = 0.0
    s[1, 3] = 0.0
    for config in triton_gemm.CONFIGS:
        check(triton_gemm.block_fp8_gemm_triton(x, w, s, config=config), x, w, s, f"zero-scale {config.name}")
