"""The torch backend on a GPU: bf16 compute with the block-FP8 GEMM kernel inside the real (tiny) model.

Skipped without a CUDA GPU and the kernels' toolchain (trt_gemma4.kernels.unavailable_reason says why).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trt_gemma4 import kernels
from trt_gemma4.backends.torch_backend import CacheConfig, TorchBackend

pytestmark = pytest.mark.gpu

if kernels.unavailable_reason() is not None:
    pytest.skip(f"GPU kernels unavailable: {kernels.unavailable_reason()}", allow_module_level=True)


@pytest.fixture(scope="module")
def converted(tiny_converted: Path) -> Path:
    return tiny_converted


def _backend(path: Path, device: str, dtype: torch.dtype, use_kernels: bool = True) -> TorchBackend:
    return TorchBackend(
        path, dtype=dtype, device=device, use_kernels=use_kernels, cache=CacheConfig(dtype=dtype, max_seq_len=128)
    )


def test_linears_run_on_the_block_fp8_kernel(converted: Path) -> None:
    """Every linear of the model goes through kernels.block_fp8_gemm; its output is the fp32 dequantized product
    rounded to bf16 (relative error ≤ 1e-2; measured 3e-3 on an H200)."""
    gpu = _backend(converted, "cuda", torch.bfloat16)
    cpu = _backend(converted, "cpu", torch.float32)
    assert gpu.ops._gemm is not None
    width = max(gpu.weights.get(name + ".weight").shape[1] for name in gpu.ops._linears)
    x = torch.randn(45, width, generator=torch.Generator().manual_seed(0))
    for name in gpu.ops._linears:
        k = gpu.weights.get(name + ".weight").shape[1]
        y = gpu.ops._rank_linear(x[:, :k].to("cuda", torch.bfloat16), name, 0).float().cpu()
        ref = x[:, :k].to(torch.bfloat16).float() @ cpu.ops._dense_weight(name, 0).T
        assert (y - ref).abs().max().item() <= 1e-2 * ref.abs().max().item(), name


def test_fp32_on_gpu_matches_cpu_and_decodes(converted: Path) -> None:
    """The whole backend (paged cache on the GPU, batched prefill and decode) in fp32 on the GPU vs the CPU."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(16, 512, (n,), generator=g).tolist() for n in (40, 1, 19)]
    outs = []
    for device in ("cpu", "cuda"):
        be = _backend(converted, device, torch.float32)
        sids = [be.add_sequence() for _ in prompts]
        logits = be.forward(list(zip(sids, prompts)), all_logits=True).logits
        outs.append([lg.cpu() for lg in logits])
        assert be.cache.pools["global"].data.device.type == device
    for a, b in zip(*outs):
        assert (a - b).abs().max().item() <= 1e-3 * b.abs().max().item()
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16-cache", "fp8-cache"])
def test_global_layers_run_on_the_attention_kernel(converted: Path, kv_dtype: torch.dtype) -> None:
    """bf16 on the GPU: global layers go through kernels.attention.global_attention (one-shot prefill, a chunk
    after a cached prefix, decode of a batch). The first global layer's output equals the torch reference path
    given the same inputs (the GEMM kernel is off in both runs so everything before that layer is identical)."""
    outs: list[list[torch.Tensor]] = []
    g = torch.Generator().manual_seed(1)
    long = torch.randint(16, 512, (40,), generator=g).tolist()
    short = torch.randint(16, 512, (9,), generator=g).tolist()
    for kernel in (True, False):
        be = TorchBackend(
            converted, dtype=torch.bfloat16, device="cuda", cache=CacheConfig(dtype=kv_dtype, max_seq_len=128)
        )
        be.ops._gemm = None
        if not kernel:
            be.ops._global_attention = None
        assert (be.ops._global_attention is not None) == kernel
        seen: list[torch.Tensor] = []

        def record(layer, q, k, v, inner=be.ops.attention, seen=seen, first=be.spec.global_layers[0]):  # noqa: ANN001
            out = inner(layer, q, k, v)
            if layer.index == first:
                seen.append(out.float().cpu())
            return out

        be.ops.attention = record  # type: ignore[method-assign]
        a, b = be.add_sequence(), be.add_sequence()
        be.forward([(a, long[:33]), (b, short)])
        be.forward([(a, long[33:])])
        for t in (5, 6, 7):
            be.decode([a, b], [t, t + 1])
        outs.append(seen)
    assert len(outs[0]) == len(outs[1]) == 5
    # FP8: the kernel normalises k in fp32 and rounds once to E4M3, the torch path rounds to bf16 first; an E4M3
    # step apart on a few K elements moves this tiny model's near-one-hot attention by up to ~20% (the FP8 storage
    # error that test_kv_cache measures), so the FP8 bound is that of the storage itself.
    bound = 3e-2 if kv_dtype == torch.bfloat16 else 0.3
    errors = [((got - ref).abs().max() / ref.abs().max()).item() for got, ref in zip(*outs)]
    print(f"{kv_dtype}: kernel vs torch reference, relative error per call {[f'{e:.1e}' for e in errors]}")
    assert max(errors) <= bound
