"""GPU tests of the Gemma-4 attention kernels against the fp32 torch reference (same pools, same block offsets).

Every kernel output buffer is filled with NaN before the call, so an element the kernel fails to write fails the
test. Both the 12B shapes (16 q heads, 512-d head stored as two 256-d planes; drafter sliding pool 8 x 256 with a
1024-slot ring) and the tiny test model's (4 q heads, 128-d head as two 64-d planes) run, with FP8 and BF16 pools.
Tests that reach the one-query-tile 512-d path run under both decode kernels (``decode_impl``: v4, the default,
and v3, selected through TRT_GEMMA4_ATTN_DECODE, which the launcher reads at every call).
"""

from __future__ import annotations

import pytest
import torch
from test_attention_reference import make_pool, rel_err, shuffled_offsets

from trt_gemma4.kernels import attention as attn
from trt_gemma4.kv import FP8, KVPool

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# (q heads, head_dim, pool head_size, tokens per block)
GLOBAL_DIMS = {"12b": (16, 512, 256, 64), "tiny": (4, 128, 64, 16)}
# (q heads, KV heads, head_dim, tokens per block, ring length)
# "tiny16": the tiny model's 16-slot ring, below the kernel's 64-slot minimum: served by the reference on the GPU.
SLIDING_DIMS = {"12b": (16, 8, 256, 64, 1024), "tiny": (4, 2, 64, 16, 64), "tiny16": (4, 2, 64, 16, 16)}
POOL_DTYPES = {"fp8": FP8, "bf16": torch.bfloat16}
OUT_TOL = 1e-2  # f16/bf16 tensor-core operands and a bf16 output, against fp32


@pytest.fixture(scope="module", autouse=True)
def _extension() -> None:
    attn._cuda_ops()


@pytest.fixture(params=["v4", "v3"])
def decode_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The decode kernel for the test (plugins/kernels/gemma4_attention.cuh: AttentionProblem::decode_impl)."""
    monkeypatch.setenv("TRT_GEMMA4_ATTN_DECODE", request.param)
    return request.param


def twin_pools(make: callable, fill: bool, gen: torch.Generator) -> tuple[KVPool, KVPool]:
    """The same pool on CPU (reference) and GPU; with fill, random finite contents stand in for earlier tokens."""
    cpu = make("cpu")
    if fill:
        vals = torch.randn(cpu.data.shape, generator=gen) * 1.5
        cpu.data.copy_(vals.clamp(-448, 448).to(cpu.dtype))
    gpu = make("cuda")
    gpu.data.copy_(cpu.data)
    return cpu, gpu


def run_global(
    cpu: KVPool, gpu: KVPool, offsets: torch.Tensor, q_lens: list[int], kv_lens: list[int], hq: int, d: int,
    gen: torch.Generator, k_scale: float, v_scale: float,
) -> float:  # fmt: skip
    """One global_attention step on both paths; returns the relative error of the GPU output."""
    n = sum(q_lens)
    q = torch.randn(n, hq, d, generator=gen).to(torch.bfloat16)
    k_raw = (torch.randn(n, d, generator=gen) * 2).to(torch.bfloat16)
    w = 1.0 + 0.2 * torch.randn(d, generator=gen)
    inv = attn.proportional_inv_freq(d, 1e6, d // 8)
    kw = dict(k_scale=k_scale, v_scale=v_scale)
    ref = attn.global_attention(q, k_raw, w, cpu, 11, offsets, q_lens, kv_lens, inv, **kw)
    out = torch.full((n, hq, d), float("nan"), dtype=torch.bfloat16, device="cuda")
    res = attn.global_attention(
        q.cuda(), k_raw.cuda(), w.cuda(), gpu, 11, offsets.cuda(), q_lens, kv_lens, inv, out=out, **kw
    )
    torch.cuda.synchronize()
    assert res is out and not out.isnan().any(), "unwritten (NaN) output elements"
    return rel_err(out.cpu(), ref)


def assert_same_cache(cpu: KVPool, gpu: KVPool) -> None:
    """Written K/V agree; FP8 allows a rare one-step rounding flip (fp32 math in a different order)."""
    a, b = cpu.data.float(), gpu.data.cpu().float()
    diff = (a - b).abs()
    if cpu.dtype == FP8:
        assert float((diff > 0).float().mean()) < 1e-3
        assert bool((diff <= 0.13 * a.abs() + 2e-3).all())  # one e4m3 step is 1/8 of the binade
    else:
        assert bool((diff <= 2**-7 * a.abs() + 1e-6).all())


@pytest.mark.parametrize("dims", list(GLOBAL_DIMS))
@pytest.mark.parametrize("dtype", list(POOL_DTYPES))
def test_global_context_chunk_decode_and_verify(dims: str, dtype: str, decode_impl: str) -> None:
    """Prefill (lengths across block boundaries, not multiples of the block), a chunk after a cached prefix mixed
    with decodes, plain decode, then a 3-token verify step; outputs and written cache match the reference."""
    hq, d, hs, tpb = GLOBAL_DIMS[dims]
    gen = torch.Generator().manual_seed(10)
    prompts = [37, 100, 1, 300]
    extra = [50, 1, 1, 1]  # chunk for sequence 0, decodes for the others
    final = [p + e + 1 + 3 for p, e in zip(prompts, extra)]

    def make(dev: str) -> KVPool:
        return make_pool(d // hs, hs, tpb, sum(-(-f // tpb) for f in final) + 3, POOL_DTYPES[dtype], device=dev)

    cpu, gpu = twin_pools(make, False, gen)
    offsets = shuffled_offsets(cpu, final, gen)
    scales = (0.7, 1.3) if dtype == "fp8" else (1.0, 1.0)
    kv = list(prompts)
    for q_lens in (prompts, extra, [1] * 4, [3] * 4):
        kv = kv if q_lens is prompts else [k + n for k, n in zip(kv, q_lens)]
        err = run_global(cpu, gpu, offsets, q_lens, kv, hq, d, gen, *scales)
        assert err < OUT_TOL, f"q_lens {q_lens}: relative error {err:.2e}"
    assert_same_cache(cpu, gpu)


@pytest.mark.parametrize("dtype", list(POOL_DTYPES))
def test_global_long_decode_split_k(dtype: str, decode_impl: str) -> None:
    """Sequences of very different lengths (20K to 64 tokens) decoding together: exercises the KV split + combine."""
    hq, d, hs, tpb = GLOBAL_DIMS["12b"]
    gen = torch.Generator().manual_seed(11)
    kv = [20000, 700, 64, 4097]

    def make(dev: str) -> KVPool:
        return make_pool(d // hs, hs, tpb, sum(-(-(k + 3) // tpb) for k in kv) + 2, POOL_DTYPES[dtype], device=dev)

    cpu, gpu = twin_pools(make, True, gen)
    offsets = shuffled_offsets(cpu, [k + 3 for k in kv], gen)
    for q_lens in ([1] * 4, [2] * 4):
        kv = [k + n for k, n in zip(kv, q_lens)]
        err = run_global(cpu, gpu, offsets, q_lens, kv, hq, d, gen, 1.0, 1.0)
        assert err < OUT_TOL, f"q_lens {q_lens}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", list(POOL_DTYPES))
def test_global_decode_ring_that_never_wraps(dtype: str, decode_impl: str) -> None:
    """The TensorRT plugin passes a global layer's ring length (max_seq_len, longer than any sequence): such a ring
    never wraps and is read like the linear cache (v4 takes its linear loader for it)."""
    hq, d, hs, tpb = GLOBAL_DIMS["12b"]
    gen = torch.Generator().manual_seed(12)
    kv = [3000, 129, 64, 1100]
    ring = 4096  # >= every position, as max_seq_len is in an engine

    def make(dev: str) -> KVPool:
        blocks = sum(-(-(k + 3) // tpb) for k in kv) + 2
        return make_pool(d // hs, hs, tpb, blocks, POOL_DTYPES[dtype], cyclic_len=ring, device=dev)

    cpu, gpu = twin_pools(make, True, gen)
    offsets = shuffled_offsets(cpu, [k + 3 for k in kv], gen)
    for q_lens in ([1] * 4, [2, 1, 1, 1]):
        kv = [k + n for k, n in zip(kv, q_lens)]
        err = run_global(cpu, gpu, offsets, q_lens, kv, hq, d, gen, 1.0, 1.0)
        assert err < OUT_TOL, f"q_lens {q_lens}: relative error {err:.2e}"


@pytest.mark.parametrize("tpb", [16, 32, 128])
@pytest.mark.parametrize("hq", [16, 8])
@pytest.mark.parametrize("dtype", list(POOL_DTYPES))
def test_global_decode_block_sizes_and_groups(tpb: int, hq: int, dtype: str, decode_impl: str) -> None:
    """512-d decode, a 2-token verify step and a mixed 1/2-token step with 16 or 32 or 128 tokens per block (a
    64-token KV tile spans four blocks, two, or half of one) and 16 or 8 q heads per KV head (with 8, a 2-token step
    puts two tokens' rows in one 16-row query tile, each with its own causal limit, and a 1-token sequence leaves
    half the tile empty); long sequences take the KV split + combine."""
    d, hs = 512, 256
    gen = torch.Generator().manual_seed(14)
    kv = [1000, 64, 1, 2100, 130]

    def make(dev: str) -> KVPool:
        return make_pool(d // hs, hs, tpb, sum(-(-(k + 5) // tpb) for k in kv) + 2, POOL_DTYPES[dtype], device=dev)

    cpu, gpu = twin_pools(make, True, gen)
    offsets = shuffled_offsets(cpu, [k + 5 for k in kv], gen)
    scales = (0.7, 1.3) if dtype == "fp8" else (1.0, 1.0)
    for q_lens in ([1] * 5, [2] * 5, [2, 1, 2, 1, 1]):
        kv = [k + n for k, n in zip(kv, q_lens)]
        err = run_global(cpu, gpu, offsets, q_lens, kv, hq, d, gen, *scales)
        assert err < OUT_TOL, f"q_lens {q_lens}: relative error {err:.2e}"


def run_draft(
    cpu: KVPool, gpu: KVPool, layer: int, offsets: torch.Tensor, kv_lens: list[int], hq: int, d: int,
    inv: torch.Tensor, gen: torch.Generator, window: int | None,
) -> float:  # fmt: skip
    batch = len(kv_lens)
    q = torch.randn(batch, hq, d, generator=gen).to(torch.bfloat16)
    pos = [max(k - 1, 0) for k in kv_lens]
    kw = dict(inv_freq=inv, window=window, k_scale=0.8, v_scale=1.1)
    ref = attn.draft_attention(q, cpu, layer, offsets, kv_lens, pos, **kw)
    before = gpu.data.clone()
    out = torch.full((batch, hq, d), float("nan"), dtype=torch.bfloat16, device="cuda")
    attn.draft_attention(q.cuda(), gpu, layer, offsets.cuda(), kv_lens, pos, out=out, **kw)
    torch.cuda.synchronize()
    assert not out.isnan().any(), "unwritten (NaN) output elements"
    assert torch.equal(gpu.data.view(torch.uint8), before.view(torch.uint8)), "read-only attention wrote the cache"
    return rel_err(out.cpu(), ref)


@pytest.mark.parametrize("dims", list(SLIDING_DIMS))
@pytest.mark.parametrize("dtype", list(POOL_DTYPES))
def test_draft_attention_sliding_ring(dims: str, dtype: str) -> None:
    """Drafter over the cyclic sliding pool: wrapped rings, exactly full, barely filled; GQA group 2; RoPE inside."""
    hq, kvh, d, tpb, ring = SLIDING_DIMS[dims]
    gen = torch.Generator().manual_seed(12)
    kv_lens = [3 * ring + 17, ring // 2 + 3, ring, 1, ring + 1]

    def make(dev: str) -> KVPool:
        return make_pool(kvh, d, tpb, len(kv_lens) * -(-ring // tpb) + 1, POOL_DTYPES[dtype], (40, 46), ring, dev)

    cpu, gpu = twin_pools(make, True, gen)
    offsets = shuffled_offsets(cpu, kv_lens, gen)
    err = run_draft(cpu, gpu, 46, offsets, kv_lens, hq, d, attn.default_inv_freq(d, 1e4), gen, None)
    assert err < OUT_TOL, f"relative error {err:.2e}"


@pytest.mark.parametrize("dims", list(GLOBAL_DIMS))
@pytest.mark.parametrize("dtype", list(POOL_DTYPES))
def test_draft_attention_global_pool(dims: str, dtype: str, decode_impl: str) -> None:
    """Drafter over the global pool (one head as two planes), long and short sequences, proportional RoPE inside."""
    hq, d, hs, tpb = GLOBAL_DIMS[dims]
    gen = torch.Generator().manual_seed(13)
    kv_lens = [5000, 33, 1]

    def make(dev: str) -> KVPool:
        return make_pool(d // hs, hs, tpb, sum(-(-k // tpb) for k in kv_lens) + 1, POOL_DTYPES[dtype], (47,), None, dev)

    cpu, gpu = twin_pools(make, True, gen)
    offsets = shuffled_offsets(cpu, kv_lens, gen)
    inv = attn.proportional_inv_freq(d, 1e6, d // 8)
    err = run_draft(cpu, gpu, 47, offsets, kv_lens, hq, d, inv, gen, None)
    assert err < OUT_TOL, f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", list(POOL_DTYPES))
def test_draft_attention_global_window(dtype: str, decode_impl: str) -> None:
    """Drafter over the global pool with a 300-key window (not a multiple of the 64-token tile): the first KV tile
    is partly masked and its leading rows are zero-filled."""
    hq, d, hs, tpb = GLOBAL_DIMS["12b"]
    gen = torch.Generator().manual_seed(15)
    kv_lens = [3000, 200, 1, 700]

    def make(dev: str) -> KVPool:
        return make_pool(d // hs, hs, tpb, sum(-(-k // tpb) for k in kv_lens) + 1, POOL_DTYPES[dtype], (47,), None, dev)

    cpu, gpu = twin_pools(make, True, gen)
    offsets = shuffled_offsets(cpu, kv_lens, gen)
    inv = attn.proportional_inv_freq(d, 1e6, d // 8)
    err = run_draft(cpu, gpu, 47, offsets, kv_lens, hq, d, inv, gen, 300)
    assert err < OUT_TOL, f"relative error {err:.2e}"


def test_attention_op_raises_on_a_bad_pool() -> None:
    """The op's own checks raise with the shapes in the message (plugins/torch/check.h), not take the process down."""
    q = torch.zeros(1, 8, 256, device="cuda", dtype=torch.bfloat16)
    offsets = torch.zeros(1, 2, 1, device="cuda", dtype=torch.int32)
    cu_q_lens = torch.tensor([0, 1], device="cuda", dtype=torch.int32)
    kv_lens = torch.tensor([1], device="cuda", dtype=torch.int32)
    pool = torch.zeros(2, 1, 2, 1, 16, device="cuda", dtype=torch.bfloat16)  # 5-D: no head_size dimension
    with pytest.raises(RuntimeError, match=r"pool must be .* got \[2, 1, 2, 1, 16\]"):
        torch.ops.trt_gemma4.gemma4_paged_attention(
            torch.empty_like(q), q, pool, offsets, 0, 0, cu_q_lens, kv_lens, None, None, 1, 0, 1.0, 1.0, 1.0, 1, 1, 1
        )
